"""Finding and reading the parquet files of every stage.

The real datasets disagree between their own files (IndustryCorpus2's English files lack columns the
Chinese ones have; Infinity-Instruct's 7M and Gen subsets type ``id`` and ``label`` differently), so a
stage reads only the columns it needs, file by file, and never concatenates whole tables.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data: the message names the file (and row where there is one)."""


def find_parquet_files(
    data_dir: str | Path,
    domains: Sequence[str] | None = None,
    languages: Sequence[str] | None = None,
    max_files_per_dir: int | None = None,
) -> list[Path]:
    """Every ``*.parquet`` below ``data_dir`` (any depth), sorted, optionally filtered.

    ``domains`` keeps files whose path contains one of these folder names (IndustryCorpus2's
    ``<domain>/<language>/high/`` layout); ``languages`` likewise for ``chinese``/``english``.
    ``max_files_per_dir`` keeps the first N files of each folder (upstream used the first 3 files of
    the largest English sets).
    """
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"data_dir does not exist: {root}")
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    rel = {f: f.relative_to(root).parts if root.is_dir() else f.parts for f in files}
    if domains:
        files = [f for f in files if set(domains) & set(rel[f][:-1])]
    if languages:
        files = [f for f in files if set(languages) & set(rel[f][:-1])]
    if max_files_per_dir:
        per_dir: Counter[Path] = Counter()
        kept = []
        for f in files:
            if per_dir[f.parent] < max_files_per_dir:
                kept.append(f)
                per_dir[f.parent] += 1
        files = kept
    if not files:
        filters = (
            f" (domains={list(domains or [])}, languages={list(languages or [])})" if domains or languages else ""
        )
        raise DataError(f"No parquet files found under {root}{filters}")
    return files


def open_parquet(path: Path, columns: Sequence[str]) -> pq.ParquetFile:
    """Open ``path`` and check it has ``columns``; a corrupt or non-parquet file fails naming it."""
    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from err
    missing = [c for c in columns if c not in handle.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {handle.schema_arrow.names}")
    return handle


def check_files(paths: Sequence[Path], columns: Sequence[str]) -> int:
    """Open every file before any work starts; returns the total row count."""
    return sum(open_parquet(p, columns).metadata.num_rows for p in paths)


def iter_column_batches(path: Path, column: str, batch_size: int = 1024) -> Iterator[list]:
    """Stream one column of one file as Python lists, batch by batch, in bounded memory."""
    handle = open_parquet(path, [column])
    try:
        for batch in handle.iter_batches(batch_size=batch_size, columns=[column]):
            yield batch.column(0).to_pylist()
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: failed while reading column {column!r} ({err})") from err


def read_rows(paths: Sequence[Path], columns: Sequence[str]) -> Iterator[tuple[Path, int, dict]]:
    """Yield ``(file, row_index, {column: value})`` for the given columns of every file."""
    for path in paths:
        handle = open_parquet(path, columns)
        row = 0
        for batch in handle.iter_batches(batch_size=1024, columns=list(columns)):
            for record in batch.to_pylist():
                yield path, row, record
                row += 1


class SkipCounter(Counter):
    """Rows skipped per reason; logged once at the end so nothing is dropped silently."""

    def log(self, what: str, total: int) -> None:
        kept = total - sum(self.values())
        if self:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.most_common())
            logger.warning("%s: kept %d of %d rows; skipped %s", what, kept, total, reasons)
        else:
            logger.info("%s: kept all %d rows", what, total)
