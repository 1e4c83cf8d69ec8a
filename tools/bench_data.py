"""Benchmark data for ``prepare.sh --stage bench`` (``python -m tools.download --stage bench``): which Hugging Face
Hub datasets, at which exact revision, which of their files, and the normalisation after the download, so that every
benchmark lands as parquet in the layout ``tools.bench_tasks`` reads (``mini_data/bench`` holds a few original rows
in the same layout)::

    bench/ceval/<subject>/{val,dev}-00000-of-00001.parquet                 ceval/ceval-exam
    bench/cmmlu/<subject>/{test,dev}-00000-of-00001.parquet                haonan-li/cmmlu (a zip of CSVs, converted)
    bench/mmlu/<subject>/{test,dev}-00000-of-00001.parquet                 cais/mmlu
    bench/ai2_arc/ARC-{Easy,Challenge}/{train,validation,test}-*.parquet   allenai/ai2_arc
    bench/hellaswag/data/{train,validation}-*.parquet                      Rowan/hellaswag
    bench/gsm8k/main/{train,test}-*.parquet                                openai/gsm8k

Why exact revisions: a Hub repository's layout changes under the same name. ``Rowan/hellaswag`` held only a loading
script on its main branch while its parquet files lived in a "Convert dataset to Parquet" commit, so globs written
against one layout matched nothing in the other. Each source names a commit, and ``hub_listings/<folder>.json``
records that commit's file names, the columns and the size of the scored split, each with where it was read (a
stored Hub page, a copy of a dataset card, public code that names the file) and what kind of record it is. The tests
replay those listings through the globs below and the task configs, so a glob that selects nothing fails in CI, not
on a user's first download.

The ``hf`` command-line tool (huggingface_hub) downloads; it honours ``HF_ENDPOINT`` (a mirror) and ``HF_TOKEN``.
Files fetched some other way (the CMMLU or C-Eval zip from their project pages) are converted the same way::

    python -m tools.bench_data data/bench/cmmlu

Why CSVs are converted: datasets' csv reader lets pandas guess types, so an option "2" becomes 2.0 in a column
that also holds "0.5", and "NA" or "None" become null: the prompt would then read "A. 2.0" or "B. None". The hub's
own builds declare every field a string; reading with ``dtype=str, keep_default_na=False`` does the same.
"""

from __future__ import annotations

import json
import logging
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

SHARD = "-00000-of-00001.parquet"
HUB_LISTINGS = Path(__file__).resolve().parent / "hub_listings"


@dataclass(frozen=True)
class BenchSource:
    """One benchmark folder's origin: a Hub dataset at an exact ``revision`` (a commit id) and the ``include`` /
    ``exclude`` globs that select what the task configs read (matched as ``hf download`` matches them: fnmatch, ``*``
    crosses folders). The evidence for the revision and its files is ``hub_listings/<folder>.json``."""

    repo: str
    revision: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()


BENCH_SOURCES: dict[str, BenchSource] = {
    # val (what lm_eval's C-Eval task scores) and dev (its few-shot examples), not the leaderboard's test split.
    "ceval": BenchSource(
        "ceval/ceval-exam", "617524a00b307ff6f9933702f724131fe12ca7ce", ("*/val-*.parquet", "*/dev-*.parquet")
    ),
    # The release zip of CSVs (converted after the download); the parquet globs take a converted build if one is there.
    "cmmlu": BenchSource(
        "haonan-li/cmmlu", "efcc940752ea4a1ea94d2727f11f83858d64fc8e", ("*.zip", "*/test-*.parquet", "*/dev-*.parquet")
    ),
    # Every subject's own folder; "all" repeats them and auxiliary_train is 100k training questions.
    "mmlu": BenchSource(
        "cais/mmlu",
        "c30699e8356da336a370243923dbaf21066bb9fe",
        ("*/test-*.parquet", "*/dev-*.parquet"),
        ("all/*", "auxiliary_train/*"),
    ),
    "ai2_arc": BenchSource(
        "allenai/ai2_arc",
        "210d026faf9955653af8916fad021475a3f00453",
        ("ARC-Easy/*.parquet", "ARC-Challenge/*.parquet"),
    ),
    # The "Convert dataset to Parquet" commit, known by its short id (hub_listings/hellaswag.json says how that
    # resolves); its test split has no labels.
    "hellaswag": BenchSource("Rowan/hellaswag", "9c75cc0", ("data/train-*.parquet", "data/validation-*.parquet")),
    "gsm8k": BenchSource("openai/gsm8k", "740312add88f781978c0658806c59bc2815b9866", ("main/*.parquet",)),
}


def hub_listing(folder: str) -> dict:
    """The recorded Hub listing of one benchmark folder (``hub_listings/<folder>.json``)."""
    return json.loads((HUB_LISTINGS / f"{folder}.json").read_text(encoding="utf-8"))


def expand_layout(layout: dict | None) -> list[str]:
    """The paths a listing's per-subject layout names: ``pattern`` filled with every subject and split."""
    if not layout:
        return []
    return [layout["pattern"].format(subject=s, split=split) for s in layout["subjects"] for split in layout["splits"]]


def listed_files(listing: dict) -> list[str]:
    """Every repository path of a recorded listing: its ``files`` plus those its ``subject_files`` layout derives."""
    return sorted({*listing["files"], *expand_layout(listing.get("subject_files"))})


# The folder a release CSV sits in names its split: <split>/<subject>.csv (CMMLU), <split>/<subject>_<split>.csv
# (C-Eval).
CSV_SPLITS = ("test", "dev", "val")


def csv_to_parquet(source: Path, target: Path) -> None:
    """One release CSV as parquet with every column a string, its unnamed index column dropped."""
    frame = pd.read_csv(source, dtype=str, keep_default_na=False, encoding="utf-8")
    columns = [c for c in frame.columns if not c.startswith("Unnamed:")]
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({c: pa.array(frame[c].tolist(), pa.string()) for c in columns}), target)


def normalize_bench_folder(folder: str | Path) -> list[Path]:
    """Unpack the zips in ``folder`` next to themselves, then write every ``<split>/<subject>[_<split>].csv`` as
    ``<subject>/<split>-00000-of-00001.parquet``. A parquet file already there (the hub's own build) is kept.
    Returns the files written; running it again writes nothing new."""
    folder = Path(folder)
    for archive in sorted(folder.rglob("*.zip")):
        with zipfile.ZipFile(archive) as bundle:  # extractall drops absolute and ".." parts of member names
            bundle.extractall(archive.parent)
    written = []
    for source in sorted(folder.rglob("*.csv")):
        split = source.parent.name
        if split not in CSV_SPLITS:
            continue
        target = folder / source.stem.removesuffix(f"_{split}") / f"{split}{SHARD}"
        if target.exists():
            continue
        csv_to_parquet(source, target)
        written.append(target)
    if written:
        logger.info("%s: %d CSV files converted to parquet", folder, len(written))
    return written


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in sys.argv[1:]:
        normalize_bench_folder(path)
