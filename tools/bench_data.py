"""Benchmark data for ``prepare.sh --stage bench`` (``python -m tools.download --stage bench``): which Hugging Face
Hub datasets and files, and the normalisation after the download, so that every benchmark lands as parquet in the
layout ``tools.bench_tasks`` reads (``mini_data/bench`` holds a few original rows in the same layout)::

    bench/ceval/<subject>/{val,dev}-00000-of-00001.parquet                 ceval/ceval-exam
    bench/cmmlu/<subject>/{test,dev}-00000-of-00001.parquet                haonan-li/cmmlu (a zip of CSVs, converted)
    bench/mmlu/<subject>/{test,dev}-00000-of-00001.parquet                 cais/mmlu
    bench/ai2_arc/ARC-{Easy,Challenge}/{train,validation,test}-*.parquet   allenai/ai2_arc
    bench/hellaswag/data/{train,validation}-*.parquet                      Rowan/hellaswag
    bench/gsm8k/main/{train,test}-*.parquet                                openai/gsm8k

The ``hf`` command-line tool (huggingface_hub) downloads; it honours ``HF_ENDPOINT`` (a mirror) and ``HF_TOKEN``.
Files fetched some other way (the CMMLU or C-Eval zip from their project pages) are converted the same way::

    python -m tools.bench_data data/bench/cmmlu

Why CSVs are converted: datasets' csv reader lets pandas guess types, so an option "2" becomes 2.0 in a column
that also holds "0.5", and "NA" or "None" become null: the prompt would then read "A. 2.0" or "B. None". The hub's
own builds declare every field a string; reading with ``dtype=str, keep_default_na=False`` does the same.
"""

from __future__ import annotations

import logging
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

SHARD = "-00000-of-00001.parquet"
# folder under <data_dir>/bench -> (hub dataset, --include globs, --exclude globs). CMMLU's hub repo holds a zip of
# CSVs (its parquet globs are there in case the repo is ever converted).
BENCH_SOURCES: dict[str, tuple[str, list[str], list[str]]] = {
    "ceval": ("ceval/ceval-exam", ["*/val-*.parquet", "*/dev-*.parquet"], []),  # test answers are not public
    "cmmlu": ("haonan-li/cmmlu", ["*.zip", "*/test-*.parquet", "*/dev-*.parquet"], []),
    "mmlu": ("cais/mmlu", ["*/test-*.parquet", "*/dev-*.parquet"], ["all/*", "auxiliary_train/*"]),
    "ai2_arc": ("allenai/ai2_arc", ["ARC-Easy/*.parquet", "ARC-Challenge/*.parquet"], []),
    "hellaswag": ("Rowan/hellaswag", ["*train-*.parquet", "*validation-*.parquet"], []),
    "gsm8k": ("openai/gsm8k", ["main/*.parquet"], []),
}
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
