"""Argument parsing shared by every stage: dataclasses from a YAML recipe and/or CLI flags.

``python mini_qwen_pt.py --config configs/pt_full.yaml --learning_rate 3e-4``: the YAML gives defaults,
flags given on the command line win. A YAML key that no dataclass knows is an error, not a silent no-op.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
from dataclasses import fields, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser

logger = logging.getLogger(__name__)

RUN_INFO_FILE = "run_info.json"


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Pull ``--config PATH`` (or ``--config=PATH``, or a leading ``*.yaml``) out of argv."""
    config, rest = None, []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise SystemExit("--config needs a YAML path")
            config = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif i == 0 and arg.endswith((".yaml", ".yml")):
            config = arg
        else:
            rest.append(arg)
        i += 1
    return config, rest


def parse_args(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse ``dataclass_types`` from an optional YAML recipe plus CLI flags (CLI wins)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    config, rest = _split_config_flag(argv)
    if config:
        path = Path(config)
        if not path.is_file():
            raise SystemExit(f"Recipe not found: {config}")
        recipe = yaml.safe_load(path.read_text()) or {}
        if not isinstance(recipe, dict):
            raise SystemExit(f"{config}: a recipe must be a mapping of argument names to values")
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(recipe) - known)
        if unknown:
            raise SystemExit(f"{config}: unknown argument(s) {', '.join(unknown)}")
        # Feeding the recipe through the same parser as flags keeps type conversion and choices checks.
        rest = _recipe_to_flags(recipe) + rest
    if any("bf16" in {f.name for f in fields(t)} for t in dataclass_types):
        # TRL's configs default to bf16=True, which fails on a CPU before any of our code runs.
        # Precision is chosen from the hardware by the stages' ``precision`` argument instead;
        # a recipe or flag that sets bf16/fp16 explicitly still wins (argparse keeps the last value).
        rest = ["--bf16", "False"] + rest
    if _cpu_multiprocess() and any("ddp_backend" in {f.name for f in fields(t)} for t in dataclass_types):
        # A CPU-only multi-process launch (DeepSpeed on CPU, as CI runs it) needs gloo named before the
        # training arguments are built: otherwise accelerate finds no backend, every process believes
        # it is alone, and DeepSpeed's batch-size check fails.
        rest = ["--ddp_backend", "gloo"] + rest
    *parsed, unknown = parser.parse_args_into_dataclasses(args=rest, return_remaining_strings=True)
    if unknown:
        raise SystemExit(f"unknown argument(s): {' '.join(unknown)}  (see --help)")
    return tuple(parsed)


def _cpu_multiprocess() -> bool:
    return int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.cuda.is_available()


def _recipe_to_flags(recipe: dict[str, Any]) -> list[str]:
    flags: list[str] = []
    for key, value in recipe.items():
        if value is None:
            continue
        if isinstance(value, list):
            flags += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            flags += [f"--{key}", json.dumps(value)]
        elif isinstance(value, bool):  # YAML true/false, as a flag would spell them (also for str choices)
            flags += [f"--{key}", str(value).lower()]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "tokenizers", "tiktoken"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def as_jsonable(value: Any) -> Any:
    """Dataclasses, dicts and lists as plain JSON values (anything else as its string)."""
    if is_dataclass(value):
        return {f.name: as_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): as_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_run_info(
    output_dir: str | Path, stage: str, *arg_objects: Any, data_summary: dict | None = None, **facts: Any
) -> Path:
    """Write the stage, resolved arguments, package versions, git commit, data summary and ``facts``
    (e.g. the global batch size) next to the run."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "stage": stage,
        "argv": sys.argv,
        "arguments": {type(obj).__name__: as_jsonable(obj) for obj in arg_objects},
        "versions": _package_versions(),
        "git_commit": _git_commit(),
        "data": data_summary or {},
        **facts,
    }
    path = out / RUN_INFO_FILE
    path.write_text(json.dumps(info, indent=2, ensure_ascii=False))
    return path
