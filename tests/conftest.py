"""Shared fixtures: tokenizers built once per session (constants live in ``tests.helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import MINI_DATA


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(tmp_path_factory) -> Path:
    """The exact Qwen2.5 tokenizer, built offline once and saved like `python -m tools.make_tokenizer` does."""
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
    from tools.make_tokenizer import main as tokenizer_main

    out = tmp_path_factory.mktemp("small_tokenizer")
    texts = [str(MINI_DATA / part) for part in ("pt", "sft", "dpo")]
    tokenizer_main(["--train_from", *texts, "--vocab_size", "1000", "--output_dir", str(out), "--force"])
    return out
