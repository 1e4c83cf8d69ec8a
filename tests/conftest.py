"""Shared fixtures: tokenizers built once per session, tiny model shapes, the real-sample folder."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REAL_SAMPLES = ROOT.parent / "shared" / "real_samples"
MINI_DATA = ROOT / "mini_data"

needs_real_samples = pytest.mark.skipif(
    not REAL_SAMPLES.is_dir(), reason=f"real dataset samples not found at {REAL_SAMPLES}"
)

# Tiny Qwen2 shape for end-to-end runs on CPU: seconds per stage.
TINY_SHAPE = [
    "--hidden_size", "32",
    "--num_hidden_layers", "2",
    "--num_attention_heads", "4",
    "--num_key_value_heads", "2",
    "--intermediate_size", "64",
]  # fmt: skip


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory) -> Path:
    """The exact Qwen2.5 tokenizer, built offline once and saved like `python -m utils.tokenizer` does."""
    from utils.tokenizer import build_qwen_tokenizer

    out = tmp_path_factory.mktemp("qwen_tokenizer")
    build_qwen_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def qwen_tokenizer(qwen_tokenizer_dir):
    from utils.tokenizer import load_tokenizer

    return load_tokenizer(qwen_tokenizer_dir)


@pytest.fixture(scope="session")
def small_tokenizer_dir(tmp_path_factory) -> Path:
    """A 1,000-token tokenizer with Qwen's pipeline and chat template, trained on mini_data (fast models)."""
    from utils.tokenizer import main as tokenizer_main

    out = tmp_path_factory.mktemp("small_tokenizer")
    texts = [str(MINI_DATA / part) for part in ("pt", "sft", "dpo")]
    tokenizer_main(["--train_from", *texts, "--vocab_size", "1000", "--output_dir", str(out), "--force"])
    return out
