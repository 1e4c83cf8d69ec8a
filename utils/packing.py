"""Tokenize once, pack documents into fixed blocks, and keep documents from attending to each other.

Pipeline (``build_token_cache``):
  parquet ``text`` -> NFC -> token ids + EOS per document -> one flat uint32 token file and the start
  offset of every document, cached on disk under a key of the input files and the tokenizer.
  Files are tokenized in parallel, each streamed batch by batch, so memory does not grow with the corpus.

Training view (``PackedDataset``): block ``i`` is tokens ``[i*B, (i+1)*B)`` of the stream, so no token is
dropped except the final partial block. Inside a block, every document (or document piece) is a
*segment*: position ids restart at 0 and the segment's first token is not a training target, because
predicting it would need the previous document. ``PackedCollator`` then isolates segments: one flattened
row with restarting position ids for flash-attention-2 (its varlen kernel splits there), or a
block-diagonal causal 4D mask for sdpa/eager, where position ids alone would not isolate anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from utils.data import check_files, iter_column_batches
from utils.tokenizer import QWEN_SPLIT_PATTERN, load_tokenizer, nfc

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
CACHE_VERSION = 1
TOKEN_DTYPE = np.uint32

# Text that exercises every branch of the split pattern; the fast encoder must agree with the
# Hugging Face tokenizer on all of it before it is trusted.
PROBE_TEXTS = [
    "Hello world 12345, it's 3.14159!  Don't   stop.\n\n",
    "李白是唐代伟大的浪漫主义诗人，被后人誉为“诗仙”。床前明月光，疑是地上霜。",
    "def f(x):\n\treturn x ** 2  # square\r\n    print(f'{x:>10}')\n",
    "Emoji 🙂👍🏽 and mixed 中文English混排 ١٢٣ ½ café naïve Ｆｕｌｌ",
    "   leading spaces, trailing spaces   \n\n\n  \t tabs\u00a0nbsp\u3000ideographic",
]


def make_fast_encoder(tokenizer: PreTrainedTokenizerBase) -> tuple[str, Callable[[list[str]], list[list[int]]]]:
    """Return ``(engine_name, encode_batch)``.

    tiktoken encodes the same byte-level BPE about 6x faster than the Hugging Face tokenizer. It is
    built from the tokenizer's own vocabulary and used only if it gives identical ids on the probe
    texts; otherwise the Hugging Face tokenizer is used. Special-token strings inside documents are
    encoded as plain text by both engines (a web page mentioning ``<|im_end|>`` must not end a turn).
    """

    def hf_encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    encoding = _tiktoken_from(tokenizer)
    if encoding is not None:

        def tt_encode(texts: list[str]) -> list[list[int]]:
            return encoding.encode_ordinary_batch([nfc(t) for t in texts], num_threads=1)

        if tt_encode(PROBE_TEXTS) == hf_encode(PROBE_TEXTS):
            return "tiktoken", tt_encode
        logger.info("tiktoken disagrees with the tokenizer on probe texts; using the Hugging Face tokenizer")
    return "huggingface", hf_encode


def _tiktoken_from(tokenizer: PreTrainedTokenizerBase):
    try:
        import tiktoken
    except ImportError:
        logger.info("tiktoken is not installed; tokenizing with the Hugging Face tokenizer (slower)")
        return None
    from utils.tokenizer import _bytes_to_unicode

    char_to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    added = set(tokenizer.get_added_vocab())
    ranks: dict[bytes, int] = {}
    for token, idx in tokenizer.get_vocab().items():
        if token in added:
            continue
        if any(c not in char_to_byte for c in token):
            return None
        ranks[bytes(char_to_byte[c] for c in token)] = idx
    if len(ranks) < 256:
        return None
    return tiktoken.Encoding(
        name=f"fast-{len(ranks)}", pat_str=QWEN_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={}
    )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Changes whenever the ids a tokenizer produces could change."""
    state = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else str(tokenizer)
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def group_of(path: Path, data_dir: Path) -> str:
    """``domain/language`` for the IndustryCorpus2 layout, else the folder relative to data_dir."""
    parts = path.relative_to(data_dir).parts[:-1] if path.is_relative_to(data_dir) else path.parts[:-1]
    return "/".join(parts[:2]) if parts else "."


# Worker state: each process loads the tokenizer once.
_WORKER: dict = {}


def _init_worker(tokenizer: str | PreTrainedTokenizerBase) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    _WORKER["eos"] = tokenizer.eos_token_id
    _WORKER["engine"], _WORKER["encode"] = make_fast_encoder(tokenizer)


def _tokenize_file(job: tuple[str, str]) -> dict:
    """Tokenize one parquet file into ``<out>.tokens`` (uint32) and ``<out>.lengths`` (int64)."""
    src, out = job
    encode, eos = _WORKER["encode"], _WORKER["eos"]
    rows = skipped = n_tokens = n_bytes = 0
    lengths: list[int] = []
    with open(out + ".tokens", "wb") as token_file:
        for texts in iter_column_batches(Path(src), "text"):
            rows += len(texts)
            good = [t for t in texts if isinstance(t, str) and t.strip()]
            skipped += len(texts) - len(good)
            if not good:
                continue
            docs = encode(good)
            for ids in docs:
                ids.append(eos)
            flat = np.fromiter(chain.from_iterable(docs), dtype=TOKEN_DTYPE)
            flat.tofile(token_file)
            lengths += [len(ids) for ids in docs]
            n_tokens += len(flat)
            n_bytes += sum(len(t.encode("utf-8")) for t in good)
    np.save(out + ".lengths.npy", np.asarray(lengths, dtype=np.int64))
    return {
        "file": src,
        "rows": rows,
        "skipped_empty": skipped,
        "tokens": n_tokens,
        "text_bytes": n_bytes,
        "engine": _WORKER["engine"],
    }


@dataclass
class TokenCache:
    """A finished cache: ``tokens`` (flat uint32 memmap) and ``doc_starts`` (int64 offsets)."""

    path: Path
    meta: dict

    @property
    def tokens(self) -> np.ndarray:
        return np.memmap(self.path / "tokens.bin", dtype=TOKEN_DTYPE, mode="r")

    @property
    def doc_starts(self) -> np.ndarray:
        return np.load(self.path / "doc_starts.npy", mmap_mode="r")


def files_fingerprint(files: Sequence[str | Path], tokenizer: PreTrainedTokenizerBase) -> str:
    """Changes when any input file (path, size, mtime) or the tokenizer changes: a cache key."""
    h = hashlib.sha256()
    h.update(f"v{CACHE_VERSION}|{tokenizer_fingerprint(tokenizer)}|eos={tokenizer.eos_token_id}".encode())
    for f in map(Path, files):
        stat = f.stat()
        h.update(f"|{f.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def build_token_cache(
    files: Sequence[Path],
    data_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_dir: str,
    cache_dir: str | Path,
    num_proc: int = 1,
) -> TokenCache:
    """Tokenize ``files`` into a cache (or reuse the one with the same key) and log what it holds."""
    target = Path(cache_dir) / files_fingerprint(files, tokenizer)
    if (target / "meta.json").is_file():
        meta = json.loads((target / "meta.json").read_text())
        logger.info(
            "Reusing token cache %s (%s tokens, %d documents)", target, f"{meta['tokens']:,}", meta["documents"]
        )
        return TokenCache(target, meta)

    check_files(files, ["text"])
    work = target.with_name(target.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    (work / "parts").mkdir(parents=True)
    jobs = [(str(f), str(work / "parts" / f"{i:06d}")) for i, f in enumerate(files)]
    start = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="Tokenizing files", unit="file")
    results: list[dict] = []
    if num_proc > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(num_proc, len(jobs)), initializer=_init_worker, initargs=(tokenizer_dir,)) as pool:
            for result in pool.imap(_tokenize_file, jobs):
                results.append(result)
                bar.update()
    else:
        _init_worker(tokenizer)  # in-process: reuse the tokenizer already loaded
        for job in jobs:
            results.append(_tokenize_file(job))
            bar.update()
    bar.close()
    seconds = time.perf_counter() - start

    # Concatenate the parts in file order, streaming, and turn lengths into document start offsets.
    doc_starts, offset = [], 0
    with open(work / "tokens.bin", "wb") as out:
        for _, part in jobs:
            with open(part + ".tokens", "rb") as src:
                shutil.copyfileobj(src, out, length=16 << 20)
            lengths = np.load(part + ".lengths.npy")
            doc_starts.append(offset + np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths)
            offset += int(lengths.sum())
    np.save(work / "doc_starts.npy", np.concatenate(doc_starts).astype(np.int64) if doc_starts else np.zeros(0))
    shutil.rmtree(work / "parts")

    per_group: Counter[str] = Counter()
    for result in results:
        per_group[group_of(Path(result["file"]), Path(data_dir))] += result["tokens"]
    meta = {
        "files": [str(f) for f in files],
        "rows": sum(r["rows"] for r in results),
        "skipped_empty": sum(r["skipped_empty"] for r in results),
        "documents": sum(r["rows"] - r["skipped_empty"] for r in results),
        "tokens": offset,
        "text_bytes": sum(r["text_bytes"] for r in results),
        "tokens_per_group": dict(sorted(per_group.items())),
        "engine": results[0]["engine"],
        "seconds": round(seconds, 2),
    }
    (work / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    shutil.rmtree(target, ignore_errors=True)
    work.rename(target)
    logger.info(
        "Tokenized %d files in %.1fs: %s documents, %s tokens (%.2f MB/s); skipped %d empty/null rows",
        len(files),
        seconds,
        f"{meta['documents']:,}",
        f"{offset:,}",
        meta["text_bytes"] / 1e6 / max(seconds, 1e-9),
        meta["skipped_empty"],
    )
    for group, count in meta["tokens_per_group"].items():
        logger.info("  tokens in %-50s %s", group, f"{count:,}")
    return TokenCache(target, meta)


def segment_starts(doc_starts: np.ndarray, begin: int, end: int) -> list[int]:
    """Offsets (relative to ``begin``) where a segment starts inside the window ``[begin, end)``."""
    lo, hi = np.searchsorted(doc_starts, [begin, end])
    inner = [int(s) - begin for s in doc_starts[lo:hi] if s > begin]
    return [0, *inner]


def block_example(tokens: np.ndarray, doc_starts: np.ndarray, index: int, block_size: int) -> dict:
    """input_ids, labels and position_ids of block ``index`` (see the module docstring)."""
    begin, end = index * block_size, (index + 1) * block_size
    input_ids = torch.from_numpy(np.asarray(tokens[begin:end], dtype=np.int64))
    labels = input_ids.clone()
    position_ids = torch.empty(block_size, dtype=torch.long)
    starts = segment_starts(doc_starts, begin, end)
    for s, e in zip(starts, [*starts[1:], block_size]):
        position_ids[s:e] = torch.arange(e - s)
        labels[s] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


class PackedDataset(torch.utils.data.Dataset):
    """Fixed-size blocks over a token cache; block ``i`` is always the same tokens (resume-safe)."""

    def __init__(self, cache: TokenCache, block_size: int):
        self.tokens, self.doc_starts, self.block_size = cache.tokens, cache.doc_starts, block_size
        self.num_blocks = len(self.tokens) // block_size
        if self.num_blocks == 0:
            raise ValueError(f"Only {len(self.tokens)} tokens: fewer than one block of {block_size}")
        self.dropped_tokens = len(self.tokens) - self.num_blocks * block_size

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> dict:
        return block_example(self.tokens, self.doc_starts, index, self.block_size)


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[batch, 1, T, T]`` mask: token ``q`` sees ``k`` iff ``k <= q`` in the same segment.

    Segments are found from restarting position ids. With ``dtype=None`` the mask is boolean (True =
    attend), which sdpa takes; with a float dtype it is additive (0 / dtype-min), which eager needs.
    """
    segment = torch.cumsum((position_ids == 0).long(), dim=-1)
    same = segment[:, :, None] == segment[:, None, :]
    causal = torch.ones(position_ids.shape[-1], position_ids.shape[-1], dtype=torch.bool).tril()
    allowed = same & causal.to(position_ids.device)
    if dtype is None:
        return allowed[:, None, :, :]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None, :, :]


def positions_from_lengths(seq_lengths: list[int]) -> torch.Tensor:
    """``[3, 2] -> [0, 1, 2, 0, 1]``: position ids restarting at every packed sequence."""
    return torch.cat([torch.arange(n) for n in seq_lengths])


@dataclass
class PackedCollator:
    """Batch examples so that packed sequences stay isolated under the chosen attention kernel.

    Examples carry ``input_ids`` and ``labels`` plus either ``position_ids`` (PT blocks) or
    ``seq_lengths`` (TRL-packed SFT rows); with neither, each example is one sequence.

    * flash_attention_2: all examples flattened into one row without padding; the varlen kernel
      splits where position ids restart.
    * flex_attention: rows padded to the longest with restarting position ids and no mask; transformers
      turns the position ids into a block-sparse document mask (masked blocks are skipped, not computed).
      Only without a KV cache: with one, transformers ignores the restarts, so the batch says ``use_cache=False``.
    * other kernels: rows padded to the longest, with a block-diagonal causal 4D mask.
    * ``isolate=False``: plain right padding with a 2D mask (the upstream layout, kept for comparison).

    ``real_tokens`` / ``computed_tokens`` count what went through the model, for the real-token share.
    """

    attn_implementation: str = "sdpa"
    pad_token_id: int = 0
    isolate: bool = True

    def __post_init__(self) -> None:
        self.real_tokens = 0
        self.computed_tokens = 0

    def __call__(self, examples: list[dict]) -> dict:
        ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        labels = [torch.as_tensor(e["labels"], dtype=torch.long) for e in examples]
        positions = [self._positions(e, len(i)) for e, i in zip(examples, ids)]
        self.real_tokens += sum(len(i) for i in ids)
        if self.isolate and self.attn_implementation.startswith("flash_attention"):
            self.computed_tokens += sum(len(i) for i in ids)
            return {
                "input_ids": torch.cat(ids)[None],
                "labels": torch.cat(labels)[None],
                "position_ids": torch.cat(positions)[None],
            }
        width = max(len(i) for i in ids)
        self.computed_tokens += width * len(ids)
        batch = {
            "input_ids": _pad(ids, width, self.pad_token_id),
            "labels": _pad(labels, width, IGNORE_INDEX),
            "position_ids": _pad(positions, width, 0),
        }
        if self.isolate and self.attn_implementation == "flex_attention":
            batch["use_cache"] = False
        elif self.isolate:
            # Padding gets position 0, so every pad token is a segment of its own and sees only itself.
            mask_dtype = None if self.attn_implementation == "sdpa" else torch.float32
            batch["attention_mask"] = block_causal_mask(batch["position_ids"], mask_dtype)
        else:
            batch["attention_mask"] = _pad([torch.ones_like(i) for i in ids], width, 0)
        return batch

    @staticmethod
    def _positions(example: dict, length: int) -> torch.Tensor:
        if "position_ids" in example:
            return torch.as_tensor(example["position_ids"], dtype=torch.long)
        if "seq_lengths" in example:
            return positions_from_lengths(list(example["seq_lengths"]))
        return torch.arange(length)

    def take_real_token_share(self) -> float | None:
        """Share of computed tokens that were real since the last call, then reset the counters."""
        if not self.computed_tokens:
            return None
        share = self.real_tokens / self.computed_tokens
        self.real_tokens = self.computed_tokens = 0
        return share


def _pad(rows: list[torch.Tensor], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
