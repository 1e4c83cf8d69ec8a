"""PT preprocessing throughput: our pipeline vs upstream's approach, same files, same tokenizer, one run.

    python -m benchmarks.preprocess_pt --data_dir mini_data/pt
    python -m benchmarks.preprocess_pt --data_dir data/pt/news_media --repeat 1     # after prepare.sh --stage pt

Upstream's approach: ``datasets`` parquet loading, ``Dataset.map`` with batched Hugging Face tokenization
of ``text + eos``, ``itertools.chain`` of the batch and a split into fixed blocks. Ours:
``utils.data.token_cache.build_token_cache`` (tiktoken engine, streaming into a flat token file). Both run in one
process (per-process throughput) on ``--repeat`` copies of every input file, with fresh caches.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from itertools import chain
from pathlib import Path

import pyarrow.parquet as pq
from datasets import load_dataset

# Per-process throughput: the Hugging Face tokenizer would otherwise batch-encode on every core.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from utils.data.parquet import find_parquet_files
from utils.data.token_cache import build_token_cache
from utils.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer


def upstream_style(files: list[Path], tokenizer, block_size: int, cache_dir: str) -> int:
    dataset = load_dataset("parquet", data_files=[str(f) for f in files], split="train", cache_dir=cache_dir)
    dataset = dataset.select_columns(["text"])
    eos = tokenizer.eos_token

    def tokenize_and_block(batch):
        ids = tokenizer([t + eos for t in batch["text"]], add_special_tokens=False)["input_ids"]
        flat = list(chain(*ids))
        usable = len(flat) // block_size * block_size
        return {"input_ids": [flat[i : i + block_size] for i in range(0, usable, block_size)]}

    blocks = dataset.map(tokenize_and_block, batched=True, batch_size=5000, remove_columns=["text"])
    return len(blocks) * block_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="mini_data/pt", help="Parquet files with a text column.")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER_DIR, help="Tokenizer folder (Qwen2.5 by default).")
    parser.add_argument("--repeat", type=int, default=4, help="Copies of each file, for a longer measurement.")
    parser.add_argument("--block_size", type=int, default=1024, help="Block size of the upstream-style split.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    tokenizer = load_tokenizer(args.tokenizer)
    sources = find_parquet_files(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, src in enumerate(sources):
            for r in range(args.repeat):
                dst = Path(tmp) / "data" / f"{i:04d}_{r:03d}.parquet"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst)
                files.append(dst)
        text_mb = (
            sum(
                sum(len(t.encode()) for t in pq.read_table(f, columns=["text"]).column(0).to_pylist() if t)
                for f in files
            )
            / 1e6
        )

        start = time.perf_counter()
        cache = build_token_cache(files, Path(tmp) / "data", tokenizer, args.tokenizer, Path(tmp) / "ours", 1)
        ours_s = time.perf_counter() - start
        ours_tokens = cache.meta["tokens"]

        start = time.perf_counter()
        upstream_tokens = upstream_style(files, tokenizer, args.block_size, str(Path(tmp) / "hf"))
        upstream_s = time.perf_counter() - start

    print(f"\nInput: {len(files)} files ({len(sources)} x {args.repeat}), {text_mb:.2f} MB of text, one process")
    print(f"{'pipeline':<34}{'seconds':>9}{'MB/s':>9}{'tokens/s':>12}{'tokens':>12}")
    for name, secs, toks in [
        ("upstream (datasets.map, HF fast)", upstream_s, upstream_tokens),
        (f"ours (cache, {cache.meta['engine']})", ours_s, ours_tokens),
    ]:
        print(f"{name:<34}{secs:>9.2f}{text_mb / secs:>9.2f}{toks / secs:>12,.0f}{toks:>12,}")
    print(f"speed-up (MB/s, ours / upstream): {upstream_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()
