"""The workers that tokenize PT parquet files for the token cache (``utils.data.token_cache``): each file streamed
batch by batch through the fast encoder into its own part files, one per split, in a pool of processes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from itertools import chain
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from utils.bpe import make_fast_encoder
from utils.data.parquet import EMPTY_TEXT, INVALID_UTF8, heldout_fraction, iter_batches
from utils.tokenizer import load_tokenizer

TOKEN_DTYPE = np.uint32
SPLITS = ("train", "heldout")
# Worker state: each process loads the tokenizer once.
_WORKER: dict = {}


def init_worker(tokenizer: str | PreTrainedTokenizerBase) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    _WORKER["eos"] = tokenizer.eos_token_id
    _WORKER["engine"], _WORKER["encode"] = make_fast_encoder(tokenizer)


def tokenize_file(job: tuple[str, str, float]) -> dict:
    """Tokenize one parquet file into ``<out>.<split>.tokens`` (uint32) and ``<out>.<split>.lengths.npy`` (int64), the
    split being ``train`` or ``heldout`` (documents below ``share``, see the module docstring)."""
    src, out, share = job
    encode, eos = _WORKER["encode"], _WORKER["eos"]
    rows, n_bytes = 0, 0
    tokens = {split: 0 for split in SPLITS}
    skipped: Counter[str] = Counter()
    lengths: dict[str, list[int]] = {split: [] for split in SPLITS}
    token_files = {split: open(f"{out}.{split}.tokens", "wb") for split in SPLITS}  # noqa: SIM115 (closed below)
    try:
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
            held = [share > 0 and heldout_fraction(text) < share for text in good]
            for split in SPLITS:
                keep = [ids for out_, ids in zip(held, docs) if out_ == (split == "heldout")]
                flat = np.fromiter(chain.from_iterable(keep), dtype=TOKEN_DTYPE)
                flat.tofile(token_files[split])
                lengths[split] += [len(ids) for ids in keep]
                tokens[split] += len(flat)
            n_bytes += sum(len(t.encode("utf-8")) for t in good)
    finally:
        for handle in token_files.values():
            handle.close()
    for split in SPLITS:
        np.save(f"{out}.{split}.lengths.npy", np.asarray(lengths[split], dtype=np.int64))
    return {
        "file": src,
        "rows": rows,
        "skipped": dict(+skipped),
        "tokens": tokens["train"],
        "heldout_tokens": tokens["heldout"],
        "heldout_documents": len(lengths["heldout"]),
        "text_bytes": n_bytes,
        "engine": _WORKER["engine"],
    }


def tokenize_files(jobs: list[tuple[str, str, float]], tokenizer, tokenizer_dir: str, num_proc: int) -> list[dict]:
    bar = tqdm(total=len(jobs), desc="Tokenizing files", unit="file")
    results: list[dict] = []
    if num_proc > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(num_proc, len(jobs)), initializer=init_worker, initargs=(tokenizer_dir,)) as pool:
            for result in pool.imap(tokenize_file, jobs):
                results.append(result)
                bar.update()
    else:
        init_worker(tokenizer)  # in-process: reuse the tokenizer already loaded
        for job in jobs:
            results.append(tokenize_file(job))
            bar.update()
    bar.close()
    return results
