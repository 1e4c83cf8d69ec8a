"""Helpers for the demo entry points: the stage code is reused as is, only the recipe changes."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_TOKENIZER = "models/mini-tokenizer"


def demo_argv(recipe: str, extra: list[str] | None = None) -> list[str]:
    """``--config configs/<recipe>`` followed by the user's own flags (which win). Demo outputs are
    disposable, so a re-run with other settings replaces the previous one instead of refusing."""
    user = sys.argv[1:] if extra is None else extra
    return ["--config", str(ROOT / "configs" / recipe), "--overwrite_output_dir", "true", *user]


def ensure_demo_tokenizer() -> None:
    """Train the small demo tokenizer on mini_data once; later runs reuse it."""
    from utils.tokenizer import main as tokenizer_main

    tokenizer_main(["--train_from", "mini_data", "--vocab_size", "4000", "--output_dir", DEMO_TOKENIZER])
