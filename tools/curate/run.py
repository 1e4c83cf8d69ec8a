"""Entry point of ``python -m tools.curate``: check the folders, list the input, build the decontamination index,
run the pipeline (``tools.curate.pipeline``) on the chosen executor."""

from __future__ import annotations

import json
import logging
import shutil
from functools import partial
from pathlib import Path

from tools.curate.filters import build_decont_index
from tools.curate.pipeline import build_stages, chain_executors
from tools.curate.recipe import CurateArguments
from tools.curate.report import report_step
from utils.data.parquet import find_parquet_files

logger = logging.getLogger(__name__)

# Arguments that change where or how fast the work runs, not its result: a run may resume under other values.
ENGINE_ONLY = {
    "overwrite",
    "workers",
    "executor",
    "slurm_partition",
    "slurm_time",
    "slurm_cpus_per_task",
    "slurm_mem_per_cpu_gb",
    "slurm_env_command",
}


def prepare_folders(recipe: CurateArguments) -> None:
    """Resume a run of the same recipe, refuse to mix two recipes in one work_dir, never overwrite a folder
    that this tool did not write unless asked."""
    work, output = Path(recipe.work_dir), Path(recipe.output_dir)
    saved = work / "recipe.json"
    wanted = {k: v for k, v in recipe.to_dict().items() if k not in ENGINE_ONLY}
    if recipe.overwrite:
        for folder in (work, output):
            shutil.rmtree(folder, ignore_errors=True)
    elif saved.is_file():
        before = {k: v for k, v in json.loads(saved.read_text()).items() if k not in ENGINE_ONLY}
        changed = sorted(k for k in wanted if before.get(k) != wanted[k])
        if changed:
            raise SystemExit(
                f"{work} holds a curation run with other settings ({', '.join(changed)}); "
                f"pass --overwrite true to start again, or choose another --work_dir"
            )
        logger.info("Resuming the run in %s (finished tasks are not run again)", work)
    elif output.exists() and any(output.iterdir()):
        raise SystemExit(
            f"{output} is not empty and was not written by a curation run with work_dir {work}; "
            f"pass --overwrite true to replace it"
        )
    if Path(recipe.input_dir).resolve() in (output.resolve(), *output.resolve().parents):
        raise SystemExit(f"output_dir {output} must not contain input_dir {recipe.input_dir}")
    work.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(recipe.to_dict(), indent=2))


def main(recipe: CurateArguments) -> dict | None:
    """Curate ``recipe.input_dir`` into ``recipe.output_dir``; return the report's summary (local executor)."""
    prepare_folders(recipe)
    work = Path(recipe.work_dir)
    files = find_parquet_files(recipe.input_dir)
    if not Path(recipe.input_dir).is_dir():
        raise SystemExit(f"input_dir must be a folder of parquet files, got the file {recipe.input_dir}")
    paths_file = work / "files.txt"
    paths_file.write_text("".join(f"{f.relative_to(recipe.input_dir)}\n" for f in files))
    tasks = min(recipe.tasks or len(files), len(files))
    logger.info(
        "Curating %d %s files from %s in %d tasks (%s executor)",
        len(files),
        recipe.kind,
        recipe.input_dir,
        tasks,
        recipe.executor,
    )
    if recipe.decontaminate:
        build_decont_index(recipe.bench_dir, recipe.decont_ngram, str(work / "decont"))
    stages = build_stages(recipe, str(paths_file), tasks, partial(report_step, recipe=recipe))
    chain_executors(recipe, stages).run()
    summary_file = Path(recipe.output_dir) / "curation_summary.json"
    if recipe.executor == "local":
        return json.loads(summary_file.read_text())
    logger.info("Submitted; the report will be %s", Path(recipe.output_dir) / "curation_report.md")
    return None
