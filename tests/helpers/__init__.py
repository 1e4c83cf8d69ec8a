"""What the tests share: where things are, the tiny model shape, and the real-sample folder."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REAL_SAMPLES = ROOT.parent / "shared" / "real_samples"
MINI_DATA = ROOT / "mini_data"

needs_real_samples = pytest.mark.skipif(
    not REAL_SAMPLES.is_dir(), reason=f"real dataset samples not found at {REAL_SAMPLES}"
)

# Tiny Qwen2 shape for end-to-end runs on CPU: seconds per stage.
TINY_SHAPE = [
    "--hidden_size",
    "32",
    "--num_hidden_layers",
    "2",
    "--num_attention_heads",
    "4",
    "--num_key_value_heads",
    "2",
    "--intermediate_size",
    "64",
]
