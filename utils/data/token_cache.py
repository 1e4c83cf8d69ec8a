"""Pretraining text tokenized once into an on-disk cache (``utils.data.pt`` serves training views of it).

Pipeline (``build_token_cache``):
  parquet ``text`` -> NFC -> token ids + EOS per document -> one flat uint32 token file and the start
  offset of every document, cached on disk under a key of the input files and the tokenizer.
  Files are tokenized in parallel, each streamed batch by batch, so memory does not grow with the corpus.
Rows that cannot be used (null, empty, invalid UTF-8) are skipped and counted per reason in ``meta.json``.
With ``heldout_share`` > 0, the documents that ``utils.data.parquet.heldout_fraction`` puts below it go to a second,
held-out stream (``TokenCache.heldout()``), never to the training one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from utils.data.parquet import check_text_column, files_fingerprint
from utils.data.tokenize_files import SPLITS, TOKEN_DTYPE, tokenize_files
from utils.tokenizer import tokenizer_fingerprint

logger = logging.getLogger(__name__)

CACHE_VERSION = 3


def group_of(path: Path, data_dir: Path) -> str:
    """``domain/language`` for the IndustryCorpus2 layout, else the folder relative to data_dir."""
    parts = path.relative_to(data_dir).parts[:-1] if path.is_relative_to(data_dir) else path.parts[:-1]
    return "/".join(parts[:2]) if parts else "."


@dataclass
class TokenCache:
    """A finished cache: ``tokens`` (flat uint32 memmap) and ``doc_starts`` (int64 offsets) of the training stream,
    or of the held-out one for ``split="heldout"`` (``heldout()``)."""

    path: Path
    meta: dict
    split: str = "train"

    def _file(self, name: str) -> Path:
        return self.path / (name if self.split == "train" else f"{self.split}_{name}")

    @property
    def tokens(self) -> np.ndarray:
        count = self.meta.get("tokens" if self.split == "train" else f"{self.split}_tokens")
        if count == 0 or not self._file("tokens.bin").is_file():  # numpy cannot map an empty file
            return np.zeros(0, dtype=TOKEN_DTYPE)
        return np.memmap(self._file("tokens.bin"), dtype=TOKEN_DTYPE, mode="r")

    @property
    def doc_starts(self) -> np.ndarray:
        if not self._file("doc_starts.npy").is_file():
            return np.zeros(0, dtype=np.int64)
        return np.load(self._file("doc_starts.npy"), mmap_mode="r")

    def heldout(self) -> TokenCache:
        """The held-out documents (empty when the cache was built without a held-out share)."""
        return TokenCache(self.path, self.meta, "heldout")


def cache_key(files: Sequence[Path], tokenizer: PreTrainedTokenizerBase, heldout_share: float = 0.0) -> str:
    """The cache folder's name: changes with the files, the tokenizer, the held-out share or this module's format."""
    return files_fingerprint(
        files, f"pt-v{CACHE_VERSION}", tokenizer_fingerprint(tokenizer), f"heldout={heldout_share}"
    )


def build_token_cache(
    files: Sequence[Path],
    data_dir: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_dir: str,
    cache_dir: str | Path,
    num_proc: int = 1,
    heldout_share: float = 0.0,
) -> TokenCache:
    """Tokenize ``files`` into a cache (or reuse the one with the same key) and log what it holds.

    The cache is built in a folder private to this process and renamed into place when complete, so two
    runs sharing ``cache_dir`` never touch each other's work; the first to finish is the one kept."""
    if not 0 <= heldout_share < 1:
        raise ValueError(f"the held-out share must be in [0, 1), got {heldout_share}")
    target = Path(cache_dir) / cache_key(files, tokenizer, heldout_share)
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
        jobs = [(str(f), str(work / "parts" / f"{i:06d}"), heldout_share) for i, f in enumerate(files)]
        start = time.perf_counter()
        results = tokenize_files(jobs, tokenizer, tokenizer_dir, num_proc)
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
    if meta["heldout_documents"]:
        logger.info(
            "Held out of training: %s documents, %s tokens (%.1f%% of documents, chosen by a hash of their text)",
            f"{meta['heldout_documents']:,}",
            f"{meta['heldout_tokens']:,}",
            100 * heldout_share,
        )
    return TokenCache(target, meta)


def _concatenate(jobs: list[tuple[str, str, float]], work: Path) -> int:
    """The parts in file order into each split's token file, streaming; lengths into document start offsets.
    Returns the training stream's token count."""
    totals = {}
    for split in SPLITS:
        prefix = "" if split == "train" else f"{split}_"
        doc_starts, offset = [], 0
        with open(work / f"{prefix}tokens.bin", "wb") as out:
            for _, part, _ in jobs:
                with open(f"{part}.{split}.tokens", "rb") as src:
                    shutil.copyfileobj(src, out, length=16 << 20)
                lengths = np.load(f"{part}.{split}.lengths.npy")
                starts = offset + np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else lengths
                doc_starts.append(starts)
                offset += int(lengths.sum())
        starts = np.concatenate(doc_starts).astype(np.int64) if doc_starts else np.zeros(0, dtype=np.int64)
        np.save(work / f"{prefix}doc_starts.npy", starts)
        totals[split] = offset
    shutil.rmtree(work / "parts")
    return totals["train"]


def _summarise(results: list[dict], files, data_dir, tokens: int, seconds: float) -> dict:
    per_group: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for result in results:
        per_group[group_of(Path(result["file"]), Path(data_dir))] += result["tokens"]
        skipped.update(result["skipped"])
    rows = sum(r["rows"] for r in results)
    heldout_documents = sum(r["heldout_documents"] for r in results)
    return {
        "files": [str(f) for f in files],
        "rows": rows,
        "skipped": dict(skipped),
        "documents": rows - sum(skipped.values()) - heldout_documents,
        "tokens": tokens,
        "heldout_documents": heldout_documents,
        "heldout_tokens": sum(r["heldout_tokens"] for r in results),
        "text_bytes": sum(r["text_bytes"] for r in results),
        "tokens_per_group": dict(sorted(per_group.items())),
        "engine": results[0]["engine"] if results else "none",
        "seconds": round(seconds, 2),
    }
