"""Saved model folders that every tool reads the same way.

transformers 5 writes a checkpoint that transformers 5 reads exactly, but other readers (transformers 4.x,
which vLLM, TGI and llama.cpp's converter often pin, and slow-tokenizer tools) see something else.
``make_portable`` rewrites the JSON and text files of a saved folder (never the weights), in place, idempotently;
``utils.train.stage.save_final`` and ``utils.train.callbacks.CheckpointCallback`` call it after every save, because
5.x drops a top-level ``rope_theta`` when it loads a folder, so every load -> save (PT -> SFT -> DPO, resume) loses it.

* RoPE base: 5.x writes only ``rope_parameters: {rope_theta: ...}``; 4.x ignores it and silently uses
  ``rope_theta=10000`` (max logit difference 2.6-7 on small trained models, greedy ids changed on long prompts).
  A top-level ``rope_theta`` next to it makes both read the same base; a non-default RoPE type also goes to
  ``rope_scaling``, 4.x's name for the same settings.
* ``use_cache: false`` is the Trainer's training setting; a published model caches (upstream Qwen: true).
* ``tokenizer_class: TokenizersBackend`` is 5.x's name; 4.x refuses to load it. We write ``Qwen2Tokenizer``, what
  the official Qwen2.5 files say and what 5.x itself loads our folders as (config.json says qwen2), when
  ``tokenizer.json`` has exactly Qwen2's pipeline (``qwen2_pipeline_problems``): 5.x's ``Qwen2Tokenizer`` rebuilds
  that pipeline from its own code, so it must be the same one. Both project tokenizers (Qwen2.5's, the small demo
  one) have it and give the same ids, chat text and decoded text in 4.57 and 5.24 (``tests/test_portable.py``;
  offsets and assistant masks were compared too when this was chosen). Any other tokenizer gets
  ``PreTrainedTokenizerFast``, which reads ``tokenizer.json`` as it is in both versions.
* ``added_tokens_decoder`` and ``additional_special_tokens``: 5.x leaves them out, but 4.x's slow (Python)
  tokenizer learns which added tokens are special only from them (else ``skip_special_tokens`` keeps
  ``<|im_start|>``). ``vocab.json`` and ``merges.txt``: what slow tokenizers and other tools read.
* ``max_new_tokens`` in ``generation_config.json`` overrides a caller's ``max_length``; length limits belong to
  the caller (mini_qwen_eval.py has its own), not to the checkpoint.

``tools/compat.py`` makes a folder portable by hand and installs the transformers 4.x side folder the tests read our
folders with.
"""

from __future__ import annotations

import json
from pathlib import Path

from utils.bpe import QWEN_SPLIT_PATTERN

QWEN2_TOKENIZER_CLASS, GENERIC_TOKENIZER_CLASS = "Qwen2Tokenizer", "PreTrainedTokenizerFast"
CALLER_LIMITS = ("max_new_tokens", "max_length")
BPE_VARIANTS = ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix")
# The two steps of Qwen2's pre-tokenizer, as tokenizer.json writes them (other keys do not change the ids).
QWEN2_SPLIT = {"type": "Split", "pattern": {"Regex": QWEN_SPLIT_PATTERN}, "behavior": "Isolated", "invert": False}
QWEN2_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
ADDED_TOKEN_FIELDS = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")


def qwen2_pipeline_problems(tokenizer_json: dict) -> list[str]:
    """Why a ``tokenizer.json`` is not Qwen2's byte-level BPE pipeline (empty when it is): plain BPE, NFC, the
    Qwen2 split regex (isolated), then byte-level without a prefix space or its own regex, byte-level decoding.
    The vocabulary and merges may be anything: the pipeline decides how text is cut before they apply."""
    problems = []
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or any(model.get(key) for key in BPE_VARIANTS):
        problems.append("the model is not a plain BPE")
    if (tokenizer_json.get("normalizer") or {}).get("type") != "NFC":
        problems.append(f"the normalizer is {tokenizer_json.get('normalizer')}, not NFC")
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    split, byte_level = steps if len(steps) == 2 else ({}, {})
    if any(split.get(key) != value for key, value in QWEN2_SPLIT.items()):
        problems.append("the pre-tokenizer does not start with Qwen2's split regex")
    if any(byte_level.get(key) != value for key, value in QWEN2_BYTE_LEVEL.items()):
        problems.append("the pre-tokenizer does not end with ByteLevel(add_prefix_space=False, use_regex=False)")
    if (tokenizer_json.get("decoder") or {}).get("type") != "ByteLevel":
        problems.append("the decoder is not ByteLevel")
    return problems


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _edit_json(path: Path, edit, *args) -> None:
    if path.is_file():
        data = _read(path)
        edit(data, *args)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _config(data: dict) -> None:
    rope = data.get("rope_parameters") or {}
    if "rope_theta" in rope:
        data["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        data["rope_scaling"] = {key: value for key, value in rope.items() if key != "rope_theta"}
    data["use_cache"] = True


def _generation(data: dict) -> None:
    for key in CALLER_LIMITS:
        data.pop(key, None)


def _tokenizer_config(data: dict, tokenizer_json: dict) -> None:
    if data.get("tokenizer_class") in (None, "TokenizersBackend"):
        qwen2 = not qwen2_pipeline_problems(tokenizer_json)
        data["tokenizer_class"] = QWEN2_TOKENIZER_CLASS if qwen2 else GENERIC_TOKENIZER_CLASS
    if isinstance(data.get("extra_special_tokens"), list):
        # 5.x's new name for additional_special_tokens (it reads both); 4.x reads extra_special_tokens as a dict of
        # named tokens and crashes on a list. A 5.x re-save of a portable folder (SFT from PT) writes it.
        data["additional_special_tokens"] = data.pop("extra_special_tokens")
    added = tokenizer_json.get("added_tokens", [])
    if added:
        decoder = {str(t["id"]): {key: t[key] for key in ADDED_TOKEN_FIELDS} for t in added}
        data.setdefault("added_tokens_decoder", decoder)
        named = {data.get(key) for key in ("bos_token", "eos_token", "pad_token", "unk_token")}
        data.setdefault(
            "additional_special_tokens", [t["content"] for t in added if t["special"] and t["content"] not in named]
        )
        data.setdefault("errors", "replace")  # what Qwen's slow tokenizer does with invalid UTF-8 when decoding


def _slow_tokenizer_files(folder: Path, tokenizer_json: dict) -> None:
    """``vocab.json`` and ``merges.txt`` from a byte-level BPE ``tokenizer.json``."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        return
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]  # 5.x stores [a, b] pairs
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def make_portable(folder: str | Path) -> None:
    """Rewrite a saved model folder in place (see the module docstring); idempotent. Files that are not there
    (a folder with only a tokenizer, or only a model) are left out."""
    folder = Path(folder)
    _edit_json(folder / "config.json", _config)
    _edit_json(folder / "generation_config.json", _generation)
    if (folder / "tokenizer.json").is_file():
        tokenizer_json = _read(folder / "tokenizer.json")
        _edit_json(folder / "tokenizer_config.json", _tokenizer_config, tokenizer_json)
        _slow_tokenizer_files(folder, tokenizer_json)
