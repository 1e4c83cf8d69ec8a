"""Curation throughput per process (tools.curate), stage by stage, with PT tokenization of the same files beside it.

    python -m benchmarks.curate_speed --source_dir mini_data/pt
    python -m benchmarks.curate_speed --source_dir data/pt --mb 50 200   # after bash prepare.sh --mini or the data

The corpus is built from the source files' own sentences, reshuffled into new documents (so that they are distinct,
as most of a real corpus is) and written in IndustryCorpus2's layout with the source rows' columns, ``--mb`` MB of
text in ``--files`` files per language. ``python -m tools.curate`` (recipe ``configs/curate_pt.yaml``) then curates it
in a child process with one worker, as a person runs it: its wall and CPU time are one process's, end to end, report
included; the stages' share comes from their logs. PT tokenization (``utils.data.token_cache``) of the same files
runs beside it.

Two sizes run: both pay the same start-up (imports, tokenizer load, tables, the report's figures), so the difference
in CPU time is what the extra megabytes cost. That marginal rate is the one that holds on a corpus of hundreds of GB,
and the full-corpus projection (upstream's ~16B tokens at the bytes per token measured here) uses it. CPU time rather
than wall time, because a shared machine stretches wall time by its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from utils.data.parquet import find_parquet_files  # noqa: E402
from utils.data.token_cache import build_token_cache  # noqa: E402
from utils.tokenizer import load_tokenizer  # noqa: E402

FULL_CORPUS_TOKENS = 16e9  # upstream's PT subset of IndustryCorpus2
SENTENCE_END = re.compile(r"(?<=[。！？!?.\n])")


def build_corpus(sources: list[Path], out: Path, mb: float, files: int, seed: int) -> tuple[int, int]:
    """Documents of reshuffled source sentences, ``mb`` MB of text per language; returns (documents, bytes)."""
    rng = random.Random(seed)
    by_language: dict[str, list[tuple[list[str], dict]]] = {}
    for source in sources:
        language = next((p for p in source.parts if p in ("chinese", "english")), "english")
        for row in pq.read_table(source).to_pylist():
            if row.get("text"):
                sentences = [s for s in SENTENCE_END.split(row["text"]) if s.strip()]
                by_language.setdefault(language, []).append((sentences, row))
    documents = total = 0
    for language, rows in sorted(by_language.items()):
        pool = [s for sentences, _ in rows for s in sentences]
        schema = pq.read_schema(next(s for s in sources if language in s.parts))
        target, written = mb * 1e6, 0
        for index in range(files):
            batch = []
            while written < target * (index + 1) / files:
                _, template = rng.choice(rows)
                text = "".join(rng.choice(pool) for _ in range(rng.randint(10, 40)))
                batch.append({**template, "text": text})
                written += len(text.encode())
            path = out / "bench" / language / "high" / f"rank_{index:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(batch, schema=schema), path)
            documents += len(batch)
        total += written
    return documents, total


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)", re.M)


def stage_seconds(logs: Path) -> dict[str, float]:
    """Wall seconds of each stage, from the first to the last timestamp of its tasks' datatrove logs."""
    seconds = {}
    for stage in sorted(p for p in logs.iterdir() if p.is_dir() and (p / "logs").is_dir()):
        stamps = [
            datetime.fromisoformat(t) for f in (stage / "logs").glob("*.log") for t in LOG_TIME.findall(f.read_text())
        ]
        if stamps:
            seconds[stage.name] = (max(stamps) - min(stamps)).total_seconds()
    return seconds


def measure(sources: list[Path], mb: float, files: int, seed: int, config: str, bench_dir: str, flags: list) -> dict:
    """One corpus of ``mb`` MB per language, curated by ``python -m tools.curate`` in a child process (one worker:
    wall and CPU time of one process, stages from its logs), then PT tokenization of the same files here."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        documents, text_bytes = build_corpus(sources, tmp / "in", mb, files, seed)
        command = [
            sys.executable,
            "-m",
            "tools.curate",
            "--config",
            config,
            "--input_dir",
            str(tmp / "in"),
            "--output_dir",
            str(tmp / "out"),
            "--work_dir",
            str(tmp / "work"),
            "--bench_dir",
            bench_dir,
            "--workers",
            "1",
            *flags,
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        stages = stage_seconds(tmp / "work" / "logs")
        summary = json.loads((tmp / "out" / "curation_summary.json").read_text())
        recipe = json.loads((tmp / "work" / "recipe.json").read_text())
        input_files = find_parquet_files(tmp / "in")
        start, cpu_start = time.perf_counter(), time.process_time()
        tokenizer = load_tokenizer(recipe["tokenizer_name_or_path"])
        cache = build_token_cache(
            input_files, tmp / "in", tokenizer, recipe["tokenizer_name_or_path"], tmp / "cache", 1
        )
        tokenize = (time.perf_counter() - start, time.process_time() - cpu_start)
    return {
        "documents": documents,
        "mb": text_bytes / 1e6,
        "wall": wall,
        "cpu": cpu,
        "stages": stages,
        "tokenize": tokenize,
        "kept": summary["kept"],
        "bytes_per_token": text_bytes / cache.meta["tokens"],
        "token_sample_every": recipe["token_sample_every"],
        "peak_mb": after.ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_dir", nargs="+", default=["mini_data/pt"], help="IndustryCorpus2-like folders.")
    parser.add_argument("--mb", type=float, nargs=2, default=[2.5, 10], help="Two corpus sizes, MB per language.")
    parser.add_argument("--files", type=int, default=2, help="Files (= tasks) per language.")
    parser.add_argument("--config", default="configs/curate_pt.yaml", help="The curation recipe.")
    parser.add_argument("--bench_dir", default="mini_data/bench", help="Benchmarks to decontaminate against.")
    parser.add_argument("--seed", type=int, default=0)
    args, flags = parser.parse_known_args()
    logging.basicConfig(level=logging.WARNING)
    sources = [f for folder in args.source_dir for f in find_parquet_files(folder)]
    small, large = (measure(sources, mb, args.files, args.seed, args.config, args.bench_dir, flags) for mb in args.mb)
    mb, documents, extra_mb = large["mb"], large["documents"], large["mb"] - small["mb"]
    print(
        f"corpus: {documents:,} documents, {mb:.1f} MB of text; recipe {args.config}, "
        f"token_sample_every={large['token_sample_every']}; kept {large['kept']:,}\n"
    )
    print(f"{'stage (wall, from the logs)':<28}{'seconds':>9}{'share':>8}")
    for name, seconds in large["stages"].items():
        print(f"{name:<28}{seconds:>9.2f}{seconds / large['wall']:>8.0%}")
    print(f"\n{'':<22}{'wall s':>8}{'CPU s':>8}{'MB/s':>8}{'docs/s':>9}{'marginal MB/s (CPU)':>22}")
    rows = [
        ("curation, end to end", large["wall"], large["cpu"], large["cpu"] - small["cpu"]),
        ("PT tokenization", *large["tokenize"], large["tokenize"][1] - small["tokenize"][1]),
    ]
    for name, wall, cpu, extra_cpu in rows:
        print(
            f"{name:<22}{wall:>8.2f}{cpu:>8.2f}{mb / wall:>8.2f}{documents / wall:>9,.0f}{extra_mb / extra_cpu:>22.2f}"
        )
    marginal = extra_mb / (large["cpu"] - small["cpu"])
    print(f"\ncuration / PT tokenization, CPU time on the same files: {large['cpu'] / large['tokenize'][1]:.2f}x")
    print(
        f"peak memory of the curation process: {small['peak_mb']:.0f} MB at {small['mb']:.0f} MB of text, "
        f"{large['peak_mb']:.0f} MB at {mb:.0f} MB"
    )
    full_mb = FULL_CORPUS_TOKENS * large["bytes_per_token"] / 1e6
    print(
        f"full corpus: {FULL_CORPUS_TOKENS / 1e9:.0f}B tokens x {large['bytes_per_token']:.2f} bytes/token "
        f"(measured here) = {full_mb / 1e3:.0f} GB of text; at the marginal {marginal:.2f} MB/s per process:"
    )
    for processes in (1, 16, 64):
        print(f"  {processes:>2} processes: {full_mb / marginal / processes / 3600:7.1f} h")


if __name__ == "__main__":
    main()
