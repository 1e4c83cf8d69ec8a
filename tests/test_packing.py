"""PT data: discovery, bad input, the token cache, block boundaries, and document isolation."""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from utils.data import DataError, find_parquet_files
from utils.modeling import ModelShapeArguments, build_model
from utils.packing import (
    IGNORE_INDEX,
    PackedCollator,
    PackedDataset,
    TokenCache,
    block_causal_mask,
    build_token_cache,
)


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
    assert cache.meta["skipped_empty"] == 2 and cache.meta["documents"] == 3
    assert cache.meta["tokens_per_group"] == {
        "d/chinese": len(qwen_tokenizer("李白是诗人。")["input_ids"]) + 1,
        "d/english": len(expected) - len(qwen_tokenizer("李白是诗人。")["input_ids"]) - 1,
    }
    with caplog.at_level(logging.INFO, logger="utils.packing"):
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


def test_block_causal_mask_shape_and_values():
    mask = block_causal_mask(torch.tensor([[0, 1, 2, 0, 1]]))
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 1, 0],
            [0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert mask.shape == (1, 1, 5, 5) and torch.equal(mask[0, 0], expected)
    additive = block_causal_mask(torch.tensor([[0, 1, 0]]), torch.float32)[0, 0]
    assert additive[1, 0] == 0 and additive[2, 0] == torch.finfo(torch.float32).min


# flex_attention: forward only here (PyTorch has no flex backward on CPU); the first call compiles (~10 s).
@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_packed_loss_equals_separate_documents(tmp_path, attn):
    torch.manual_seed(0)
    shape = ModelShapeArguments(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=64,
    )  # fmt: skip
    model = build_model(shape, attn_implementation=attn, bos_token_id=None, eos_token_id=63, pad_token_id=0).eval()
    docs = [[5, 6, 7, 8, 63], [10, 11, 12, 63], [20, 21, 22, 23, 24, 63]]
    cache = make_cache(tmp_path, docs)
    block = PackedDataset(cache, block_size=15)[0]
    batch = PackedCollator(attn, pad_token_id=0)([block])
    with torch.no_grad() if attn == "flex_attention" else contextlib.nullcontext():
        packed = model(**batch)
    with torch.no_grad():
        per_doc = [model(input_ids=torch.tensor([d]), labels=torch.tensor([d])) for d in docs]
    weights = [len(d) - 1 for d in docs]
    expected = sum(o.loss * w for o, w in zip(per_doc, weights)) / sum(weights)
    assert torch.allclose(packed.loss, expected, atol=1e-5)
    separate_logits = torch.cat([o.logits for o in per_doc], dim=1)
    assert torch.allclose(packed.logits, separate_logits, atol=1e-5)
    # Without the mask (or, for flex, with a KV cache) the documents see each other: the test above can fail.
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True)
    assert not torch.allclose(leaky.logits, separate_logits, atol=1e-5)


def test_flash_attention_layout_is_one_flat_row():
    examples = [
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "seq_lengths": [2, 1]},
        {"input_ids": [4, 5], "labels": [-100, 5], "seq_lengths": [2]},
    ]
    batch = PackedCollator("flash_attention_2", pad_token_id=0)(examples)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0, 1]]
    assert "attention_mask" not in batch
    # flex_attention: padded rows, the mask left to transformers (from the restarts), no KV cache.
    flex = PackedCollator("flex_attention", pad_token_id=0)(examples)
    assert flex["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert flex["position_ids"].tolist() == [[0, 1, 0], [0, 1, 0]] and flex["use_cache"] is False
    assert "attention_mask" not in flex


def test_padded_mode_and_real_token_share():
    examples = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}, {"input_ids": [5], "labels": [5]}]
    collator = PackedCollator("sdpa", pad_token_id=0, isolate=False)
    batch = collator(examples)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert batch["labels"][1].tolist() == [5, -100, -100, -100]
    assert collator.take_real_token_share() == pytest.approx(5 / 8)
    assert collator.take_real_token_share() is None
