"""Pretraining text tokenized once into an on-disk cache (``utils.data.pt`` serves training views of it).

Pipeline (``build_token_cache``):
  parquet ``text`` -> NFC -> token ids + EOS per document -> one flat uint32 token file and the start
  offset of every document, cached on disk under a key of the input files and the tokenizer.
  Files are tokenized in parallel, each streamed batch by batch, so memory does not grow with the corpus.
Rows that cannot be used (null, empty, invalid UTF-8) are skipped and counted per reason in ``meta.json``.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from utils.bpe import make_fast_encoder
from utils.data.parquet import EMPTY_TEXT, INVALID_UTF8, check_text_column, files_fingerprint, iter_batches
from utils.tokenizer import load_tokenizer, tokenizer_fingerprint

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
TOKEN_DTYPE = np.uint32

# Worker state: each process loads the tokenizer once.
_WORKER: dict = {}


def group_of(path: Path, data_dir: Path) -> str:
    """``domain/language`` for the IndustryCorpus2 layout, else the folder relative to data_dir."""
    parts = path.relative_to(data_dir).parts[:-1] if path.is_relative_to(data_dir) else path.parts[:-1]
    return "/".join(parts[:2]) if parts else "."


def _init_worker(tokenizer: str | PreTrainedTokenizerBase) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    _WORKER["eos"] = tokenizer.eos_token_id
    _WORKER["engine"], _WORKER["encode"] = make_fast_encoder(tokenizer)


def _tokenize_file(job: tuple[str, str]) -> dict:
    """Tokenize one parquet file into ``<out>.tokens`` (uint32) and ``<out>.lengths.npy`` (int64)."""
    src, out = job
    encode, eos = _WORKER["encode"], _WORKER["eos"]
    rows, n_tokens, n_bytes = 0, 0, 0
    skipped: Counter[str] = Counter()
    lengths: list[int] = []
    with open(out + ".tokens", "wb") as token_file:
        for _, records in iter_batches(Path(src), ["text"]):
            rows += len(records)
            texts = [r["text"] if r is not None else None for r in records]
            skipped[INVALID_UTF8] += sum(r is None for r in records)
            good = [t for t in texts if t is not None and t.strip()]
            skipped[EMPTY_TEXT] += sum(r is not None for r in records) - len(good)
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
        "skipped": dict(+skipped),
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
        if self.meta.get("tokens") == 0:  # numpy cannot map an empty file
            return np.zeros(0, dtype=TOKEN_DTYPE)
        return np.memmap(self.path / "tokens.bin", dtype=TOKEN_DTYPE, mode="r")

    @property
    def doc_starts(self) -> np.ndarray:
        return np.load(self.path / "doc_starts.npy", mmap_mode="r")


def cache_key(files: Sequence[Path], tokenizer: PreTrainedTokenizerBase) -> str:
    """The cache folder's name: changes with the files, the tokenizer or this module's format."""
    return files_fingerprint(files, f"pt-v{CACHE_VERSION}", tokenizer_fingerprint(tokenizer))


def _tokenize_all(jobs: list[tuple[str, str]], tokenizer, tokenizer_dir: str, num_proc: int) -> list[dict]:
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
    return results


def build_token_cache(
    files: Sequence[Path],
    data_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_dir: str,
    cache_dir: str | Path,
    num_proc: int = 1,
) -> TokenCache:
    """Tokenize ``files`` into a cache (or reuse the one with the same key) and log what it holds.

    The cache is built in a folder private to this process and renamed into place when complete, so two
    runs sharing ``cache_dir`` never touch each other's work; the first to finish is the one kept."""
    target = Path(cache_dir) / cache_key(files, tokenizer)
    if (target / "meta.json").is_file():
        meta = json.loads((target / "meta.json").read_text())
        logger.info(
            "Reusing token cache %s (%s tokens, %d documents)", target, f"{meta['tokens']:,}", meta["documents"]
        )
        return TokenCache(target, meta)

    for f in files:  # every file readable, with a text column, before any work starts
        check_text_column(f, "text")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
    try:
        (work / "parts").mkdir()
        jobs = [(str(f), str(work / "parts" / f"{i:06d}")) for i, f in enumerate(files)]
        start = time.perf_counter()
        results = _tokenize_all(jobs, tokenizer, tokenizer_dir, num_proc)
        seconds = time.perf_counter() - start
        offset = _concatenate(jobs, work)
        meta = _summarise(results, files, data_dir, offset, seconds)
        (work / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
        try:
            work.rename(target)
        except OSError:  # another run finished the same cache first: use it
            logger.info("Token cache %s was completed by another run; using that", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = json.loads((target / "meta.json").read_text())
    skipped = ", ".join(f"{n} {reason}" for reason, n in meta["skipped"].items()) or "none"
    logger.info(
        "Tokenized %d files in %.1fs: %s documents, %s tokens (%.2f MB/s); skipped rows: %s",
        len(files),
        seconds,
        f"{meta['documents']:,}",
        f"{meta['tokens']:,}",
        meta["text_bytes"] / 1e6 / max(seconds, 1e-9),
        skipped,
    )
    for group, count in meta["tokens_per_group"].items():
        logger.info("  tokens in %-50s %s", group, f"{count:,}")
    return TokenCache(target, meta)


def _concatenate(jobs: list[tuple[str, str]], work: Path) -> int:
    """The parts in file order into ``tokens.bin``, streaming; lengths into document start offsets."""
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
    return offset


def _summarise(results: list[dict], files, data_dir, tokens: int, seconds: float) -> dict:
    per_group: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for result in results:
        per_group[group_of(Path(result["file"]), Path(data_dir))] += result["tokens"]
        skipped.update(result["skipped"])
    rows = sum(r["rows"] for r in results)
    return {
        "files": [str(f) for f in files],
        "rows": rows,
        "skipped": dict(skipped),
        "documents": rows - sum(skipped.values()),
        "tokens": tokens,
        "text_bytes": sum(r["text_bytes"] for r in results),
        "tokens_per_group": dict(sorted(per_group.items())),
        "engine": results[0]["engine"] if results else "none",
        "seconds": round(seconds, 2),
    }
