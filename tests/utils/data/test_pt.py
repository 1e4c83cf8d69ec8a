"""PT data: discovery, bad input, the token cache and block boundaries."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from utils.data.collate import IGNORE_INDEX
from utils.data.parquet import DataError, find_parquet_files
from utils.data.pt import DocumentDataset, PackedDataset, pt_dataset
from utils.data.token_cache import TokenCache, build_token_cache


def write(path, texts, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts, **extra}), path)


def test_discovery_filters(tmp_path):
    for domain in ("news", "code"):
        for lang in ("chinese", "english"):
            for i in range(4):
                write(tmp_path / domain / lang / "high" / f"rank_{i:05d}.parquet", ["x"])
    assert len(find_parquet_files(tmp_path)) == 16
    assert len(find_parquet_files(tmp_path, domains=["news"])) == 8
    assert len(find_parquet_files(tmp_path, domains=["news"], languages=["english"])) == 4
    capped = find_parquet_files(tmp_path, max_files_per_dir=3)
    assert len(capped) == 12 and all(p.name != "rank_00003.parquet" for p in capped)
    with pytest.raises(DataError, match="No parquet files"):
        find_parquet_files(tmp_path, domains=["law"])


def test_empty_dir_and_corrupt_file_fail_naming_the_file(tmp_path, qwen_tokenizer, qwen_tokenizer_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No parquet files found under"):
        find_parquet_files(tmp_path / "empty")
    bad = tmp_path / "data" / "broken.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="broken.parquet"):
        build_token_cache([bad], tmp_path / "data", qwen_tokenizer, str(qwen_tokenizer_dir), tmp_path / "cache")
    nocol = tmp_path / "data2" / "nocol.parquet"
    nocol.parent.mkdir()
    pq.write_table(pa.table({"content": ["a"]}), nocol)
    with pytest.raises(DataError, match="nocol.parquet.*missing column"):
        build_token_cache([nocol], tmp_path / "data2", qwen_tokenizer, str(qwen_tokenizer_dir), tmp_path / "cache")


def test_cache_tokens_eos_skips_and_reuse(tmp_path, qwen_tokenizer, qwen_tokenizer_dir, caplog):
    # Different column sets in the two languages, as in IndustryCorpus2: only `text` is read.
    write(tmp_path / "d" / "chinese" / "high" / "a.parquet", ["李白是诗人。", None, "  "], score=[1.0, 2.0, 3.0])
    write(tmp_path / "d" / "english" / "high" / "a.parquet", ["Hello world", "Second doc"])
    files = find_parquet_files(tmp_path)
    args = (files, tmp_path, qwen_tokenizer, str(qwen_tokenizer_dir), tmp_path / "cache")
    cache = build_token_cache(*args)
    eos = qwen_tokenizer.eos_token_id
    expected = []
    for text in ["李白是诗人。", "Hello world", "Second doc"]:
        expected += qwen_tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
    assert cache.tokens.tolist() == expected
    assert cache.meta["skipped"] == {"empty or null text": 2} and cache.meta["documents"] == 3
    assert cache.meta["tokens_per_group"] == {
        "d/chinese": len(qwen_tokenizer("李白是诗人。")["input_ids"]) + 1,
        "d/english": len(expected) - len(qwen_tokenizer("李白是诗人。")["input_ids"]) - 1,
    }
    with caplog.at_level(logging.INFO, logger="utils.data.token_cache"):
        again = build_token_cache(*args)
    assert "Reusing token cache" in caplog.text and again.path == cache.path


def make_cache(tmp_path, docs: list[list[int]]) -> TokenCache:
    tokens = np.concatenate([np.asarray(d, dtype=np.uint32) for d in docs])
    starts = np.cumsum([0] + [len(d) for d in docs[:-1]]).astype(np.int64)
    tokens.tofile(tmp_path / "tokens.bin")
    np.save(tmp_path / "doc_starts.npy", starts)
    return TokenCache(tmp_path, {})


def test_block_boundaries_positions_and_labels(tmp_path):
    # Three documents (EOS = 9 already appended) over blocks of 4: 10 tokens -> 2 blocks, 2 dropped.
    cache = make_cache(tmp_path, [[1, 2, 9], [3, 4, 5, 6, 9], [7, 9]])
    data = PackedDataset(cache, block_size=4)
    assert len(data) == 2 and data.dropped_tokens == 2
    first, second = data[0], data[1]
    assert first["input_ids"].tolist() == [1, 2, 9, 3]
    assert first["position_ids"].tolist() == [0, 1, 2, 0]
    assert first["labels"].tolist() == [IGNORE_INDEX, 2, 9, IGNORE_INDEX]
    # The second block starts inside document 2: a new segment at 0, then document 3 at offset 3.
    assert second["input_ids"].tolist() == [4, 5, 6, 9]
    assert second["position_ids"].tolist() == [0, 1, 2, 3]
    assert second["labels"].tolist() == [IGNORE_INDEX, 5, 6, 9]


def test_the_comparison_layouts(tmp_path):
    """cross_document: the same blocks, one segment each (documents see each other, upstream's packing);
    one_per_row: one document per example, cut to the block size (upstream's conventional layout)."""
    cache = make_cache(tmp_path, [[1, 2, 9], [3, 4, 5, 6, 9], [7, 9]])
    cross = pt_dataset(cache, 4, "cross_document")[0]
    assert cross["input_ids"].tolist() == [1, 2, 9, 3] and cross["position_ids"].tolist() == [0, 1, 2, 3]
    assert cross["labels"].tolist() == [IGNORE_INDEX, 2, 9, 3]
    rows = pt_dataset(cache, 4, "one_per_row")
    assert isinstance(rows, DocumentDataset) and len(rows) == 3 and rows.dropped_tokens == 1
    assert [rows[i]["input_ids"].tolist() for i in range(3)] == [[1, 2, 9], [3, 4, 5, 6], [7, 9]]
    assert len(pt_dataset(cache, 4, "one_per_row", fraction=0.5)) == 1
    assert len(PackedDataset(cache, 2, fraction=0.5)) == 2  # 5 blocks of 2 -> the first 2
    with pytest.raises(ValueError, match="data_fraction"):
        pt_dataset(cache, 4, fraction=0)
