"""Argument parsing shared by every entry point: dataclasses from a YAML recipe and/or CLI flags.

``python mini_qwen_pt.py --config configs/pt_full.yaml --learning_rate 3e-4``: the YAML gives defaults,
flags given on the command line win. A YAML key that no dataclass knows is an error, not a silent no-op.

The values are parsed first and the dataclasses built second: in between, a stage's argument class may
*settle* them (``settle(namespace)``: decide every ``auto`` from the hardware, validate), so that what the
built ``TrainingArguments`` derive in ``__post_init__``, and hand to Accelerate, is the final choice.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser


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


def read_recipe(path: str) -> dict[str, Any]:
    """A YAML recipe as a mapping; a missing file or a syntax error names the file (and line)."""
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"Recipe not found: {path}")
    try:
        with file.open(encoding="utf-8") as stream:  # a stream, so YAML's errors name the file
            recipe = yaml.safe_load(stream) or {}
    except yaml.YAMLError as err:
        raise SystemExit(f"{path}: not valid YAML: {err}") from err
    if not isinstance(recipe, dict):
        raise SystemExit(f"{path}: a recipe must be a mapping of argument names to values")
    return recipe


def _choices(parser: HfArgumentParser) -> dict[str, list[str]]:
    # argparse has no public accessor for its actions; the parser is ours and only read here.
    return {action.dest: [str(c) for c in action.choices] for action in parser._actions if action.choices}


def _recipe_to_flags(recipe: dict[str, Any], choices: dict[str, list[str]]) -> list[str]:
    flags: list[str] = []
    for key, value in recipe.items():
        if value is None:
            continue
        if isinstance(value, bool):
            # YAML 1.1 reads an unquoted `no` as false: `save_strategy: no` means the choice "no".
            word = str(value).lower()
            if key in choices and word not in choices[key] and not value and "no" in choices[key]:
                word = "no"
            flags += [f"--{key}", word]
        elif isinstance(value, list):
            flags += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            flags += [f"--{key}", json.dumps(value)]
        else:
            flags += [f"--{key}", str(value)]
    return flags


def _renamed(dataclass_types: tuple[type, ...]) -> dict[str, tuple[str, dict]]:
    """Old argument names still accepted, from every dataclass's ``RENAMED``: ``{old: (new, {old value: new})}``."""
    renamed: dict[str, tuple[str, dict]] = {}
    for dtype in dataclass_types:
        renamed.update(getattr(dtype, "RENAMED", {}))
    return renamed


def _rename_flags(flags: list[str], renamed: dict[str, tuple[str, dict]]) -> tuple[list[str], list[str]]:
    """``--old value`` -> ``--new value`` (values mapped too), with one deprecation line per old name used."""
    out, warnings = [], []
    i = 0
    while i < len(flags):
        name, eq, inline = flags[i].partition("=")
        old = name.removeprefix("--")
        if name.startswith("--") and old in renamed:
            new, values = renamed[old]
            value = inline if eq else (flags[i + 1] if i + 1 < len(flags) else "")
            out += [f"--{new}", str(values.get(value, value))]
            warnings.append(f"--{old} is deprecated and will be removed: use --{new} {values.get(value, value)}")
            i += 1 if eq else 2
            continue
        out.append(flags[i])
        i += 1
    return out, warnings


def parse_args(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse ``dataclass_types`` from an optional YAML recipe plus CLI flags (CLI wins), settle, build."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    for dtype in dataclass_types:
        # A dataclass may replace a default of another one it is parsed with (see StageArguments.parser_defaults).
        if hasattr(dtype, "parser_defaults"):
            parser.set_defaults(**dtype.parser_defaults())
    config, rest = _split_config_flag(argv)
    known = {f.name for t in dataclass_types for f in fields(t) if f.init}
    renamed = _renamed(dataclass_types)
    if config:
        recipe = read_recipe(config)
        unknown = sorted(set(recipe) - known - set(renamed))
        if unknown:
            raise SystemExit(f"{config}: unknown argument(s) {', '.join(unknown)}")
        rest = _recipe_to_flags(recipe, _choices(parser)) + rest
    rest, deprecations = _rename_flags(rest, renamed)
    namespace, unknown_flags = parser.parse_known_args(rest)
    if unknown_flags:
        raise SystemExit(f"unknown argument(s): {' '.join(unknown_flags)}  (see --help)")
    settlers = [t for t in dataclass_types if hasattr(t, "settle")]
    try:
        notes = settlers[0].settle(namespace) if settlers else []
    except ValueError as err:
        raise SystemExit(f"{config + ': ' if config else ''}{err}") from err
    notes = [(logging.WARNING, line) for line in deprecations] + list(notes)
    built = []
    for dtype in dataclass_types:
        inputs = {f.name: getattr(namespace, f.name) for f in fields(dtype) if f.init}
        try:
            obj = dtype(**inputs)
        except ValueError as err:
            raise SystemExit(f"{config + ': ' if config else ''}{err}") from err
        if hasattr(obj, "settled_notes"):
            obj.settled_notes = notes
        built.append(obj)
    for line in deprecations if not settlers else []:
        logging.getLogger(__name__).warning(line)
    return tuple(built)
