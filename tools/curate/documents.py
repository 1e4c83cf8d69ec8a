"""Rows in and out of the pipeline: the reader, the row check, the ledger, and the writer of the curated copy.

Every input row becomes a datatrove ``Document`` whose id is ``<relative path>#<row>``: rows the stages would
skip (invalid UTF-8, empty text, a conversation the SFT stage refuses...) are flagged, not dropped, so that the
row check counts them under the stage's own reason. A file the stages could not read at all (not parquet, a text
column that holds numbers) stops the run with a ``DataError`` naming the file, as the stages do.

The *ledger* is how nothing is dropped silently: every step that removes documents hands them to a
``LedgerWriter`` (datatrove's ``exclusion_writer``), which writes one row per document with the step, the reason
and the document's measures; the documents that pass the per-document filters get a row too. Later passes read
the ledger to skip what earlier passes removed, and the report is computed from it alone.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import lru_cache
from pathlib import Path
from string import Template

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers.parquet import ParquetReader
from datatrove.pipeline.writers.parquet import ParquetWriter
from datatrove.utils.batching import batched

from tools.curate.recipe import QUALITY_BOUNDS
from tools.curate.words import is_chinese, split_words
from utils.data.parquet import EMPTY_TEXT, INVALID_UTF8, DataError, check_text_column, iter_batches, open_parquet

logger = logging.getLogger(__name__)

# The column each kind of input must have.
REQUIRED_COLUMNS = {"pt": ["text"], "sft": ["conversations"], "dpo": ["chosen", "rejected"]}
LANGUAGE_FOLDERS = ("chinese", "english")

MEASURES = ["words", "symbol_ratio", "duplicate_line_fraction", "top_ngram_fraction", "duplicated_ngram_fraction"]
LEDGER_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("row", pa.int64()),
        ("source_id", pa.string()),
        ("domain", pa.string()),
        ("language", pa.string()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("chars", pa.int64()),
        ("bytes", pa.int64()),
        ("tokens", pa.int64()),
        ("text_hash", pa.string()),
        ("cluster", pa.int64()),
        ("example", pa.string()),
    ]
    + [(column, pa.float64()) for column in QUALITY_BOUNDS]
    + [(measure, pa.float64()) for measure in MEASURES]
)


def domain_and_language(relpath: str, text: str) -> tuple[str, str]:
    """IndustryCorpus2's ``<domain>/<language>/<quality>/file``: the first folder is the domain, and a folder named
    chinese or english gives the language. Without such a folder, the script decides (``words.is_chinese``)."""
    parts = Path(relpath).parts[:-1]
    domain = parts[0] if parts else "."
    language = next((p for p in parts if p in LANGUAGE_FOLDERS), None)
    if language is None:
        language = "chinese" if is_chinese(split_words(text)) else "english"
    return domain, language


def exact_content(doc: Document) -> bytes:
    """What makes two documents exact duplicates: the same text up to whitespace."""
    return " ".join(doc.text.split()).encode("utf-8")


def _chat_text(kind: str, row: dict) -> str:
    """The text of a conversation or a preference pair that dedup and decontamination look at, parsed by the
    stages' own functions: a row they would skip raises their ``SkipRow`` with their reason.

    Imported here rather than at the top: the DPO module loads torch and TRL, seconds in every worker process,
    which PT curation never needs."""
    from utils.data.chat import conversation_to_messages
    from utils.data.dpo import preference_pair

    if kind == "sft":
        return "\n".join(m["content"] for m in conversation_to_messages(row["conversations"]))
    pair = preference_pair(row, tokenizer=None)
    return "\n".join(m["content"] for m in (*pair.prompt, *pair.chosen, *pair.rejected))


def _skip_reason(kind: str, row: dict | None) -> tuple[str, str]:
    """``(text, "")`` for a usable row, ``("", reason)`` for one the stages would skip."""
    if row is None:
        return "", INVALID_UTF8
    if kind == "pt":
        text = row["text"]
        return ("", EMPTY_TEXT) if text is None or not text.strip() else (text, "")
    from utils.data.chat import SkipRow

    try:
        return _chat_text(kind, row), ""
    except SkipRow as reason:
        return "", str(reason)


def make_document(kind: str, relpath: str, index: int, row: dict | None, keep_row: bool) -> Document:
    """One input row as a Document; ``metadata["bad"]`` holds the reason when the stages would skip it."""
    metadata = {"path": relpath, "row": index, "bad": "", "source_id": "", "domain": "", "language": ""}
    try:
        text, metadata["bad"] = _skip_reason(kind, row)
    except (TypeError, AttributeError, KeyError) as err:
        what = "conversation" if kind == "sft" else "preference row"
        raise DataError(f"{relpath}, row {index}: malformed {what} ({err!r})") from err
    if metadata["bad"]:  # the row as read stands in for the text in the report's examples
        metadata["raw"] = "(not valid UTF-8)" if row is None else str(row)
    if row is not None:
        source_id = row.get("_id", row.get("id"))
        metadata["source_id"] = "" if source_id is None else str(source_id)
        for column in QUALITY_BOUNDS:
            if column in row:
                metadata[column] = row[column]
        if keep_row:
            metadata["columns"] = row
    metadata["domain"], metadata["language"] = domain_and_language(relpath, text)
    return Document(text=text, id=f"{relpath}#{index}", metadata=metadata)


class RowReader(ParquetReader):
    """Every row of the listed input files, bad ones included (flagged in ``metadata["bad"]``).

    Files are listed once, the way PT lists them (``utils.data.parquet.find_parquet_files``), into ``paths_file``;
    datatrove gives task ``r`` of ``N`` the lines ``r, r+N, ...``, the same in every pass."""

    name = "📒 Rows"

    def __init__(self, input_dir: str, paths_file: str, kind: str, keep_row: bool = False):
        super().__init__(input_dir, paths_file=paths_file, batch_size=1024)
        self.kind, self.keep_row = kind, keep_row

    def read_file(self, filepath: str) -> DocumentsPipeline:
        path = Path(self.data_folder.path) / filepath
        handle = open_parquet(path, REQUIRED_COLUMNS[self.kind])
        if self.kind == "pt":
            check_text_column(path, "text")
            schema = handle.schema_arrow
            for column in QUALITY_BOUNDS:
                if column in schema.names and not (
                    pa.types.is_integer(schema.field(column).type) or pa.types.is_floating(schema.field(column).type)
                ):
                    raise DataError(f"{path}: column {column!r} holds {schema.field(column).type}, not numbers")
        columns = handle.schema_arrow.names if self.keep_row else self._columns(handle.schema_arrow.names)
        for start, rows in iter_batches(path, columns, batch_size=self.batch_size):
            with self.track_time("batch"):
                documents = [
                    make_document(self.kind, filepath, start + i, row, self.keep_row) for i, row in enumerate(rows)
                ]
            yield from documents

    def _columns(self, names: list[str]) -> list[str]:
        wanted = REQUIRED_COLUMNS[self.kind] + ["_id", "id"] + (list(QUALITY_BOUNDS) if self.kind == "pt" else [])
        return [name for name in names if name in wanted]


class RowCheck(BaseFilter):
    """Removes the rows the training stages would skip, under the stage's own reason."""

    name = "🩺 Row check"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return (False, doc.metadata["bad"]) if doc.metadata["bad"] else True


@lru_cache(maxsize=1)
def _encoder(tokenizer_name_or_path: str):
    from utils.bpe import make_fast_encoder
    from utils.tokenizer import load_tokenizer

    return make_fast_encoder(load_tokenizer(tokenizer_name_or_path))[1]


class TokenCounter(PipelineStep):
    """Counts the tokens (PT's tokenizer and encoder) of every ``every``-th document into ``metadata["tokens"]``."""

    type = "🔢 - TOKENIZER"
    name = "🔢 Token count"

    def __init__(self, tokenizer_name_or_path: str, every: int):
        super().__init__()
        self.tokenizer_name_or_path, self.every = tokenizer_name_or_path, every

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        seen = 0
        for batch in batched(data, 256):
            sampled = [doc for i, doc in enumerate(batch, start=seen) if i % self.every == 0 and doc.text]
            seen += len(batch)
            if sampled:
                with self.track_time("batch"):
                    for doc, ids in zip(sampled, _encoder(self.tokenizer_name_or_path)([d.text for d in sampled])):
                        doc.metadata["tokens"] = len(ids)
                        self.stat_update("tokens", value=len(ids))
            yield from batch


class LedgerWriter(ParquetWriter):
    """One ledger row per document: where it came from, the ``step`` that wrote it, why it was removed (empty for
    documents that passed), its measures, and its first ``example_chars`` characters for the first
    ``examples_per_reason`` documents of each reason in this task."""

    name = "📒 Ledger"

    def __init__(
        self,
        work_dir: str,
        step: str,
        reason: str = "",
        examples_per_reason: int = 3,
        example_chars: int = 300,
        hash_text: bool = False,
    ):
        super().__init__(
            f"{work_dir}/ledger",
            output_filename=f"{step}/${{rank}}.parquet",
            schema=LEDGER_SCHEMA,
            max_file_size=-1,
            use_content_defined_chunking=False,
            write_page_index=False,
        )
        self.step, self.reason, self.hash_text = step, reason, hash_text
        self.examples_per_reason, self.example_chars = examples_per_reason, example_chars
        self._examples: Counter[str] = Counter()

    def _default_adapter(self, document: Document) -> dict:
        meta = document.metadata
        reason = meta.get("filter_reason") or self.reason
        # A document that passed gets an example only if it is a near-duplicate cluster's survivor.
        key = reason or ("cluster" if meta.get("minhash_cluster_id", -1) != -1 else "")
        example = None
        if key and self._examples[key] < self.examples_per_reason:
            self._examples[key] += 1
            example = (document.text or meta.get("raw", ""))[: self.example_chars]
        text_bytes = len(document.text.encode("utf-8"))
        row = {
            "path": meta["path"],
            "row": meta["row"],
            "source_id": meta["source_id"],
            "domain": meta["domain"],
            "language": meta["language"],
            "step": self.step,
            "reason": reason,
            "detail": meta.get("detail", ""),
            "chars": len(document.text),
            "bytes": text_bytes,
            "tokens": meta.get("tokens"),
            "text_hash": xxhash.xxh64_hexdigest(exact_content(document)) if self.hash_text else None,
            "cluster": meta.get("minhash_cluster_id"),
            "example": example,
        }
        for column in (*QUALITY_BOUNDS, *MEASURES):
            value = meta.get(column)
            row[column] = None if value is None else float(value)
        return row


def read_ledger_keys(work_dir: str, steps: list[str], rank: int) -> set[tuple[str, int]]:
    """(path, row) of every document this task's earlier passes removed in ``steps``."""
    keys: set[tuple[str, int]] = set()
    for step in steps:
        file = Path(work_dir) / "ledger" / step / f"{rank:05d}.parquet"
        if file.is_file():
            table = pq.read_table(file, columns=["path", "row"])
            keys.update(zip(table.column("path").to_pylist(), table.column("row").to_pylist()))
    return keys


class SkipRemoved(PipelineStep):
    """Drops the documents that an earlier pass removed (they are already in the ledger, with their reason), so
    that this pass sees exactly the stream the earlier pass handed on: datatrove's dedup stages find documents by
    their index in that stream."""

    type = "🔻 - FILTER"
    name = "⏭ Skip removed"

    def __init__(self, work_dir: str, steps: list[str]):
        super().__init__()
        self.work_dir, self.steps = work_dir, steps

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        removed = read_ledger_keys(self.work_dir, self.steps, rank)
        for doc in data:
            if (doc.metadata["path"], doc.metadata["row"]) in removed:
                self.stat_update("already_removed")
                continue
            self.stat_update("forwarded")
            yield doc


class MirrorWriter(ParquetWriter):
    """Writes each kept row, with all its columns as read, to the same relative path under ``output_dir``.

    Every input file is read by exactly one task, so no two tasks write one output file. Each output file gets
    its input file's schema (Chinese and English IndustryCorpus2 files have different columns)."""

    name = "📒 Curated copy"

    def __init__(self, input_dir: str, output_dir: str):
        super().__init__(output_dir, max_file_size=-1)
        # Each row goes back to the path it was read from. datatrove warns about a file name without ${rank}
        # (two tasks could write one file), which cannot happen here, so the name is set after its check.
        self.output_filename = Template("${path}")
        self.input_dir = input_dir

    def _default_adapter(self, document: Document) -> dict:
        return document.metadata["columns"]

    def _write(self, document: dict, file_handler, filename: str):
        if filename not in self._writers:
            self.schema = pq.read_schema(Path(self.input_dir) / filename)
        else:
            self.schema = self._writers[filename].schema
        super()._write(document, file_handler, filename)

    def _write_batch(self, filename):
        if filename in self._writers:
            self.schema = self._writers[filename].schema
        super()._write_batch(filename)
