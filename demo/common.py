"""Helpers for the demo entry points: the stage code is reused as is, only the recipe changes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from utils.data.parquet import iter_strings
from utils.tokenizer import has_tokenizer_files, train_small_tokenizer

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
DEMO_TOKENIZER = "models/mini-tokenizer"
# Recipe sets: "cpu" is the tiny model with the small demo tokenizer (minutes on a laptop); "t4" is the full
# 1B shape with the Qwen tokenizer at seq 128, sized for a 16 GB GPU (python -m benchmarks.memory).
RECIPES = {"cpu": "{stage}_demo.yaml", "t4": "{stage}_t4_demo.yaml"}
# The training texts the demo tokenizer learns from (not the benchmark fixtures in mini_data/bench).
TOKENIZER_TEXTS = ["mini_data/pt", "mini_data/sft", "mini_data/dpo"]
# Learned tokens of the demo tokenizer; the demo recipes round its embedding up to 4096 rows (vocab_size).
DEMO_VOCAB_SIZE = 4000


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
    if has_tokenizer_files(output_dir):
        return
    texts = (text for folder in TOKENIZER_TEXTS for text in iter_strings(ROOT / folder))
    tokenizer = train_small_tokenizer(texts, DEMO_VOCAB_SIZE)
    tokenizer.save_pretrained(output_dir)
    logger.info(
        "Trained the demo tokenizer (%d tokens) on %s into %s", len(tokenizer), ", ".join(TOKENIZER_TEXTS), output_dir
    )
