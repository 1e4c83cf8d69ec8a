"""Benchmarks through lm-evaluation-harness on local copies of the data: C-Eval, CMMLU, MMLU, ARC-Easy/Challenge,
HellaSwag (and GSM8K when asked for), every checkpoint side by side with the score of random guessing.

    python -m tools.bench --model_name_or_path results/pt results/sft results/dpo            # data/bench
    python -m tools.bench --model_name_or_path results/sft --tasks ceval cmmlu gsm8k --limit 200
    python -m tools.bench --model_name_or_path results/demo/pt results/demo/sft results/demo/dpo \\
        --data_dir mini_data/bench --output_dir results/demo/bench        # the bundled fixtures, seconds on a CPU

The data comes from ``bash prepare.sh --stage bench`` (``tools.bench_data``). Prompts, few-shot rules and metrics
are lm_eval's own tasks; only the files are local (``tools.bench_tasks``), and the run is offline. PT checkpoints
are scored on raw text, SFT/DPO checkpoints through their chat template with few-shot examples as earlier turns
(``run_info.json`` tells them apart, as in mini_qwen_eval.py; ``--mode`` overrides).

Writes to ``--output_dir``: ``bench.json`` (every metric with its standard error, documents scored, the random-guess
baseline, whether each benchmark was scored on its full split and if not why, versions), ``bench.md`` (the table, also
printed), ``raw/<checkpoint>.json`` (lm_eval's own results) and ``tasks/`` (the generated task configs).
``utils.evaluation.bench_table_markdown("results/bench/bench.json")`` renders the table again, e.g. for another
report. A run on less than a benchmark's full split (the fixtures, ``--limit``, missing subjects) says so in the
table's title and rows and in bench.json, and marks no score above chance.

Bad input stops the run before lm_eval starts, naming it: a folder that is not a checkpoint, the same checkpoint
twice, a ``--limit`` that is not a number of questions, a task file that is not parquet, lacks a column lm_eval
reads or holds an answer that is not one of its choices (file and row).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path

from tools.bench_tasks import DEFAULT_TASKS, SPECS, LocalTask, full_docs, write_task_yamls
from tools.serve import CheckpointError, check_checkpoint
from utils.data.parquet import DataError
from utils.evaluation import render_bench_table
from utils.generation import is_chat_checkpoint
from utils.run_info import as_jsonable, git_commit, package_versions, portable_path
from utils.train.hardware import inference_dtype, resolve_device

logger = logging.getLogger(__name__)

HEADLINE = "acc,none"  # the table's metric unless SPECS names another


@dataclass
class BenchArguments:
    model_name_or_path: list[str] = field(
        default_factory=lambda: ["results/pt", "results/sft", "results/dpo"],
        metadata={"help": "Checkpoint folders; each becomes a column of the table."},
    )
    tasks: list[str] = field(
        default_factory=lambda: list(DEFAULT_TASKS),
        metadata={"help": "Benchmarks to run (gsm8k generates: slow on a CPU).", "choices": list(SPECS)},
    )
    data_dir: str = field(default="data/bench", metadata={"help": "Benchmark files (prepare.sh --stage bench)."})
    output_dir: str = field(default="results/bench", metadata={"help": "Where bench.json and bench.md go."})
    limit: float | None = field(
        default=None,
        metadata={
            "help": "Only the first N documents of every task and subject (a fraction if < 1): a quick look, "
            "not comparable with full runs."
        },
    )
    mode: str = field(
        default="auto",
        metadata={
            "help": "auto (PT checkpoints: raw text; others: chat template), chat or raw.",
            "choices": ["auto", "chat", "raw"],
        },
    )
    num_fewshot: int | None = field(
        default=None, metadata={"help": "Few-shot examples for every task. Default: each task's own (0; GSM8K 5)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Requests per forward pass."})
    max_gen_toks: int | None = field(
        default=None, metadata={"help": "GSM8K: longest generated answer in tokens. Default: lm_eval's (256)."}
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda."})
    cache_dir: str = field(default="cache/bench", metadata={"help": "datasets' cache of the benchmark files."})
    log_samples: bool = field(default=False, metadata={"help": "Keep every prompt and answer in raw/*.json."})


def checkpoint_labels(paths: list[str]) -> list[str]:
    """Column names: the folder name, with as many parent folders as it takes to tell it from the others."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        labels = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depth[i] < len(parts[i])]
        if not clashes:
            return labels
        for i in clashes:
            depth[i] += 1


def check_arguments(args: BenchArguments) -> list[bool]:
    """Refuse what would fail deep inside lm_eval, or silently mean something else, naming the argument; return
    whether each checkpoint is scored through its chat template."""
    if args.limit is not None and not (0 < args.limit < 1 or (args.limit >= 1 and float(args.limit).is_integer())):
        raise SystemExit(
            f"--limit {args.limit:g}: give a whole number of questions (1 or more) per task and subject, "
            "or a fraction between 0 and 1"
        )
    seen: dict[Path, str] = {}
    for path in args.model_name_or_path:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise SystemExit(f"--model_name_or_path: {path} is the same checkpoint as {seen[resolved]}: list it once")
        seen[resolved] = path
    chat = [{"chat": True, "raw": False}.get(args.mode, is_chat_checkpoint(path)) for path in args.model_name_or_path]
    problems = []
    for path, templated in zip(args.model_name_or_path, chat):
        try:
            check_checkpoint(path, chat_template=templated)
        except CheckpointError as err:
            problems.append(str(err))
    if problems:
        raise SystemExit("--model_name_or_path: not a checkpoint to benchmark:\n  " + "\n  ".join(problems))
    return chat


def silent_bar(bar, *args, **kwargs):
    """``bar(...)`` never drawn, whatever ``disable`` its caller passes."""
    return bar(*args, **{**kwargs, "disable": True})


@contextmanager
def quiet_lm_eval() -> Iterator[None]:
    """Keep lm_eval's warnings and the one bar that measures the run (the requests being scored); silence the rest.

    Otherwise a run prints a log line per task and subject, and a bar for every split datasets builds, every task's
    prompts and every weight file: ~160 lines before the table. lm_eval draws its per-task and tokenizing bars with
    no option to turn them off, so those modules' ``tqdm`` is swapped for a silent one while this runs, and restored
    after (the bar of the requests being scored lives in lm_eval's model module and stays)."""
    import datasets
    import lm_eval.api.model as lm_eval_model
    import lm_eval.api.task as lm_eval_task
    from transformers.utils import logging as transformers_logging

    lm_eval_logger = logging.getLogger("lm_eval")
    level, bar = lm_eval_logger.level, lm_eval_task.tqdm
    datasets_bars = not datasets.are_progress_bars_disabled()
    transformers_bars = transformers_logging.is_progress_bar_enabled()
    lm_eval_logger.setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    lm_eval_task.tqdm = lm_eval_model.tqdm = partial(silent_bar, bar)
    try:
        yield
    finally:
        lm_eval_logger.setLevel(level)
        lm_eval_task.tqdm = lm_eval_model.tqdm = bar
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            transformers_logging.enable_progress_bar()


def coverage(bench: str, task: LocalTask, docs: int, limit: int | float | None) -> dict:
    """Whether ``bench`` was scored on its whole evaluation split, and if not, why, in words: a --limit, missing
    subjects, or fewer questions than the split holds (its size as the Hub listing records it)."""
    reasons = []
    if limit is not None:
        reasons.append(f"--limit {limit:g}")
    if task.all_subjects and len(task.subjects) < task.all_subjects:
        reasons.append(f"{len(task.subjects)} of {task.all_subjects} subjects")
    full = full_docs(bench)
    if full is not None and docs != full:
        reasons.append(f"{docs:,} of {full:,} questions")
    return {"full": not reasons, "reasons": reasons, "docs": docs, "full_docs": full}


def random_guess(task_manager, names: dict[str, str], limit: int | float | None) -> dict[str, dict]:
    """Expected accuracy of a uniform guess over the documents lm_eval scores (same ``limit`` rule): the mean of
    1/number of choices, pooled over a group's subjects as the size-weighted group score is; 0 for generation."""
    from lm_eval.evaluator_utils import get_sample_size

    baseline = {}
    for bench, name in names.items():
        loaded = task_manager.load([name])
        total, count = 0.0, 0
        for leaf in loaded.get("group_map", {}).get(name, [name]):
            task = loaded["tasks"][leaf]
            docs = list(task.eval_docs)
            docs = docs[: get_sample_size(task, limit) or len(docs)]
            count += len(docs)
            if task.OUTPUT_TYPE == "multiple_choice":
                total += sum(1.0 / len(task.doc_to_choice(doc)) for doc in docs)
        baseline[bench] = {"acc": total / count if count else 0.0, "n": count}
    return baseline


def scores(results: dict, name: str) -> dict:
    """Every metric lm_eval reports for a task or group: {"acc,none": {"value", "stderr"}, ...} plus docs scored."""
    row = results["results"][name]
    out = {}
    for key, value in row.items():
        metric, _, filter_name = key.partition(",")
        if filter_name and not metric.endswith("_stderr") and isinstance(value, (int, float)):
            stderr = row.get(f"{metric}_stderr,{filter_name}")
            out[key] = {"value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None}
    leaves = results.get("group_subtasks", {}).get(name) or [name]
    out["n"] = sum(results.get("n-samples", {}).get(leaf, {}).get("effective", 0) for leaf in leaves)
    return out


def run_bench(args: BenchArguments) -> dict:
    """Evaluate every checkpoint on every benchmark with data; write bench.json, bench.md and raw/; return the
    bench.json content."""
    chat_modes = check_arguments(args)
    # Everything is local (model folders, data files), so nothing may reach the network. datasets reads this when
    # lm_eval first imports it; the hub client read HF_HUB_OFFLINE at its own import (run.sh exports both).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import handle_non_serializable
    except ImportError as err:
        raise SystemExit("tools.bench needs lm-evaluation-harness: pip install -r requirements/bench.txt") from err
    out = Path(args.output_dir)
    try:
        local_tasks = write_task_yamls(args.data_dir, out / "tasks", list(dict.fromkeys(args.tasks)), args.cache_dir)
    except DataError as err:
        raise SystemExit(f"bad benchmark data: {err}") from err
    names = {bench: task.name for bench, task in local_tasks.items()}
    if not names:
        raise SystemExit(
            f"no benchmark data under {args.data_dir}: run `bash prepare.sh --stage bench`, "
            "or use --data_dir mini_data/bench for the bundled examples"
        )
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    # Only our YAMLs are indexed (instant); their include: lines still reach lm_eval's built-in files.
    task_manager = TaskManager(include_path=str(out / "tasks"), include_defaults=False)
    device = resolve_device(args.device)
    dtype = str(inference_dtype(device)).removeprefix("torch.")
    with quiet_lm_eval():
        guess = random_guess(task_manager, names, limit)
    covered = {bench: coverage(bench, local_tasks[bench], guess[bench]["n"], limit) for bench in names}
    report = {
        "tasks": names,
        "data_dir": portable_path(str(Path(args.data_dir).resolve())),
        "arguments": as_jsonable(args),
        "versions": {**package_versions(), "lm_eval": metadata.version("lm_eval")},
        "git_commit": git_commit(),
        "random_guess": guess,
        # Whether each benchmark was scored on its full split, and the run as a whole, in words.
        "coverage": covered,
        "partial": not all(c["full"] for c in covered.values()),
        "note": coverage_note(covered),
        # What the table shows, so that it renders from bench.json alone (utils.evaluation.render_bench_table).
        "titles": {bench: SPECS[bench]["title"] for bench in names},
        "headline": {bench: SPECS[bench].get("headline", HEADLINE) for bench in names},
        "checkpoints": [],
        "results": {},
    }
    (out / "raw").mkdir(parents=True, exist_ok=True)
    labels = checkpoint_labels(args.model_name_or_path)
    for index, (path, label, chat) in enumerate(zip(args.model_name_or_path, labels, chat_modes), start=1):
        logger.info(
            "[%d/%d] %s: %s on %s (%s, %s)",
            index,
            len(labels),
            label,
            ", ".join(names),
            device,
            dtype,
            "chat template" if chat else "raw text",
        )
        start = time.perf_counter()
        with quiet_lm_eval():
            results = lm_eval.simple_evaluate(
                model="hf",
                model_args={"pretrained": path, "dtype": dtype},
                tasks=list(names.values()),
                task_manager=task_manager,
                num_fewshot=args.num_fewshot,
                batch_size=args.batch_size,
                device=device,
                limit=limit,
                log_samples=args.log_samples,
                apply_chat_template=chat,
                fewshot_as_multiturn=chat,  # lm_eval's default is True, which only makes sense with a template
                gen_kwargs={"max_gen_toks": args.max_gen_toks} if args.max_gen_toks else None,
            )
        seconds = time.perf_counter() - start
        raw = json.dumps(results, indent=1, default=handle_non_serializable, ensure_ascii=False)
        (out / "raw" / f"{label.replace('/', '__')}.json").write_text(raw, encoding="utf-8")
        report["checkpoints"].append(
            {
                "model_name_or_path": portable_path(str(Path(path).resolve())),
                "label": label,
                "chat": chat,
                "seconds": round(seconds, 1),
            }
        )
        report["results"][label] = {bench: scores(results, name) for bench, name in names.items()}
    (out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "bench.md").write_text(render_bench_table(report), encoding="utf-8")
    return report


def coverage_note(covered: dict[str, dict]) -> str:
    """The run's coverage in one sentence for bench.json and the table."""
    partial = {bench: c["reasons"] for bench, c in covered.items() if not c["full"]}
    if not partial:
        return "Every benchmark was scored on its full evaluation split."
    listed = "; ".join(f"{SPECS[bench]['title']}: {', '.join(reasons)}" for bench, reasons in partial.items())
    return (
        f"Not the full benchmark splits ({listed}): these scores are not comparable with published results, and "
        "none of them is marked above chance."
    )


def main(args: BenchArguments) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = run_bench(args)
    print(render_bench_table(report), flush=True)
    logger.info("Wrote %s and bench.md", Path(args.output_dir) / "bench.json")
    return report


if __name__ == "__main__":
    from utils.train.args import parse_args

    main(*parse_args((BenchArguments,)))
