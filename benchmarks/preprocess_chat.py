"""SFT and DPO preprocessing at scale: rows per second and peak memory, and what that means for the full data.

    python -m benchmarks.preprocess_chat                                   # the bundled mini_data, 20 copies
    python -m benchmarks.preprocess_chat --sft_data data/sft --dpo_data data/dpo --repeat 1 --num_proc 8

Each input file is copied ``--repeat`` times (a longer, steadier measurement), then the stage's own loader runs
in a fresh process: ``utils.data.sft.load_sft_dataset`` (chat template, assistant-only labels, skips counted,
Arrow cache written) and ``utils.data.dpo.load_preference_pairs`` (prompt budget, tokenized pairs). Printed per
loader: rows, seconds, rows/s, the peak resident memory of the measuring process (and its workers), and the hours
the full recipe's data would take at that rate (about 9M Infinity-Instruct conversations, 60K Infinity-Preference
pairs). SFT tokenizes files in ``--num_proc`` processes; DPO runs in one.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import resource
import shutil
import tempfile
import time
from pathlib import Path

from utils.data.parquet import find_parquet_files
from utils.tokenizer import DEFAULT_TOKENIZER_DIR

FULL_ROWS = {"sft": 9_000_000, "dpo": 60_000}


def _copies(source: str, repeat: int, into: Path) -> Path:
    for i, src in enumerate(find_parquet_files(source)):
        for r in range(repeat):
            dst = into / f"{i:04d}_{r:03d}.parquet"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return into


def _measure(kind: str, data_dir: str, tokenizer_dir: str, max_length: int, num_proc: int, cache: str, queue):
    from utils.data.dpo import load_preference_pairs
    from utils.data.sft import load_sft_dataset
    from utils.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    start = time.perf_counter()
    if kind == "sft":
        _, _, summary = load_sft_dataset(data_dir, tokenizer_dir, max_length, None, num_proc, cache, tokenizer)
    else:
        _, summary = load_preference_pairs(data_dir, tokenizer, max_length // 2, max_length)
    seconds = time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    peak_mb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children) / 1024
    queue.put({"rows": summary["rows"], "kept": summary["kept"], "seconds": seconds, "peak_mb": peak_mb})


def run(kind: str, source: str, args, tmp: Path) -> dict:
    data = _copies(source, args.repeat, tmp / kind)
    queue = multiprocessing.get_context("spawn").Queue()
    process = multiprocessing.get_context("spawn").Process(
        target=_measure,
        args=(kind, str(data), args.tokenizer, args.max_length, args.num_proc, str(tmp / "cache"), queue),
    )
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft_data", default="mini_data/sft", help="Infinity-Instruct style parquet files.")
    parser.add_argument("--dpo_data", default="mini_data/dpo", help="Infinity-Preference style parquet files.")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER_DIR, help="Tokenizer folder (Qwen2.5 by default).")
    parser.add_argument("--repeat", type=int, default=20, help="Copies of each file.")
    parser.add_argument("--max_length", type=int, default=1024, help="The recipes' max_length.")
    parser.add_argument("--num_proc", type=int, default=1, help="SFT tokenizing processes (dataset_num_proc).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind, source in (("sft", args.sft_data), ("dpo", args.dpo_data)):
            results[kind] = run(kind, source, args, Path(tmp))
    print(f"\n{'loader':<8}{'rows':>9}{'kept':>9}{'seconds':>9}{'rows/s':>9}{'peak MB':>9}{'full data, h':>14}")
    for kind, r in results.items():
        rate = r["rows"] / r["seconds"]
        hours = FULL_ROWS[kind] / rate / 3600
        print(
            f"{kind:<8}{r['rows']:>9,}{r['kept']:>9,}{r['seconds']:>9.1f}{rate:>9.0f}{r['peak_mb']:>9.0f}"
            f"{hours:>14.2f}"
        )
        r.update(rows_per_s=rate, full_data_hours=hours)
    print(
        f"full data: {FULL_ROWS['sft']:,} SFT conversations, {FULL_ROWS['dpo']:,} DPO pairs, at the measured rate "
        f"(SFT with {args.num_proc} process(es); it splits work by file: N processes give up to N times the rate)"
    )
    return results


if __name__ == "__main__":
    main()
