"""Helpers for the demo entry points: the stage code is reused as is, only the recipe changes."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_TOKENIZER = "models/mini-tokenizer"
# Recipe sets: "cpu" is the tiny model with the small demo tokenizer (minutes on a laptop); "t4" is the full
# 1B shape with the Qwen tokenizer at seq 128, sized for a 16 GB GPU (python -m benchmarks.memory).
RECIPES = {"cpu": "{stage}_demo.yaml", "t4": "{stage}_t4_demo.yaml"}
# The training texts the demo tokenizer learns from (not the benchmark fixtures in mini_data/bench).
TOKENIZER_TEXTS = ["mini_data/pt", "mini_data/sft", "mini_data/dpo"]


def demo_argv(stage: str, extra: list[str] | None = None, recipes: str = "cpu") -> list[str]:
    """``--config configs/<stage recipe>`` followed by the user's own flags (which win). Demo outputs are
    disposable, so a re-run with other settings replaces the previous one instead of refusing."""
    if recipes not in RECIPES:
        raise ValueError(f"recipes must be one of {sorted(RECIPES)}, got {recipes!r}")
    user = sys.argv[1:] if extra is None else extra
    recipe = ROOT / "configs" / RECIPES[recipes].format(stage=stage)
    return ["--config", str(recipe), "--overwrite_output_dir", "true", *user]


def flag_value(argv: list[str], name: str, default: str) -> str:
    """The value of ``--name`` in argv (the last one wins, as in argparse), else ``default``."""
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == f"--{name}"]
    return values[-1] if values else default


def ensure_demo_tokenizer(output_dir: str = DEMO_TOKENIZER) -> None:
    """Train the small demo tokenizer on mini_data once into ``output_dir``; later runs reuse it."""
    from utils.tokenizer import main as tokenizer_main

    tokenizer_main(["--train_from", *TOKENIZER_TEXTS, "--vocab_size", "4000", "--output_dir", output_dir])
