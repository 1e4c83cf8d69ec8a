"""Checkpoints a run can trust: completion markers with file sizes, resume from the newest intact one,
pickles checked before anything unpickles them, and guards around the output folder.

A checkpoint counts only once ``checkpoint_complete.json`` is in it, written (atomically, by rename) after
every file of the checkpoint, and listing each file with its size. A crash, a SIGKILL or a full disk during
a save leaves a folder without the marker; a file truncated later no longer matches its recorded size.
Resume skips both with a warning naming the folder and file, and falls back to the previous checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import time
from pathlib import Path

import torch
from transformers.trainer_pt_utils import safe_globals as numpy_safe_globals
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from utils import WEIGHT_FILES
from utils.run_info import RUN_INFO_FILE, read_run_info, recorded_arguments

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
# Settings that may differ between a run and its resumption without changing what is trained.
RESUMABLE_CHANGES = {
    "resume",
    "resume_from_checkpoint",
    "resume_with_changes",
    "overwrite_output_dir",
    "logging_dir",
    "logging_steps",
    "save_every_minutes",
    "save_steps",
    "save_strategy",
    "keep_checkpoints",
    "save_total_limit",
    "report_to",
    "dataloader_num_workers",
    "num_proc",
    "dataset_num_proc",
    "disable_tqdm",
    "run_name",
    "output_dir",
    "cache_dir",
    "settled_notes",
    "reference_curve",
}


def step_of(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[-1])
    except ValueError:
        return -1


def checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders, newest (highest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and step_of(p) >= 0]
    return sorted(found, key=step_of, reverse=True)


def file_sizes(path: Path) -> dict[str, int]:
    return {f.relative_to(path).as_posix(): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}


def mark_complete(path: Path, step: int) -> None:
    """Write the marker last, listing every file of the checkpoint and its size."""
    files = {name: size for name, size in file_sizes(path).items() if name != COMPLETE_MARKER}
    tmp = path / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"), "files": files}))
    os.replace(tmp, path / COMPLETE_MARKER)


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None if it is complete and intact."""
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text())
    except FileNotFoundError:
        return "incomplete (no completion marker: the save was interrupted)"
    except (OSError, ValueError) as err:
        return f"unreadable completion marker ({err})"
    for name, size in (marker.get("files") or {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written (truncated or replaced)"
    try:
        json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        return f"unreadable trainer_state.json ({err})"
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        return "no model weights"
    return None


def find_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete, intact checkpoint; every newer unusable one is skipped with a warning naming it."""
    for path in checkpoints(output_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping checkpoint %s: %s", path, problem)
    return None


def safe_pickle_globals() -> list:
    """Non-tensor types that DeepSpeed's own checkpoint files legitimately hold."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def check_pickles(path: Path) -> None:
    """Refuse a checkpoint whose pickled files hold anything but tensors and known types.

    The Trainer loads its own files with ``weights_only=True``, but DeepSpeed's checkpoint engine unpickles
    with ``weights_only=False``, so an object placed in someone else's ZeRO checkpoint would run its code on
    every rank. Each file is opened here with ``weights_only=True`` first (memory-mapped: tensors are not read).
    """
    files = [f for f in sorted(path.rglob("*")) if f.suffix in PICKLE_SUFFIXES and f.name != "training_args.bin"]
    allowed = safe_pickle_globals() if any(f.parent != path for f in files) else []
    for file in files:
        try:
            # numpy's RNG state (the Trainer's rng_state.pth), as the Trainer itself allows when it loads it
            with numpy_safe_globals(), torch.serialization.safe_globals(allowed):
                torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
            why = f"{type(err).__name__}: {str(err)[:300]}"
            raise RuntimeError(
                f"Refusing to resume from {path}: {file} holds more than tensors and known types, "
                f"so loading it could run code ({why})"
            ) from err


def changed_settings(checkpoint: Path, output_dir: str | Path, arguments: dict) -> list[str]:
    """Settings of this run that differ from the run that wrote ``checkpoint`` (``name: old -> new``)."""
    info = read_run_info(checkpoint) or read_run_info(output_dir)
    if info is None:
        return []
    old = recorded_arguments(info)
    keys = sorted(k for k in arguments if k in old and k not in RESUMABLE_CHANGES and old[k] != arguments[k])
    return [f"{k}: {old[k]!r} -> {arguments[k]!r}" for k in keys]


def holds_a_run(output_dir: str | Path) -> bool:
    """A folder with a complete checkpoint or a final model holds work to protect; a bare run_info.json left by
    a run that failed before training does not."""
    folder = Path(output_dir)
    has_final = any((folder / name).is_file() for name in WEIGHT_FILES)
    return has_final or any(checkpoint_problem(p) is None for p in checkpoints(folder))


def check_output_dir(output_dir: str | Path, stage: str, arguments: dict, resuming: bool) -> None:
    """Refuse to train into a folder that holds a different run, unless resuming or told to overwrite."""
    if resuming or not holds_a_run(output_dir):
        return
    previous = read_run_info(output_dir) or {}
    old = recorded_arguments(previous)
    changed = sorted(k for k in arguments if k in old and k not in RESUMABLE_CHANGES and old[k] != arguments[k])
    if previous.get("stage") != stage or changed:
        what = f"a {previous.get('stage', 'different')} run" + (
            f" with other {', '.join(changed[:5])}" if changed else ""
        )
        raise SystemExit(
            f"{output_dir} already holds {what}. Resume it with --resume auto, replace it with "
            f"--overwrite_output_dir true, or pick another --output_dir."
        )


RUN_FILES = ("trainer_state.json", "training_args.bin", "training_curves.png", RUN_INFO_FILE, *WEIGHT_FILES)


def clear_previous_run(output_dir: str | Path) -> None:
    """--overwrite_output_dir: delete the previous run's checkpoints and final files (nothing else), so that
    rotation and --resume auto can never mistake them for this run's."""
    folder = Path(output_dir)
    doomed = checkpoints(folder) + [folder / name for name in RUN_FILES if (folder / name).exists()]
    for path in doomed:
        logger.warning("overwrite_output_dir: deleting %s of the previous run", path)
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def remove_incomplete(output_dir: str | Path) -> None:
    """Drop checkpoint folders without a completion marker before training: resume never uses them, and a new
    save into the same folder would otherwise keep their stray files."""
    for path in checkpoints(output_dir):
        if not (path / COMPLETE_MARKER).is_file():
            logger.warning("Deleting incomplete checkpoint %s (its save was interrupted)", path)
            shutil.rmtree(path, ignore_errors=True)


def rotate(output_dir: str | Path, limit: int | None, keep: set[Path] = frozenset()) -> None:
    """Keep the ``limit`` newest complete checkpoints (the newest complete one always survives) and
    drop incomplete leftovers older than it."""
    if not limit or limit <= 0:
        return
    complete = [p for p in checkpoints(output_dir) if checkpoint_problem(p) is None]
    if not complete:
        return
    newest = step_of(complete[0])
    doomed = [p for p in complete[limit:] if p not in keep]
    doomed += [p for p in checkpoints(output_dir) if checkpoint_problem(p) and step_of(p) < newest]
    for path in doomed:
        logger.info("Deleting old checkpoint %s (keep_checkpoints=%d)", path, limit)
        shutil.rmtree(path, ignore_errors=True)


def check_disk_space(output_dir: str | Path, n_params: int, save_only_model: bool) -> None:
    """Warn when the disk cannot hold two checkpoints (the new one is written before the old goes)."""
    per_checkpoint = n_params * (4 if save_only_model else 12)  # fp32 weights (+ two fp32 Adam moments)
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < 2 * per_checkpoint:
        logger.warning(
            "Only %.1f GB free in %s; a checkpoint needs about %.1f GB and two must fit during a save",
            free / 1e9,
            folder,
            per_checkpoint / 1e9,
        )
