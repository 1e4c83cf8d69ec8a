"""``run_info.json``: what a run was (stage, resolved arguments, versions, commit, data summary), so any result
can be reproduced and compared, and so a resume can tell whether it continues the same run.

Paths inside the repository are recorded relative to it, so a published folder names no user or host.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import fields, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from utils import REPO_ROOT

RUN_INFO_FILE = "run_info.json"
PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "tokenizers", "tiktoken")


def portable_path(value: str) -> str:
    """An absolute path inside the repository (or the home folder) without the machine-specific prefix."""
    path = Path(value)
    if not path.is_absolute():
        return value
    for root, label in ((REPO_ROOT, ""), (Path.home(), "~/")):
        if path.is_relative_to(root):
            relative = path.relative_to(root).as_posix()
            return label + relative if label else relative
    return value


def as_jsonable(value: Any) -> Any:
    """Dataclasses, dicts and lists as plain JSON values; paths made portable; anything else as its string."""
    if is_dataclass(value):
        return {f.name: as_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): as_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_jsonable(v) for v in value]
    if isinstance(value, str):
        return portable_path(value) if os.sep in value else value
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return str(value)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flat_arguments(*arg_objects: Any) -> dict[str, Any]:
    """Every argument of every dataclass in one mapping (names are unique across a stage's dataclasses)."""
    merged: dict[str, Any] = {}
    for obj in arg_objects:
        merged.update(as_jsonable(obj))
    return merged


def write_run_info(
    output_dir: str | Path,
    stage: str,
    *arg_objects: Any,
    data_summary: dict | None = None,
    carry_over: tuple[str, ...] = (),
    **facts: Any,
) -> Path:
    """Write the stage, resolved arguments, package versions, git commit, data summary and ``facts``
    (e.g. the global batch size) next to the run; ``carry_over`` keys of an existing record are kept (what
    training recorded before a resume)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = read_run_info(out) or {}
    info = {
        "stage": stage,
        "argv": [portable_path(a) for a in sys.argv],
        "arguments": {type(obj).__name__: as_jsonable(obj) for obj in arg_objects},
        "versions": package_versions(),
        "git_commit": git_commit(),
        "data": as_jsonable(data_summary or {}),
        **as_jsonable(facts),
        **{key: previous[key] for key in carry_over if key in previous},
    }
    return _write(out, info)


def record_in_run_info(folder: str | Path, key: str, subkey: str, value: Any) -> Path:
    """Set ``info[key][subkey] = value`` in the run info in ``folder`` (created if there is none)."""
    info = read_run_info(folder) or {}
    info.setdefault(key, {})[subkey] = value
    return _write(Path(folder), info)


def _write(folder: Path, info: dict) -> Path:
    """Replace the record in one step, so a kill mid-write leaves the old record, never half of one."""
    path = folder / RUN_INFO_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2, ensure_ascii=False))
    os.replace(tmp, path)
    return path


def read_run_info(folder: str | Path) -> dict | None:
    """The run info in ``folder``, or None if there is none or it is unreadable."""
    path = Path(folder) / RUN_INFO_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def recorded_arguments(info: dict) -> dict[str, Any]:
    return {k: v for group in info.get("arguments", {}).values() for k, v in group.items()}


# The arguments a stage records that bound the sequences it trained on (PT's block, SFT's and DPO's length).
TRAINED_LENGTH_KEYS = ("block_size", "max_length")


def trained_length(folder: str | Path) -> tuple[int | None, str]:
    """The longest sequence a checkpoint was trained on, and where that number comes from: its run record, else its
    config's RoPE table (``max_position_embeddings``); ``(None, "")`` when neither says."""
    recorded = recorded_arguments(read_run_info(folder) or {})
    lengths = {key: recorded[key] for key in TRAINED_LENGTH_KEYS if isinstance(recorded.get(key), int)}
    if lengths:
        key = max(lengths, key=lengths.get)
        return lengths[key], f"{RUN_INFO_FILE} {key}"
    try:
        positions = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get(
            "max_position_embeddings"
        )
    except (OSError, ValueError, AttributeError):
        positions = None
    return (positions, "config.json max_position_embeddings") if isinstance(positions, int) else (None, "")
