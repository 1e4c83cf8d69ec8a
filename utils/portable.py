"""Saved model folders that every tool reads the same way.

transformers 5 writes a checkpoint that transformers 5 reads exactly, but other readers (transformers 4.x,
which vLLM, TGI and llama.cpp's converter often pin, and slow-tokenizer tools) see something else:

* RoPE base: 5.x writes only ``rope_parameters: {rope_theta: ...}``; 4.x ignores it and silently uses
  ``rope_theta=10000``. A top-level ``rope_theta`` next to it makes both read the same base.
* ``use_cache: false`` is the Trainer's training setting; a published model caches (upstream Qwen: true).
* ``tokenizer_class: TokenizersBackend`` is 5.x's name; 4.x rejects it. ``PreTrainedTokenizerFast`` loads
  ``tokenizer.json`` in both. ``vocab.json`` and ``merges.txt`` are written for tools that need the slow files.
* ``max_new_tokens`` in ``generation_config.json`` overrides a caller's ``max_length``; length limits belong to
  the caller (mini_qwen_eval.py has its own), not to the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
CALLER_LIMITS = ("max_new_tokens", "max_length")


def _edit_json(path: Path, edit) -> None:
    if not path.is_file():
        return
    data = json.loads(path.read_text(encoding="utf-8"))
    if edit(data) is not False:
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _config(data: dict) -> None:
    rope = data.get("rope_parameters") or {}
    if "rope_theta" in rope:
        data["rope_theta"] = rope["rope_theta"]
    data["use_cache"] = True


def _generation(data: dict) -> None:
    for key in CALLER_LIMITS:
        data.pop(key, None)


def _tokenizer_config(data: dict) -> None:
    if data.get("tokenizer_class") == "TokenizersBackend":
        data["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS


def write_slow_tokenizer_files(folder: Path) -> None:
    """``vocab.json`` and ``merges.txt`` from a byte-level BPE ``tokenizer.json``."""
    source = folder / "tokenizer.json"
    if not source.is_file():
        return
    model = json.loads(source.read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE":
        return
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def make_portable(folder: str | Path) -> None:
    """Rewrite a saved model folder in place (see the module docstring); idempotent."""
    folder = Path(folder)
    _edit_json(folder / "config.json", _config)
    _edit_json(folder / "generation_config.json", _generation)
    _edit_json(folder / "tokenizer_config.json", _tokenizer_config)
    write_slow_tokenizer_files(folder)
