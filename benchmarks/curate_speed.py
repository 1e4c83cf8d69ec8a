"""Curation throughput per process (tools.curate), stage by stage, with PT tokenization of the same files beside it.

    python -m benchmarks.curate_speed --source_dir mini_data/pt
    python -m benchmarks.curate_speed --source_dir data/pt --mb 50 200   # after bash prepare.sh --mini or the data

The corpus is built from the source files' own sentences, reshuffled into new documents (so that they are distinct,
as most of a real corpus is) and written in IndustryCorpus2's layout with the source rows' columns, ``--mb`` MB of
text in ``--files`` files per language. Every stage of the pipeline (``tools.curate.pipeline.build_stages``, the
recipe ``configs/curate_pt.yaml``) then runs on datatrove's local executor with one worker, one stage at a time, so
each time is one process's; the end-to-end figure is the sum of all stages, report included.

Two sizes run, each in a fresh process: both pay the same start-up (imports, tokenizer load, tables, the report's
figures), so the difference in CPU time is what the extra megabytes cost. That marginal rate is the one that holds
on a corpus of hundreds of GB, and the full-corpus projection (upstream's ~16B tokens at the bytes per token measured
here) uses it. CPU time rather than wall time, because a shared machine stretches wall time by its load.
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
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.executor import LocalPipelineExecutor

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tools.curate.filters import build_decont_index  # noqa: E402
from tools.curate.pipeline import build_stages  # noqa: E402
from tools.curate.recipe import CurateArguments  # noqa: E402
from tools.curate.report import report_step  # noqa: E402
from tools.curate.run import prepare_folders  # noqa: E402
from utils.data.parquet import find_parquet_files  # noqa: E402
from utils.data.token_cache import build_token_cache  # noqa: E402
from utils.tokenizer import load_tokenizer  # noqa: E402
from utils.train.args import parse_args  # noqa: E402

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


def measure(sources: list[Path], mb: float, files: int, seed: int, config: str, bench_dir: str, flags: list) -> dict:
    """One corpus of ``mb`` MB per language, every stage timed (wall and CPU), then PT tokenization of it."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        documents, text_bytes = build_corpus(sources, tmp / "in", mb, files, seed)
        argv = [
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
        (recipe,) = parse_args((CurateArguments,), argv)
        prepare_folders(recipe)
        input_files = find_parquet_files(recipe.input_dir)
        paths_file = tmp / "work" / "files.txt"
        paths_file.write_text("".join(f"{f.relative_to(recipe.input_dir)}\n" for f in input_files))
        timings = {}
        start, cpu = time.perf_counter(), time.process_time()
        build_decont_index(recipe.bench_dir, recipe.decont_ngram, str(tmp / "work" / "decont"))
        timings["0_decont_index"] = (time.perf_counter() - start, time.process_time() - cpu)
        report = partial(report_step, recipe=recipe)
        for name, pipeline, tasks in build_stages(recipe, str(paths_file), len(input_files), report):
            start, cpu = time.perf_counter(), time.process_time()
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=1, logging_dir=str(tmp / "logs" / name)).run()
            timings[name] = (time.perf_counter() - start, time.process_time() - cpu)
        start, cpu = time.perf_counter(), time.process_time()
        tokenizer = load_tokenizer(recipe.tokenizer_name_or_path)
        cache = build_token_cache(
            input_files, recipe.input_dir, tokenizer, recipe.tokenizer_name_or_path, tmp / "cache", 1
        )
        timings["PT tokenization"] = (time.perf_counter() - start, time.process_time() - cpu)
        kept = json.loads((tmp / "out" / "curation_summary.json").read_text())["kept"]
    return {
        "documents": documents,
        "mb": text_bytes / 1e6,
        "timings": timings,
        "kept": kept,
        "bytes_per_token": text_bytes / cache.meta["tokens"],
        "token_sample_every": recipe.token_sample_every,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source_dir", nargs="+", default=["mini_data/pt"], help="IndustryCorpus2-like folders.")
    parser.add_argument("--mb", type=float, nargs=2, default=[2.5, 10], help="Two corpus sizes, MB per language.")
    parser.add_argument("--files", type=int, default=2, help="Files (= tasks) per language.")
    parser.add_argument("--config", default="configs/curate_pt.yaml", help="The curation recipe.")
    parser.add_argument("--bench_dir", default="mini_data/bench", help="Benchmarks to decontaminate against.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one_size", type=float, help=argparse.SUPPRESS)  # a child run: print its JSON
    args, flags = parser.parse_known_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one_size:
        sources = [f for folder in args.source_dir for f in find_parquet_files(folder)]
        result = measure(sources, args.one_size, args.files, args.seed, args.config, args.bench_dir, flags)
        print("RESULT " + json.dumps(result))
        return

    # Each size runs in a fresh process, so that both pay the same start-up (tokenizer load, tables, imports);
    # the difference between the two is the cost of the extra megabytes alone.
    runs = []
    for mb in args.mb:
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.curate_speed", *sys.argv[1:], "--one_size", str(mb)],
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(child.stdout.split("RESULT ", 1)[1]))
    small, large = runs
    mb, documents, extra_mb = large["mb"], large["documents"], large["mb"] - small["mb"]
    print(
        f"corpus: {documents:,} documents, {mb:.1f} MB of text; marginal rates: its {extra_mb:.1f} MB more "
        f"than a {small['mb']:.1f} MB run; recipe {args.config}, token_sample_every={large['token_sample_every']}\n"
    )
    header = f"{'stage':<16}{'wall s':>8}{'CPU s':>8}{'MB/s':>8}{'docs/s':>9}{'marginal MB/s (CPU)':>22}"
    print(header)
    curation = [name for name in large["timings"] if name != "PT tokenization"]
    for name in [*curation, "end to end", "PT tokenization"]:
        stages = curation if name == "end to end" else [name]
        wall, cpu = (sum(large["timings"][s][i] for s in stages) for i in (0, 1))
        extra_cpu = cpu - sum(small["timings"][s][1] for s in stages)
        marginal = f"{extra_mb / extra_cpu:>22.2f}" if extra_cpu > 0.05 else f"{'(start-up only)':>22}"
        print(f"{name:<16}{wall:>8.2f}{cpu:>8.2f}{mb / wall:>8.2f}{documents / wall:>9,.0f}{marginal}")
    cpu_of = {
        name: (large["timings"][name][1] if name != "end to end" else sum(large["timings"][s][1] for s in curation))
        for name in ("end to end", "PT tokenization")
    }
    ratio = cpu_of["end to end"] / cpu_of["PT tokenization"]
    print(f"\ncuration / PT tokenization, CPU time on the same files: {ratio:.2f}x")
    print(
        f"peak memory of one process: {small['peak_mb']:.0f} MB at {small['mb']:.0f} MB of text, "
        f"{large['peak_mb']:.0f} MB at {mb:.0f} MB"
    )
    full_mb = FULL_CORPUS_TOKENS * large["bytes_per_token"] / 1e6
    marginal_rate = extra_mb / (cpu_of["end to end"] - sum(small["timings"][s][1] for s in curation))
    print(
        f"full corpus: {FULL_CORPUS_TOKENS / 1e9:.0f}B tokens x {large['bytes_per_token']:.2f} bytes/token "
        f"(measured here) = {full_mb / 1e3:.0f} GB of text; at the marginal {marginal_rate:.2f} MB/s per process:"
    )
    for processes in (1, 16, 64):
        print(f"  {processes:>2} processes: {full_mb / marginal_rate / processes / 3600:7.1f} h")
    print(f"(kept {large['kept']:,} of {documents:,} documents)")


if __name__ == "__main__":
    main()
