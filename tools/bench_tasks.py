"""lm-evaluation-harness task configs that read the LOCAL benchmark files (``prepare.sh --stage bench``, or the
fixtures in ``mini_data/bench``), so that evaluation never touches the network.

    write_task_yamls("data/bench", "results/bench/tasks", ["ceval", "arc_easy"])
    # -> {"ceval": LocalTask("local_ceval", [52 subjects], 52), "arc_easy": LocalTask("local_arc_easy")},
    #    plus one YAML per task/subject in that folder

Each generated task ``include:``s lm_eval's own built-in YAML by absolute path, so prompts, choices, targets,
few-shot rules, metrics and ``process_docs`` stay exactly lm_eval's; only where the data comes from changes::

    dataset_path: parquet
    dataset_name: null
    dataset_kwargs: {data_files: {<split>: [/abs/file, ...]}, cache_dir: /abs/cache}

Paths are written absolute and the YAMLs generated at run time: lm_eval hands ``data_files`` unchanged to
``datasets.load_dataset``, which resolves a relative path against the process's working directory, not the YAML's.
Benchmarks with subjects (C-Eval, CMMLU, MMLU) become a group of the subjects found on disk, averaged by size
as lm_eval's own groups are. Every file is checked first (readable parquet, the columns lm_eval reads, an answer
each row can be scored by), so that bad data fails naming the file and row instead of deep inside lm_eval.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tools.bench_data import hub_listing
from utils.data.parquet import DataError, open_parquet, read_rows

logger = logging.getLogger(__name__)

PREFIX = "local_"  # never the name of a built-in task, so the two cannot be confused
# GSM8K generates up to 256 tokens per question (1,319 questions): hours on a CPU, so it is asked for by name.
DEFAULT_TASKS = ("ceval", "cmmlu", "mmlu", "arc_easy", "arc_challenge", "hellaswag")

LETTERS = ("A", "B", "C", "D")

# Per benchmark: its name in tables, the download folder under data_dir (whose hub_listings/<folder>.json records
# the full split sizes), the built-in YAML (or a glob of per-subject YAMLs), the split names that YAML uses mapped to
# globs under data_dir ({s} = the subject, the built-in's dataset_name), the split lm_eval scores, the metric a table
# shows ("acc,none" unless said), the columns lm_eval's prompt and target read, and how a row's answer is checked
# (see answer_problem): a bad answer would otherwise stop lm_eval with "None is not in list" or a KeyError.
SPECS: dict[str, dict] = {
    "ceval": {  # ceval/ceval-exam: lm_eval's C-Eval task scores val
        "title": "C-Eval (val)",
        "folder": "ceval",
        "subjects": "ceval/ceval-valid_*.yaml",
        "splits": {"val": ["ceval/{s}/val-*.parquet"], "dev": ["ceval/{s}/dev-*.parquet"]},
        "eval_split": "val",
        "metrics": ["acc", "acc_norm"],
        "columns": ["question", "A", "B", "C", "D", "answer"],
        "answer": ("letter", "answer"),
    },
    "cmmlu": {  # haonan-li/cmmlu: the release's CSVs, made all-string parquet by tools.bench_data
        "title": "CMMLU",
        "folder": "cmmlu",
        "subjects": "cmmlu/cmmlu_*.yaml",
        "splits": {"test": ["cmmlu/{s}/test-*.parquet"], "dev": ["cmmlu/{s}/dev-*.parquet"]},
        "eval_split": "test",
        "metrics": ["acc", "acc_norm"],
        "columns": ["Question", "A", "B", "C", "D", "Answer"],
        "answer": ("letter", "Answer"),
    },
    "mmlu": {  # cais/mmlu
        "title": "MMLU",
        "folder": "mmlu",
        "subjects": "mmlu/default/mmlu_*.yaml",
        "splits": {"test": ["mmlu/{s}/test-*.parquet"], "dev": ["mmlu/{s}/dev-*.parquet"]},
        "eval_split": "test",
        "metrics": ["acc"],  # lm_eval's MMLU template declares acc only
        "columns": ["question", "choices", "answer"],
        "answer": ("index", "answer", "choices"),
    },
    "arc_easy": {  # allenai/ai2_arc
        "title": "ARC-Easy",
        "folder": "ai2_arc",
        "builtin": "arc/arc_easy.yaml",
        "splits": {s: [f"ai2_arc/ARC-Easy/{s}-*.parquet"] for s in ("train", "validation", "test")},
        "eval_split": "test",
        "columns": ["question", "choices", "answerKey"],
        "answer": ("label", "answerKey", "choices"),
    },
    "arc_challenge": {
        "title": "ARC-Challenge",
        "folder": "ai2_arc",
        "builtin": "arc/arc_challenge.yaml",
        "splits": {s: [f"ai2_arc/ARC-Challenge/{s}-*.parquet"] for s in ("train", "validation", "test")},
        "eval_split": "test",
        "columns": ["question", "choices", "answerKey"],
        "answer": ("label", "answerKey", "choices"),
    },
    "hellaswag": {  # Rowan/hellaswag; the test split has no labels, lm_eval scores validation
        "title": "HellaSwag",
        "folder": "hellaswag",
        # acc_norm (log-likelihood per character) is what papers report: plain acc prefers the shortest ending.
        "headline": "acc_norm,none",
        "builtin": "hellaswag/hellaswag.yaml",
        "splits": {s: [f"hellaswag/**/{s}-*.parquet"] for s in ("train", "validation")},
        "eval_split": "validation",
        "columns": ["activity_label", "ctx_a", "ctx_b", "endings", "label"],
        "answer": ("ending", "label", "endings"),
    },
    "gsm8k": {  # openai/gsm8k, config main; 5-shot from train, generation scored by exact match
        "title": "GSM8K",
        "folder": "gsm8k",
        "headline": "exact_match,strict-match",  # the answer in GSM8K's own "#### N" form
        "builtin": "gsm8k/gsm8k.yaml",
        "splits": {"train": ["gsm8k/main/train-*.parquet"], "test": ["gsm8k/main/test-*.parquet"]},
        "eval_split": "test",
        "columns": ["question", "answer"],
        "answer": ("final", "answer"),
    },
}


@dataclass
class LocalTask:
    """One benchmark as lm_eval will run it: the task (or group) ``name``, and for benchmarks with subjects the
    ``subjects`` found on disk out of ``all_subjects`` (lm_eval's list)."""

    name: str
    subjects: list[str] = field(default_factory=list)
    all_subjects: int = 0


def answer_problem(rule: tuple, row: dict) -> str | None:
    """Why a row's answer cannot be scored, or None. ``rule`` is a SPECS "answer": ("letter", column) A-D,
    ("index", column, choices) an index into the choices, ("label", column, choices) one of the choices' labels,
    ("ending", column, endings) the number of one of the endings, ("final", column) a "#### N" final answer."""
    kind, column, *other = rule
    value = row[column]
    if kind == "letter" and value not in LETTERS:
        return f"{column} {value!r} is not one of {', '.join(LETTERS)}"
    if kind == "index" and not (isinstance(value, int) and 0 <= value < len(row[other[0]] or [])):
        return f"{column} {value!r} is not the index of one of the {len(row[other[0]] or [])} choices"
    if kind == "label" and value not in ((row[other[0]] or {}).get("label") or []):
        return f"{column} {value!r} is not one of the choice labels {(row[other[0]] or {}).get('label')}"
    if kind == "ending" and not (str(value).isdigit() and int(value) < len(row[other[0]] or [])):
        return f"{column} {value!r} is not the number of one of the {len(row[other[0]] or [])} endings"
    if kind == "final" and "####" not in str(value):
        return f"{column} has no final '#### <number>' line"
    return None


def check_files(spec: dict, files: dict[str, list[str]]) -> None:
    """Every file must be readable parquet with the columns lm_eval reads, and every row's answer scorable;
    otherwise ``DataError`` names the file, the row and what is wrong. Only the answer's columns are read by row."""
    paths = [Path(p) for split_files in files.values() for p in split_files]
    for path in paths:
        open_parquet(path, spec["columns"])
    _, *answer_columns = spec["answer"]
    for path, index, row in read_rows(paths, answer_columns):
        if row is None:
            raise DataError(f"{path}: row {index} is not valid UTF-8")
        problem = answer_problem(spec["answer"], row)
        if problem:
            raise DataError(f"{path}: row {index}: {problem}")


class TaskYamlLoader(yaml.SafeLoader):
    """Reads lm_eval's task YAMLs as data: ``!function`` values stay text (only split and subject names are read)."""


TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


def builtin_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def read_task_yaml(path: Path) -> dict:
    """A task YAML with its ``include:`` chain merged (keys of the including file win, as in lm_eval)."""
    config = yaml.load(path.read_text(encoding="utf-8"), Loader=TaskYamlLoader) or {}
    base = config.pop("include", None)
    return {**read_task_yaml(path.parent / base), **config} if base else config


def find_files(data_dir: Path, patterns: list[str], subject: str = "") -> list[str]:
    """Absolute paths of the files the first matching pattern finds (sorted), or []."""
    for pattern in patterns:
        hits = sorted(glob.glob(str(data_dir / pattern.format(s=subject)), recursive=True))
        if hits:
            return [str(Path(hit).resolve()) for hit in hits]
    return []


def task_config(name: str, builtin: Path, spec: dict, data_dir: Path, cache_dir: Path, subject: str = "") -> dict:
    """The YAML of one local task, or {} when its evaluation split has no file."""
    files = {split: find_files(data_dir, patterns, subject) for split, patterns in spec["splits"].items()}
    if not files[spec["eval_split"]]:
        return {}
    files = {split: paths for split, paths in files.items() if paths}
    check_files(spec, files)
    config = {
        "include": str(builtin),
        "task": name,
        "tag": [],  # otherwise a local MMLU subject joins lm_eval's mmlu_stem_tasks etc. under our name
        "dataset_path": "parquet",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": files, "cache_dir": str(cache_dir)},
    }
    base = read_task_yaml(builtin)
    for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
        split = base.get(key)
        if split and split not in files:
            config[key] = None  # a split lm_eval would ask the parquet builder for, and fail on
            if key == "fewshot_split":
                logger.warning("%s: no %r files; few-shot examples would come from the other splits", name, split)
    return config


def write_yaml(path: Path, config: dict) -> None:
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")


def write_task_yamls(
    data_dir: str | Path, out_dir: str | Path, tasks: list[str], cache_dir: str | Path | None = None
) -> dict[str, LocalTask]:
    """Write the local task YAMLs for ``tasks`` into ``out_dir`` (lm_eval's include_path); return
    {benchmark: its LocalTask} for the benchmarks that have data (the others are logged). Bad files fail with
    ``DataError`` (see check_files)."""
    unknown = sorted(set(tasks) - set(SPECS))
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {', '.join(SPECS)}")
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir)
    cache_dir = Path(cache_dir or out_dir / "cache").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.yaml"):  # every YAML in the include path is indexed, a stale one too
        stale.unlink()
    builtin_dir, names = builtin_tasks_dir(), {}
    for bench in tasks:
        spec = SPECS[bench]
        if "builtin" in spec:
            config = task_config(PREFIX + bench, builtin_dir / spec["builtin"], spec, data_dir, cache_dir)
            if config:
                write_yaml(out_dir / f"{PREFIX}{bench}.yaml", config)
                names[bench] = LocalTask(PREFIX + bench)
            else:
                logger.warning("%s: no %s files under %s; left out", bench, spec["eval_split"], data_dir)
            continue
        subjects = sorted(builtin_dir.glob(spec["subjects"]))
        found, found_subjects = [], []
        for builtin in subjects:
            subject = read_task_yaml(builtin)["dataset_name"]
            name = f"{PREFIX}{bench}_{subject}"
            config = task_config(name, builtin, spec, data_dir, cache_dir, subject)
            if config:
                write_yaml(out_dir / f"{name}.yaml", config)
                found.append(name)
                found_subjects.append(subject)
        if not found:
            logger.warning("%s: no subject files under %s; left out", bench, data_dir)
            continue
        if len(found) < len(subjects):
            logger.warning(
                "%s: %d of %d subjects found under %s; its score covers only those",
                bench,
                len(found),
                len(subjects),
                data_dir,
            )
        aggregate = [{"metric": m, "aggregation": "mean", "weight_by_size": True} for m in spec["metrics"]]
        group = {
            "group": PREFIX + bench,
            "task": found,
            "aggregate_metric_list": aggregate,
            "metadata": {"version": 1.0},
        }
        write_yaml(out_dir / f"_{PREFIX}{bench}.yaml", group)
        names[bench] = LocalTask(PREFIX + bench, found_subjects, len(subjects))
    return names


def full_docs(bench: str) -> int | None:
    """How many questions the full scored split of ``bench`` holds, as its Hub listing records it (None: not
    recorded)."""
    return hub_listing(SPECS[bench]["folder"])["eval_docs"].get(bench)
