"""The curation pipeline as datatrove stages, run by its local or Slurm executor.

    1 filter    (N tasks)  read rows -> token count -> row check -> quality columns -> heuristics -> ledger
                           -> exact-dedup signature
    2 exact     (1 task)   find exact duplicates across all tasks' signatures
    3 sign      (N tasks)  read rows -> skip what 1 removed -> drop exact duplicates -> decontamination
                           -> MinHash signatures
    4 buckets   (B tasks)  one per LSH band: documents whose band signatures match
    5 cluster   (1 task)   union-find over those pairs; all but one per cluster are removed
    6 write     (N tasks)  read rows -> skip what 1 and 3 removed -> drop near-duplicates -> curated copy
    7 report    (1 task)   curation_report.md from the ledger

Stages 3 and 6 read the input again instead of an intermediate copy of the corpus: parquet reading is cheap and
the skip lists come from the ledger. datatrove's dedup stages find a document by its index in the stream a task
saw, so every pass must see the same documents in the same order: the same file list (``files.txt``), the same
number of tasks, and the same removals skipped.

Every stage keeps datatrove's logs, stats and completion markers under ``work_dir/logs/<stage>``: an interrupted
run resumes where it stopped (finished tasks are not run again).
"""

from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter

from tools.curate.documents import (
    LedgerWriter,
    MirrorWriter,
    RowCheck,
    RowReader,
    SkipRemoved,
    TokenCounter,
    exact_content,
)
from tools.curate.filters import (
    DecontaminationFilter,
    HeuristicFilter,
    MinhashSignature,
    QualityFilter,
    minhash_config,
)
from tools.curate.recipe import CurateArguments
from utils import REPO_ROOT

logger = logging.getLogger(__name__)

# Ledger folders of the removal steps, in pipeline order; "passed" holds the documents that got through the
# per-document filters, "kept" those written to the curated copy.
REMOVAL_STEPS = ["rows", "quality", "heuristics", "exact_duplicate", "decontamination", "near_duplicate"]
STEP_TITLES = {
    "rows": "unusable rows",
    "quality": "quality columns",
    "heuristics": "text heuristics",
    "exact_duplicate": "exact duplicates",
    "decontamination": "benchmark overlap",
    "near_duplicate": "near-duplicates",
}

# What one document is, per kind of input.
DOCUMENT_NAMES = {"pt": "document", "sft": "conversation", "dpo": "preference pair"}


def applied_steps(recipe: CurateArguments) -> list[str]:
    """The removal steps this recipe runs, in order."""
    skipped = set()
    if recipe.kind != "pt":
        skipped |= {"quality", "heuristics"}
    elif not recipe.quality_bounds():
        skipped.add("quality")
    if not recipe.decontaminate:
        skipped.add("decontamination")
    return [step for step in REMOVAL_STEPS if step not in skipped]


def build_stages(recipe: CurateArguments, paths_file: str, tasks: int, report_step) -> list[tuple[str, list, int]]:
    """``[(stage name, pipeline steps, tasks)]`` in the order they run (see the module docstring)."""
    work = recipe.work_dir
    ledger = partial(
        LedgerWriter, work, examples_per_reason=recipe.examples_per_reason, example_chars=recipe.example_chars
    )
    exact = ExactDedupConfig(content_getter=exact_content)
    minhash = minhash_config(recipe)

    def read(keep_row: bool = False) -> RowReader:
        return RowReader(recipe.input_dir, paths_file, recipe.kind, keep_row=keep_row)

    filters = [read()]
    if recipe.token_sample_every:  # first, so that removed documents are counted too
        filters.append(TokenCounter(recipe.tokenizer_name_or_path, recipe.token_sample_every))
    filters.append(RowCheck(exclusion_writer=ledger("rows")))
    if recipe.kind == "pt":
        if recipe.quality_bounds():
            filters.append(QualityFilter(recipe.quality_bounds(), exclusion_writer=ledger("quality")))
        filters.append(HeuristicFilter(recipe, exclusion_writer=ledger("heuristics")))
    filters += [ledger("passed", hash_text=True), ExactDedupSignature(f"{work}/exact/signatures", config=exact)]

    find_exact = [ExactFindDedups(f"{work}/exact/signatures", f"{work}/exact/duplicates", config=exact)]

    sign = [
        read(),
        SkipRemoved(work, REMOVAL_STEPS[:3]),
        ExactDedupFilter(
            f"{work}/exact/duplicates",
            config=exact,
            exclusion_writer=ledger("exact_duplicate", reason="exact duplicate"),
        ),
    ]
    if recipe.decontaminate:
        sign.append(
            DecontaminationFilter(f"{work}/decont", recipe.decont_ngram, exclusion_writer=ledger("decontamination"))
        )
    sign.append(MinhashSignature(f"{work}/minhash/signatures", config=minhash))

    buckets = [MinhashDedupBuckets(f"{work}/minhash/signatures", f"{work}/minhash/buckets", config=minhash)]
    cluster = [
        MinhashDedupCluster(
            f"{work}/minhash/buckets", f"{work}/minhash/clusters", config=minhash, save_cluster_id=True
        )
    ]
    write = [
        read(keep_row=True),
        SkipRemoved(work, REMOVAL_STEPS[:5]),
        MinhashDedupFilter(
            f"{work}/minhash/clusters",
            load_cluster_ids=True,
            exclusion_writer=ledger("near_duplicate", reason="near duplicate"),
        ),
        ledger("kept"),
        MirrorWriter(recipe.input_dir, recipe.output_dir),
    ]
    return [
        ("1_filter", filters, tasks),
        ("2_exact", find_exact, 1),
        ("3_sign", sign, tasks),
        ("4_buckets", buckets, recipe.minhash_buckets),
        ("5_cluster", cluster, 1),
        ("6_write", write, tasks),
        ("7_report", [report_step], 1),
    ]


def slurm_environment(recipe: CurateArguments) -> str:
    """What each Slurm task runs first: the recipe's command, else this interpreter's environment plus the repository
    on PYTHONPATH (datatrove's task launcher is a console script, so the working directory is not on sys.path, and
    the pipeline's steps are classes of this repository)."""
    if recipe.slurm_env_command:
        return recipe.slurm_env_command
    activate = f"source {sys.prefix}/bin/activate && " if sys.prefix != sys.base_prefix else ""
    return f"{activate}export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"


def chain_executors(recipe: CurateArguments, stages: list[tuple[str, list, int]]):
    """One executor per stage, each depending on the previous; running the last one runs them all."""
    logs = Path(recipe.work_dir) / "logs"
    previous = None
    for name, pipeline, tasks in stages:
        if recipe.executor == "local":
            previous = LocalPipelineExecutor(
                pipeline,
                tasks=tasks,
                workers=min(recipe.workers, tasks),
                logging_dir=str(logs / name),
                depends=previous,
            )
        else:
            previous = SlurmPipelineExecutor(
                pipeline,
                tasks=tasks,
                time=recipe.slurm_time,
                partition=recipe.slurm_partition,
                cpus_per_task=recipe.slurm_cpus_per_task,
                mem_per_cpu_gb=recipe.slurm_mem_per_cpu_gb,
                job_name=f"curate_{recipe.kind}_{name}",
                env_command=slurm_environment(recipe),
                logging_dir=str(logs / name),
                slurm_logs_folder=str(logs / "slurm" / name),
                depends=previous,
            )
    return previous
