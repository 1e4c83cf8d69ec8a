"""Fault tolerance: complete-or-ignored checkpoints, resume from the newest good one, time-based saves,
graceful SIGTERM/SIGINT, and start-up guard rails (disk space, someone else's output dir).

A checkpoint counts only once ``checkpoint_complete.json`` is in it, written (atomically, by rename)
after every file of the checkpoint. A crash, a SIGKILL or a full disk during a save leaves a folder
without the marker, which resume skips with a warning naming it, and the older complete checkpoints
are not rotated away until the new one is complete.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger("mini_qwen")

COMPLETE_MARKER = "checkpoint_complete.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
EXIT_SIGNALLED = 143  # 128 + SIGTERM: what schedulers expect from a job that stopped on request


def _step(path: Path) -> int:
    try:
        return int(path.name.rsplit("-", 1)[-1])
    except ValueError:
        return -1


def checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders, newest (highest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and _step(p) >= 0]
    return sorted(found, key=_step, reverse=True)


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` cannot be resumed from, or None if it is complete."""
    if not (path / COMPLETE_MARKER).is_file():
        return "incomplete (no completion marker: the save was interrupted)"
    state = path / "trainer_state.json"
    try:
        json.loads(state.read_text())
    except (OSError, ValueError) as err:
        return f"unreadable trainer_state.json ({err})"
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        return "no model weights"
    return None


def find_resume_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; every newer unusable one is skipped with a warning naming it."""
    for path in checkpoints(output_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping checkpoint %s: %s", path, problem)
    return None


def mark_complete(path: Path, step: int) -> None:
    tmp = path / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps({"step": step, "saved_at": time.strftime("%Y-%m-%d %H:%M:%S")}))
    os.replace(tmp, path / COMPLETE_MARKER)


def rotate(output_dir: str | Path, limit: int | None, keep: set[Path] = frozenset()) -> None:
    """Keep the ``limit`` newest complete checkpoints (the newest complete one always survives) and
    drop incomplete leftovers older than it."""
    if not limit or limit <= 0:
        return
    complete = [p for p in checkpoints(output_dir) if checkpoint_problem(p) is None]
    if not complete:
        return
    newest = _step(complete[0])
    doomed = [p for p in complete[limit:] if p not in keep]
    doomed += [p for p in checkpoints(output_dir) if checkpoint_problem(p) and _step(p) < newest]
    for path in doomed:
        logger.info("Deleting old checkpoint %s (save_total_limit=%d)", path, limit)
        shutil.rmtree(path, ignore_errors=True)


class FaultTolerantMixin:
    """Trainer mixin: marks checkpoints complete, rotates only complete ones, names a full disk."""

    def _save_checkpoint(self, model, trial):
        path = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotation waits for the marker
        try:
            super()._save_checkpoint(model, trial)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                previous = find_resume_checkpoint(path.parent)
                raise RuntimeError(
                    f"Disk full while saving {path}: {err}. The previous checkpoint "
                    f"{previous or '(none)'} is intact. Free space, then resume with --resume auto."
                ) from err
            raise
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_complete(path, self.state.global_step)
            best = {Path(self.state.best_model_checkpoint)} if self.state.best_model_checkpoint else set()
            rotate(path.parent, limit, keep=best)


def fault_tolerant(trainer_cls: type) -> type:
    """``fault_tolerant(SFTTrainer)`` -> the same trainer with the mixin above."""
    return type(f"FaultTolerant{trainer_cls.__name__}", (FaultTolerantMixin, trainer_cls), {})


class TimedCheckpointCallback(TrainerCallback):
    """Save every ``minutes`` of training as well as by steps, so a crash loses at most that much."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.last >= self.seconds:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()


class GracefulStopCallback(TrainerCallback):
    """First SIGTERM/SIGINT: finish the optimizer step, save a checkpoint, stop. Second: exit at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.stopped_at: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            os._exit(128 + signum)
        self.signal = signum
        logger.warning(
            "Received %s: finishing this step, saving a checkpoint, then exiting (again to exit now)",
            signal.Signals(signum).name,
        )

    def on_step_end(self, args, state, control, **kwargs):
        stop = torch.tensor([float(self.signal is not None)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process must stop at the same step, or the others wait forever in the next collective.
            stop = stop.to(args.device)
            torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
        if stop.item() > 0:
            self.signal = self.signal or signal.SIGTERM
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def restore(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)


def check_output_dir(output_dir: str | Path, stage: str, arguments: dict, resuming: bool, overwrite: bool) -> None:
    """Refuse to train into a folder that holds a different run, unless resuming or told to overwrite."""
    info_file = Path(output_dir) / "run_info.json"
    if resuming or overwrite or not info_file.is_file():
        return
    try:
        previous = json.loads(info_file.read_text())
    except (OSError, ValueError):
        return
    ignored = {"resume", "resume_from_checkpoint", "overwrite_output_dir", "logging_dir"}
    old = {k: v for group in previous.get("arguments", {}).values() for k, v in group.items() if k not in ignored}
    new = {k: v for k, v in arguments.items() if k not in ignored}
    changed = sorted(k for k in new if k in old and old[k] != new[k])
    if previous.get("stage") != stage or changed:
        what = f"a {previous.get('stage')} run" + (f" with other {', '.join(changed[:5])}" if changed else "")
        raise SystemExit(
            f"{output_dir} already holds {what}. Resume it with --resume auto, replace it with "
            f"--overwrite_output_dir true, or pick another --output_dir."
        )


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
