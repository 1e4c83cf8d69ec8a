"""What ``prepare.sh`` downloads from ModelScope, and the checks after every download.

    python -m tools.download --stage pt --data_dir data --domains news_media tourism_geography
    python -m tools.download --stage model sft dpo
    python -m tools.download --stage bench          # benchmark data from the Hugging Face Hub (tools.bench_data)

Every folder is downloaded, then verified (at least one file, every selected file present and not empty),
then described in ``MANIFEST.json`` next to the data (each file and its bytes), then marked ``.complete`` so a
re-run skips it. A download that leaves a folder empty is an error, not "complete". One folder failing does not stop
the others: the run ends with a list of what arrived and what did not (and exits with an error if anything did not).
Benchmarks come from the Hugging Face Hub at the exact revisions ``tools.bench_data`` names.

The PT subset is data (``configs/data/industrycorpus2.yaml``): each folder is listed on ModelScope, its parquet
names sorted, and all of them or the first N downloaded by exact name.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from tools.bench_data import BENCH_SOURCES, normalize_bench_folder
from utils import REPO_ROOT

logger = logging.getLogger(__name__)

PT_SUBSET = REPO_ROOT / "configs" / "data" / "industrycorpus2.yaml"
MODEL_REPO, MODEL_DIR = "Qwen/Qwen2.5-0.5B-Instruct", "models/Qwen2.5-0.5B-Instruct"
MODEL_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"]
SFT_REPO, SFT_SUBSETS = "BAAI/Infinity-Instruct", ["7M", "Gen"]
DPO_REPO = "BAAI/Infinity-Preference"
MANIFEST = "MANIFEST.json"
COMPLETE = ".complete"


class DownloadError(RuntimeError):
    """A download that did not give what was asked for."""


@dataclass
class Job:
    """One folder to fetch: ``repo`` files (exact names) or ``patterns``, into ``local_dir`` (the repo's root);
    ``folder`` is where they land, and what is verified and marked. ``hub="hf"`` downloads with the Hugging Face
    CLI instead of ModelScope's, at ``revision`` when one is given; ``after(folder)`` runs between the download and
    the checks."""

    repo: str
    repo_type: str
    local_dir: Path
    folder: Path
    files: list[str] | None = None
    patterns: list[str] | None = None
    suffix: str = ".parquet"
    excludes: tuple[str, ...] = ()
    hub: str = "modelscope"
    revision: str | None = None
    after: Callable[[Path], object] | None = None

    @property
    def source(self) -> str:
        return f"{self.repo}@{self.revision}" if self.revision else self.repo


def list_dataset_folder(repo: str, folder: str) -> list[str]:
    """Every file path under ``folder`` of a ModelScope dataset, as its own listing gives them (sorted)."""
    from modelscope.hub.api import HubApi

    api, paths, page = HubApi(), [], 1
    while True:
        entries = api.get_dataset_files(repo, root_path=folder, recursive=True, page_number=page, page_size=100)
        for entry in entries:
            kind = entry.get("Type") or entry.get("type") or "blob"
            path = entry.get("Path") or entry.get("path") or entry.get("Name")
            if kind != "tree" and path:
                paths.append(path.lstrip("/"))
        if len(entries) < 100:
            return sorted(paths)
        page += 1


def pt_jobs(data_dir: Path, domains: list[str] | None = None) -> list[Job]:
    """The PT subset: per domain and language, the sorted listing, all files or the first N."""
    subset = yaml.safe_load(PT_SUBSET.read_text())
    unknown = sorted(set(domains or []) - set(subset["domains"]))
    if unknown:
        raise DownloadError(f"unknown domain(s) {unknown}; {PT_SUBSET.name} lists {subset['domains']}")
    jobs = []
    for domain in domains or subset["domains"]:
        for language in subset["languages"]:
            folder = f"{domain}/{language}/{subset['quality']}"
            listed = [p for p in list_dataset_folder(subset["dataset"], folder) if p.endswith(".parquet")]
            if not listed:
                raise DownloadError(f"{subset['dataset']}: the listing of {folder} holds no parquet file")
            cap = subset.get("first_files", {}).get(language, {}).get(domain)
            chosen = listed[:cap] if cap else listed
            logger.info("%s: %d of %d files%s", folder, len(chosen), len(listed), f" (first {cap})" if cap else "")
            jobs.append(Job(subset["dataset"], "dataset", data_dir / "pt", data_dir / "pt" / folder, files=chosen))
    return jobs


def stage_jobs(stage: str, data_dir: Path, domains: list[str] | None) -> list[Job]:
    if stage == "model":
        root = REPO_ROOT / MODEL_DIR
        return [Job(MODEL_REPO, "model", root, root, files=MODEL_FILES, suffix=".json")]
    if stage == "pt":
        return pt_jobs(data_dir, domains)
    if stage == "sft":
        return [
            Job(SFT_REPO, "dataset", data_dir / "sft", data_dir / "sft" / s, patterns=[f"{s}/*"]) for s in SFT_SUBSETS
        ]
    if stage == "dpo":
        return [Job(DPO_REPO, "dataset", data_dir / "dpo", data_dir / "dpo", patterns=["*.parquet", "data/*"])]
    if stage == "bench":
        return [
            Job(
                source.repo,
                "dataset",
                data_dir / "bench" / name,
                data_dir / "bench" / name,
                patterns=list(source.include),
                excludes=source.exclude,
                hub="hf",
                revision=source.revision,
                after=normalize_bench_folder,
            )
            for name, source in BENCH_SOURCES.items()
        ]
    raise DownloadError(f"unknown stage {stage!r}")


def fetch(job: Job, modelscope: str, hf: str = "hf") -> None:
    """Download one job (skipped when already complete at the same revision), verify it and write its manifest."""
    if (job.folder / COMPLETE).is_file():
        recorded = json.loads((job.folder / MANIFEST).read_text(encoding="utf-8")).get("revision")
        if recorded == job.revision:
            logger.info("%s already complete, skipping", job.folder)
            return
        # Another revision's files would be read alongside the new ones (the task configs glob the folder).
        logger.warning(
            "%s holds %s at %s, %s is pinned now: replacing its files",
            job.folder,
            job.repo,
            recorded or "an unrecorded revision",
            job.revision,
        )
        remove_download(job.folder)
    job.folder.mkdir(parents=True, exist_ok=True)
    if job.hub == "hf":  # hf takes one glob per --include/--exclude
        command = [hf, "download", job.repo, *(job.files or []), "--repo-type", job.repo_type]
        command += ["--revision", job.revision] if job.revision else []
        command += [arg for glob in job.patterns or [] for arg in ("--include", glob)]
        command += [arg for glob in job.excludes for arg in ("--exclude", glob)]
    else:
        command = [modelscope, "download", "--repo-type", job.repo_type, job.repo, *(job.files or [])]
        command += ["--include", *job.patterns] if job.patterns else []
    command += ["--local-dir", str(job.local_dir)]
    logger.info("%s", " ".join(command))
    subprocess.run(command, check=True)
    if job.after:
        job.after(job.folder)
    write_manifest(job)
    (job.folder / COMPLETE).touch()


def remove_download(folder: Path) -> None:
    """Delete the files a folder's manifest lists (what an earlier download left), then the manifest and marker."""
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    for entry in manifest["files"]:
        (folder / entry["name"]).unlink(missing_ok=True)
    (folder / MANIFEST).unlink()
    (folder / COMPLETE).unlink()


def write_manifest(job: Job) -> dict:
    """Check what landed in the folder and record it; raise ``DownloadError`` when something is missing."""
    paths = [job.local_dir / f for f in job.files or []]
    missing = [str(p.relative_to(job.local_dir)) for p in paths if not p.is_file() or not p.stat().st_size]
    if missing:
        raise DownloadError(
            f"{job.source}: {len(missing)} requested file(s) missing or empty after the download: {missing[:5]}"
        )
    found = sorted(p for p in job.folder.rglob(f"*{job.suffix}") if p.is_file() and p.name != MANIFEST)
    if not found:
        raise DownloadError(
            f"{job.source}: nothing matching *{job.suffix} arrived in {job.folder}; the folder is "
            "left incomplete so that the next run downloads it again"
        )
    files = [{"name": p.relative_to(job.folder).as_posix(), "bytes": p.stat().st_size} for p in found]
    manifest = {"repo": job.repo, "revision": job.revision, "requested": job.files or job.patterns, "files": files}
    manifest["bytes"] = sum(f["bytes"] for f in manifest["files"])
    (job.folder / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    logger.info("%s: %d files, %.1f MB", job.folder, len(found), manifest["bytes"] / 1e6)
    return manifest


def cut_samples(data_dir: Path, mini_dir: Path, rows: int = 100) -> None:
    """``rows``-row samples of every parquet file, in the same layout (like upstream's save_mini_data)."""
    for path in sorted(data_dir.rglob("*.parquet")):
        out = mini_dir / path.relative_to(data_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        table = pq.ParquetFile(path).read_row_group(0)
        pq.write_table(table.slice(0, rows), out)
        logger.info("%s: %d rows", out, min(rows, table.num_rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--stage",
        nargs="+",
        default=["model", "pt", "sft", "dpo"],
        choices=["model", "pt", "sft", "dpo", "bench"],
        help="What to fetch.",
    )
    parser.add_argument("--data_dir", default="data", help="Where the datasets go.")
    parser.add_argument("--domains", nargs="*", default=None, help="PT domains (default: all of the subset).")
    parser.add_argument("--modelscope", default="modelscope", help="The ModelScope command-line tool.")
    parser.add_argument(
        "--hf",
        default=shutil.which("hf", path=str(Path(sys.executable).parent)) or "hf",
        help="The Hugging Face command-line tool (--stage bench); default: this venv's.",
    )
    parser.add_argument("--mini_dir", default=None, help="Also write 100-row samples of every file here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[prepare] %(message)s")
    data_dir = Path(args.data_dir)
    arrived, failed = [], []
    for stage in args.stage:
        try:
            jobs = stage_jobs(stage, data_dir, args.domains)
        except DownloadError as err:
            failed.append((stage, str(err)))
            continue
        for job in jobs:
            try:
                fetch(job, args.modelscope, args.hf)
            except (DownloadError, subprocess.CalledProcessError, OSError) as err:
                logger.error("%s: %s", job.folder, failure_reason(err))
                failed.append((str(job.folder), failure_reason(err)))
            else:
                arrived.append(job)
    log_summary(arrived, failed)
    if args.mini_dir:
        cut_samples(data_dir, Path(args.mini_dir))
    if failed:
        raise SystemExit(f"prepare: {len(failed)} download(s) did not arrive: {', '.join(name for name, _ in failed)}")


def failure_reason(err: Exception) -> str:
    """One line for the summary; a failed command already printed its own message above it."""
    if isinstance(err, subprocess.CalledProcessError):
        return f"`{' '.join(map(str, err.cmd[:3]))} ...` exited with status {err.returncode} (its message is above)"
    return str(err)


def log_summary(arrived: list[Job], failed: list[tuple[str, str]]) -> None:
    """What arrived (files, megabytes, from where) and what did not (why), at the end of the run."""
    logger.info("summary: %d arrived, %d did not", len(arrived), len(failed))
    for job in arrived:
        manifest = json.loads((job.folder / MANIFEST).read_text(encoding="utf-8"))
        logger.info(
            "  arrived  %s: %d files, %.1f MB from %s",
            job.folder,
            len(manifest["files"]),
            manifest["bytes"] / 1e6,
            job.source,
        )
    for name, reason in failed:
        logger.info("  MISSING  %s: %s", name, reason)


if __name__ == "__main__":
    main()
