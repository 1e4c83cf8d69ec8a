"""Byte-level BPE bookkeeping: Qwen's BPE ranks, the merges they imply, and the fast encoder built back from them.

Qwen2.5's vocabulary is published as ranks (``qwen.tiktoken``: one ``<base64 token> <rank>`` per line), the
format tiktoken reads; Hugging Face tokenizers want a vocab plus merges over GPT-2's printable byte alphabet.
This module converts between the two, exactly, and uses the second direction to encode pretraining text with
tiktoken, about 6x faster than the Hugging Face tokenizer and checked against it before use.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import sys
import unicodedata
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

NUM_BPE_TOKENS = 151_643
# Qwen2's pre-tokenizer split: digits one by one (\p{N} without {1,3}), unlike cl100k.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Text that exercises every branch of the split pattern; the fast encoder must agree with the
# Hugging Face tokenizer on all of it before it is trusted.
PROBE_TEXTS = [
    "Hello world 12345, it's 3.14159!  Don't   stop.\n\n",
    "李白是唐代伟大的浪漫主义诗人，被后人誉为“诗仙”。床前明月光，疑是地上霜。",
    "def f(x):\n\treturn x ** 2  # square\r\n    print(f'{x:>10}')\n",
    "Emoji 🙂👍🏽 and mixed 中文English混排 ١٢٣ ½ café naïve Ｆｕｌｌ",
    "   leading spaces, trailing spaces   \n\n\n  \t tabs\u00a0nbsp\u3000ideographic",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, used by byte-level BPE vocab files."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


# Qwen's BPE ranks ship inside the PyPI package dashscope (dashscope/resources/qwen.tiktoken). Only that file is
# used: ``python -m tools.make_tokenizer --fetch_ranks`` (run by ``run.sh setup``) takes it out of the pinned wheel,
# checks it against this hash and keeps it in the environment, so dashscope itself is never installed.
QWEN_RANKS_SOURCE = "dashscope==2.0.2"
QWEN_RANKS_MEMBER = "dashscope/resources/qwen.tiktoken"
QWEN_RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"


def qwen_ranks_path() -> Path:
    """Where the fetched ranks live: inside the virtual environment, so they come and go with it."""
    return Path(sys.prefix) / "share" / "mini_qwen" / "qwen.tiktoken"


def find_qwen_tiktoken_file() -> Path:
    """The Qwen BPE ranks: the fetched copy, else an installed dashscope's (found without importing it)."""
    if qwen_ranks_path().is_file():
        return qwen_ranks_path()
    spec = importlib.util.find_spec("dashscope")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
        if path.is_file():
            return path
    raise FileNotFoundError(
        "Cannot build the Qwen2.5 tokenizer offline: no tokenizer files in the model folder and no Qwen BPE ranks "
        f"at {qwen_ranks_path()}. Run: bash run.sh setup   (or: python -m tools.make_tokenizer --fetch_ranks, "
        "or bash prepare.sh --stage model)"
    )


@lru_cache(maxsize=2)
def load_qwen_ranks(path: str | None = None) -> dict[bytes, int]:
    """Read a ``qwen.tiktoken`` file (default: ``find_qwen_tiktoken_file``)."""
    file = Path(path) if path else find_qwen_tiktoken_file()
    ranks: dict[bytes, int] = {}
    for line_no, line in enumerate(file.read_text().splitlines(), start=1):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{file}:{line_no}: expected '<base64> <rank>', got {line!r}")
        ranks[base64.b64decode(parts[0])] = int(parts[1])
    if len(ranks) != NUM_BPE_TOKENS:
        raise ValueError(f"{file}: expected {NUM_BPE_TOKENS} tokens, found {len(ranks)}")
    return ranks


def _merge_for(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair whose merge creates ``token``: run BPE on its bytes using only lower-ranked merges
    until two parts remain. This is exactly the merge tiktoken would apply last."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best_rank, best_i = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < limit and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_i is None:
            raise ValueError(f"token {token!r} cannot be built from lower-ranked merges")
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts[0], parts[1]


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Hugging Face's byte-level ``vocab`` and ``merges`` (in rank order) for tiktoken-style ranks."""
    byte_map = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_map[b] for b in token)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    multi_byte = sorted((rank, tok) for tok, rank in ranks.items() if len(tok) > 1)
    merges = [tuple(map(to_str, _merge_for(tok, ranks))) for _, tok in multi_byte]
    return vocab, merges


def ranks_from_vocab(vocab: dict[str, int], skip: set[str]) -> dict[bytes, int] | None:
    """The inverse: ranks of a byte-level vocab (tokens in ``skip``, the added ones, left out), or None when the
    vocab is not byte-level."""
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    ranks: dict[bytes, int] = {}
    for token, idx in vocab.items():
        if token in skip:
            continue
        if any(c not in char_to_byte for c in token):
            return None
        ranks[bytes(char_to_byte[c] for c in token)] = idx
    return ranks if len(ranks) >= 256 else None


def make_fast_encoder(tokenizer: PreTrainedTokenizerBase) -> tuple[str, Callable[[list[str]], list[list[int]]]]:
    """Return ``(engine_name, encode_batch)``: tiktoken built from the tokenizer's own vocabulary if it gives
    identical ids on the probe texts, else the Hugging Face tokenizer.

    Special-token strings inside documents are encoded as plain text by both engines (a web page mentioning
    ``<|im_end|>`` must not end a turn)."""

    def hf_encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    try:
        import tiktoken
    except ImportError:
        logger.info("tiktoken is not installed; tokenizing with the Hugging Face tokenizer (slower)")
        return "huggingface", hf_encode
    ranks = ranks_from_vocab(tokenizer.get_vocab(), skip=set(tokenizer.get_added_vocab()))
    if ranks is not None:
        encoding = tiktoken.Encoding(
            name=f"fast-{len(ranks)}", pat_str=QWEN_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={}
        )

        def tt_encode(texts: list[str]) -> list[list[int]]:
            return encoding.encode_ordinary_batch([unicodedata.normalize("NFC", t) for t in texts], num_threads=1)

        if tt_encode(PROBE_TEXTS) == hf_encode(PROBE_TEXTS):
            return "tiktoken", tt_encode
    logger.info("tiktoken disagrees with the tokenizer on probe texts; using the Hugging Face tokenizer")
    return "huggingface", hf_encode
