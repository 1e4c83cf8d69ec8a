"""The per-document steps: IndustryCorpus2's quality columns, text heuristics, benchmark decontamination, and the
MinHash signatures that datatrove's dedup stages compare.

Each filter is a datatrove ``BaseFilter``: it returns ``(False, reason)`` for a document it removes, puts the
numbers behind the decision in ``metadata["detail"]``, and hands the document to its ``exclusion_writer`` (the
ledger). The reasons are short fixed phrases with the threshold in them ("quality_score < 4.0"), so that
the report can count them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from tools.bench_tasks import SPECS
from tools.curate.heuristics import check_repetition, duplicate_line_fraction
from tools.curate.recipe import CurateArguments
from tools.curate.words import MinHasher, ngram_hashes, split_words
from utils.data.parquet import DataError, iter_batches

logger = logging.getLogger(__name__)


class QualityFilter(BaseFilter):
    """Bounds on IndustryCorpus2's per-row quality columns (``recipe.QUALITY_BOUNDS``). A row whose file lacks the
    column, or whose value is null, is not judged by that bound (counted in the task's stats)."""

    name = "🏅 Quality columns"

    def __init__(self, bounds: dict[str, tuple[str, float]], exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.bounds = bounds

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        for column, (side, bound) in self.bounds.items():
            value = doc.metadata.get(column)
            if value is None:
                self.stat_update(f"no_{column}")
                continue
            if (side == "min" and value < bound) or (side == "max" and value > bound):
                doc.metadata["detail"] = f"{column} = {value:.4g}"
                return False, f"{column} {'<' if side == 'min' else '>'} {bound:g}"
        return True


class HeuristicFilter(BaseFilter):
    """Length, symbol share and repetition (``tools.curate.heuristics``) measured on the text; the measures go to
    the ledger for the report's histograms, whatever the decision."""

    name = "🧮 Text heuristics"

    def __init__(self, recipe: CurateArguments, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.min_words, self.max_words = recipe.min_words, recipe.max_words
        self.max_symbol_ratio = recipe.max_symbol_ratio
        self.max_duplicate_lines = recipe.max_duplicate_line_fraction
        self.limits = {}
        for language, scale in (("english", 1), ("chinese", recipe.chinese_ngram_scale)):
            top = {n * scale: limit for n, limit in zip(recipe.top_ngram_sizes, recipe.top_ngram_limits)}
            duplicate = {
                n * scale: limit for n, limit in zip(recipe.duplicate_ngram_sizes, recipe.duplicate_ngram_limits)
            }
            self.limits[language] = (top, duplicate)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        words = split_words(doc.text)
        meta = doc.metadata
        meta["words"] = len(words)
        meta["symbol_ratio"] = words.symbols / words.non_space if words.non_space else 0.0
        meta["duplicate_line_fraction"] = duplicate_line_fraction(doc.text)
        top, duplicate = self.limits[meta["language"]]
        broken, (meta["top_ngram_fraction"], meta["duplicated_ngram_fraction"]) = check_repetition(
            words, top, duplicate
        )
        if len(words) < self.min_words:
            meta["detail"] = f"{len(words)} words"
            return False, f"fewer than {self.min_words} words"
        if len(words) > self.max_words:
            meta["detail"] = f"{len(words)} words"
            return False, f"more than {self.max_words} words"
        if meta["symbol_ratio"] > self.max_symbol_ratio:
            meta["detail"] = f"symbol ratio {meta['symbol_ratio']:.3f}"
            return False, f"symbol ratio > {self.max_symbol_ratio:g}"
        if meta["duplicate_line_fraction"] > self.max_duplicate_lines:
            meta["detail"] = f"duplicate lines {meta['duplicate_line_fraction']:.3f}"
            return False, f"duplicate lines > {self.max_duplicate_lines:g}"
        if broken is not None:
            rule, n, value = broken
            limit = top[n] if rule == "top" else duplicate[n]
            meta["detail"] = f"{value:.3f}"
            what = "most frequent" if rule == "top" else "repeated"
            return False, f"{what} {n}-grams > {limit:g} ({meta['language']})"
        return True


def _strings(value) -> list[str]:
    """The strings in a benchmark cell: lists and structs give theirs (ARC's choices, {"text": [...], "label": [...]},
    give the texts); numbers (an answer index) give none."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return _strings(value["text"]) if "text" in value else [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def benchmark_files(bench_dir: str) -> list[tuple[str, Path]]:
    """(benchmark, file) for every evaluated split file under ``bench_dir`` (few-shot splits are not scored)."""
    root = Path(bench_dir)
    found = []
    for bench, spec in SPECS.items():
        for pattern in spec["splits"][spec["eval_split"]]:
            found += [(bench, path) for path in sorted(root.glob(pattern.format(s="*")))]
    return found


def build_decont_index(bench_dir: str, n: int, out_dir: str) -> dict:
    """Index every n-gram of every benchmark item: ``index.npz`` (sorted hashes, the item each came from) and
    ``questions.parquet`` (benchmark, file, row, text). Items shorter than n words cannot be matched and are
    counted."""
    if not Path(bench_dir).is_dir():
        raise DataError(
            f"bench_dir {bench_dir} does not exist: run `bash prepare.sh --stage bench`, point "
            f"--bench_dir at mini_data/bench, or pass --decontaminate false"
        )
    hashes, owners, questions, too_short = [], [], [], 0
    for bench, path in benchmark_files(bench_dir):
        fields = SPECS[bench]["columns"]  # what lm_eval's prompt and target read
        for start, rows in iter_batches(path, [f for f in fields if f in pq.read_schema(path).names]):
            for offset, row in enumerate(rows):
                text = "\n".join(s for f in fields for s in _strings((row or {}).get(f)))
                grams = ngram_hashes(split_words(text).hashes, n)
                if grams.size == 0:
                    too_short += 1
                    continue
                hashes.append(grams)
                owners.append(np.full(grams.size, len(questions), dtype=np.int32))
                questions.append(
                    {"benchmark": bench, "file": str(path.relative_to(bench_dir)), "row": start + offset, "text": text}
                )
    if not questions:
        raise DataError(
            f"No benchmark questions found under {bench_dir} (expected the layout of "
            f"`prepare.sh --stage bench`, e.g. mmlu/<subject>/test-*.parquet)"
        )
    all_hashes, all_owners = np.concatenate(hashes), np.concatenate(owners)
    unique, first = np.unique(all_hashes, return_index=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "index.npz", hashes=unique, owners=all_owners[first])
    pq.write_table(pa.Table.from_pylist(questions), out / "questions.parquet")
    summary = {"questions": len(questions), "too_short": too_short, "ngrams": int(unique.size), "n": n}
    (out / "summary.json").write_text(json.dumps(summary))
    logger.info(
        "Decontamination index: %d benchmark items (%d shorter than %d words, not indexed), %d n-grams",
        len(questions),
        too_short,
        n,
        unique.size,
    )
    return summary


class DecontaminationFilter(BaseFilter):
    """Removes documents that share an n-gram of ``n`` words with a benchmark item (``build_decont_index``); the
    benchmark, the item and the shared text go to the ledger. datatrove's ``NGramsDecontIndexer`` would fetch
    the benchmarks through lighteval's task registry; this one indexes the local files the benchmarks read."""

    name = "🦠 Decontamination"

    def __init__(self, index_dir: str, n: int, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.index_dir, self.n = index_dir, n
        self._index = None

    def _load(self):
        data = np.load(Path(self.index_dir) / "index.npz")
        table = pq.read_table(Path(self.index_dir) / "questions.parquet", columns=["benchmark", "file", "row"])
        self._index = (data["hashes"], data["owners"], table.to_pylist())

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._index is None:
            self._load()
        hashes, owners, questions = self._index
        words = split_words(doc.text)
        grams = ngram_hashes(words.hashes, self.n)
        if grams.size == 0:
            return True
        at = np.minimum(np.searchsorted(hashes, grams), hashes.size - 1)
        hits = np.flatnonzero(hashes[at] == grams)
        if hits.size == 0:
            return True
        first = int(hits[0])
        question = questions[int(owners[at[first]])]
        self.stat_update(f"contaminated_{question['benchmark']}")
        doc.metadata["detail"] = (
            f'{question["benchmark"]} {question["file"]} row {question["row"]}: "{words.span(first, self.n)}"'
        )
        return False, f"shares {self.n}-grams with {question['benchmark']}"


class WordsTokenizer(WordTokenizer):
    """``tools.curate.words`` behind datatrove's tokenizer interface, so that datatrove never loads spaCy (its
    default for English and Chinese)."""

    def word_tokenize(self, text: str) -> list[str]:
        words = split_words(text)
        return [words.span(i, 1) for i in range(len(words))]

    def sent_tokenize(self, text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for line in text.splitlines(keepends=True):
            if line.strip():
                spans.append((start, start + len(line)))
            start += len(line)
        return spans


def minhash_config(recipe: CurateArguments) -> MinhashConfig:
    """The config all MinHash stages share: 32-bit signature values (``words.MinHasher``)."""
    return MinhashConfig(
        n_grams=recipe.minhash_ngram,
        num_buckets=recipe.minhash_buckets,
        hashes_per_bucket=recipe.minhash_hashes_per_bucket,
        seed=recipe.minhash_seed,
        hash_config=HashConfig(precision=32),
    )


class MinhashSignature(MinhashDedupSignature):
    """datatrove's first MinHash stage (signatures into per-bucket files, sorted) with this project's shingles
    (word n-grams, a Chinese character being a word) and vectorized signature (``words.MinHasher``)."""

    def __init__(self, output_folder: str, config: MinhashConfig):
        super().__init__(output_folder, config=config, language=WordsTokenizer())
        self._hasher = None

    def get_shingles(self, text: str) -> np.ndarray:
        return ngram_hashes(split_words(text).hashes, self.config.n_grams)

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        if self._hasher is None:
            self._hasher = MinHasher(self.num_hashes, self.config.seed)
        signature = self._hasher.signature(shingles.reshape(-1))
        return signature.reshape(self.config.num_buckets, self.config.hashes_per_bucket).tolist()
