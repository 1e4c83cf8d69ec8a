"""Finding and reading the parquet files of every stage.

The real datasets disagree between their own files (IndustryCorpus2's English files lack columns the
Chinese ones have; Infinity-Instruct's 7M and Gen subsets type ``id`` and ``label`` differently), so a
stage reads only the columns it needs, file by file, and never concatenates whole tables.

Bad input never ends in a library traceback: an unreadable file or page fails naming the file (and the
rows being read), a row whose text is not valid UTF-8 is handed to the caller as ``None`` so that it can be
skipped and counted.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

logger = logging.getLogger(__name__)

INVALID_UTF8 = "invalid UTF-8"
EMPTY_TEXT = "empty or null text"


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
    ``max_files_per_dir`` keeps the first N files (sorted) of each folder.
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


def files_fingerprint(files: Sequence[str | Path], *settings: str) -> str:
    """A cache key that changes when any input file (path, size, mtime) or any of ``settings`` changes."""
    h = hashlib.sha256("|".join(settings).encode())
    for f in map(Path, files):
        stat = f.stat()
        h.update(f"|{f.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def open_parquet(path: Path, columns: Sequence[str]) -> pq.ParquetFile:
    """Open ``path`` and check it has ``columns``; a corrupt or non-parquet file fails naming it."""
    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from err
    missing = [c for c in columns if c not in handle.schema_arrow.names]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {handle.schema_arrow.names}")
    return handle


def check_text_column(path: Path, column: str) -> None:
    """The column must hold strings: numbers, bytes or lists would otherwise look like empty rows."""
    kind = open_parquet(path, [column]).schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise DataError(f"{path}: column {column!r} holds {kind}, not text (string)")


def _decode(batch: pa.RecordBatch) -> list[dict | None]:
    """Rows of a batch as dicts; a row with invalid UTF-8 becomes None instead of failing the batch."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        rows: list[dict | None] = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).to_pylist()[0])
            except UnicodeDecodeError:
                rows.append(None)
        return rows


def iter_batches(path: Path, columns: Sequence[str], batch_size: int = 1024) -> Iterator[tuple[int, list]]:
    """``(index of the first row, rows)`` for ``columns`` of one file, batch by batch, in bounded memory.

    A row is a dict, or None when its text is not valid UTF-8. A corrupt page fails naming the file and rows."""
    handle = open_parquet(path, columns)
    start = 0
    batches = handle.iter_batches(batch_size=batch_size, columns=list(columns))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: unreadable data after row {start} ({err})") from err
        yield start, _decode(batch)
        start += batch.num_rows


def read_rows(paths: Sequence[Path], columns: Sequence[str]) -> Iterator[tuple[Path, int, dict | None]]:
    """Yield ``(file, row_index, {column: value} or None for invalid UTF-8)`` for every row of every file."""
    for path in paths:
        for start, rows in iter_batches(path, columns):
            for offset, record in enumerate(rows):
                yield path, start + offset, record


def heldout_fraction(text: str) -> float:
    """A number in [0, 1) fixed by the text alone: ``heldout_fraction(t) < share`` holds out a ``share`` of any
    collection, the same texts in every process, every run and whatever the file order, so training (which
    leaves them out) and evaluation (which scores only them) agree on what was never trained on."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# Columns that hold ids and labels, not text (what a tokenizer learns from).
NON_TEXT_COLUMNS = ("id", "_id", "label")


def iter_strings(data_dir: str | Path) -> Iterator[str]:
    """Every string value (nested ones included) of every text column of every parquet file below ``data_dir``:
    what the demo tokenizer learns from."""

    def strings(value) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)

    for path in find_parquet_files(data_dir):
        columns = [f.name for f in open_parquet(path, []).schema_arrow if f.name not in NON_TEXT_COLUMNS]
        for _, _, record in read_rows([path], columns):
            yield from strings(record)


class SkipCounter(Counter):
    """Rows skipped per reason; logged once at the end so nothing is dropped silently. The first few skipped
    rows of each reason are remembered (file and row) so the log can point at them."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.examples: dict[str, list[str]] = {}

    def skip(self, reason: str, where: str | None = None) -> None:
        self[reason] += 1
        if where is not None and len(self.examples.setdefault(reason, [])) < 3:
            self.examples[reason].append(where)

    def log(self, what: str, total: int) -> None:
        kept = total - sum(self.values())
        if self:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.most_common())
            logger.warning("%s: kept %d of %d rows; skipped %s", what, kept, total, reasons)
            for reason, where in self.examples.items():
                logger.warning("  %s, e.g. %s", reason, "; ".join(where))
        else:
            logger.info("%s: kept all %d rows", what, total)
