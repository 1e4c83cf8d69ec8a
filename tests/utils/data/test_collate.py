"""The one packed layout: documents laid end to end in rows, kept apart by restarting position ids alone, on every
attention backend. These tests pin that the installed transformers isolates them (packed == separate documents,
logits and loss), and that it stops doing so once a KV cache exists."""

from __future__ import annotations

import contextlib
import importlib.util

import numpy as np
import pytest
import torch

from utils.data.collate import IGNORE_INDEX, PackedCollator
from utils.data.pt import PackedDataset
from utils.data.token_cache import TokenCache
from utils.modeling import ModelShapeArguments, build_model

DOCS = [[5, 6, 7, 8, 63], [10, 11, 12, 63], [20, 21, 22, 23, 24, 63], [30, 31, 63]]
SHAPE = ModelShapeArguments(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=64,
    vocab_size=64,
)
BACKENDS = ["sdpa", "eager", "flex_attention", "flash_attention_2"]


def tiny_model(attn: str):
    if attn == "flex_attention":
        # Each test compiles flex_attention for its own shapes; a recompile for new shapes in the same process hits
        # an inductor C++ codegen error on CPU (torch 2.13), so start from a clean compile cache.
        torch._dynamo.reset()
    torch.manual_seed(0)
    return build_model(SHAPE, attn_implementation=attn, bos_token_id=None, eos_token_id=63, pad_token_id=0).eval()


def packed_blocks(tmp_path, block_size: int) -> list[dict]:
    tokens = np.concatenate([np.asarray(d, dtype=np.uint32) for d in DOCS])
    np.asarray(tokens).tofile(tmp_path / "tokens.bin")
    np.save(tmp_path / "doc_starts.npy", np.cumsum([0] + [len(d) for d in DOCS[:-1]]).astype(np.int64))
    data = PackedDataset(TokenCache(tmp_path, {}), block_size)
    return [data[i] for i in range(len(data))]


def segments(blocks: list[dict]) -> list[list[int]]:
    """The token runs the blocks hold between position-id restarts (documents, or document pieces)."""
    ids = torch.cat([b["input_ids"] for b in blocks]).tolist()
    starts = [i for i, p in enumerate(torch.cat([b["position_ids"] for b in blocks]).tolist()) if p == 0]
    return [ids[s:e] for s, e in zip(starts, [*starts[1:], len(ids)])]


@pytest.mark.parametrize("attn", BACKENDS)
def test_packed_row_equals_separate_documents(tmp_path, attn):
    if attn == "flash_attention_2" and not (torch.cuda.is_available() and importlib.util.find_spec("flash_attn")):
        pytest.skip("flash_attention_2 needs a CUDA GPU and flash-attn")
    device = "cuda" if attn == "flash_attention_2" else "cpu"
    model = tiny_model(attn).to(device)
    if attn == "flash_attention_2":
        model = model.to(torch.bfloat16)
    blocks = packed_blocks(tmp_path, block_size=6)  # 18 tokens in 3 blocks; documents cross block boundaries
    collator = PackedCollator(pad_token_id=0, single_row=attn == "flash_attention_2")
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(blocks).items()}
    assert batch["input_ids"].shape == ((1, 18) if attn == "flash_attention_2" else (3, 6))
    assert "attention_mask" not in batch and batch["use_cache"] is False
    # flex_attention has no backward on CPU: forward only there.
    with torch.no_grad() if attn == "flex_attention" else contextlib.nullcontext():
        packed = model(**batch)
    pieces = segments(blocks)
    assert [len(p) for p in pieces] == [5, 1, 3, 3, 3, 3]
    with torch.no_grad():
        per_doc = [
            model(input_ids=torch.tensor([p], device=device), labels=torch.tensor([p], device=device)) for p in pieces
        ]
    weights = [len(p) - 1 for p in pieces]  # a piece's first token is never a target
    expected = sum(o.loss * w for o, w in zip(per_doc, weights) if w) / sum(weights)
    tolerance = 2e-2 if attn == "flash_attention_2" else 1e-5
    assert torch.allclose(packed.loss.float(), expected.float(), atol=tolerance)
    separate_logits = torch.cat([o.logits for o in per_doc], dim=1)
    assert torch.allclose(packed.logits.float().reshape(1, 18, -1), separate_logits.float(), atol=tolerance * 5)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "flex_attention"])
def test_padded_rows_of_packed_conversations_stay_separate(attn):
    """SFT rows (conversations packed up to max_length) differ in length: padded rows, no mask, the same logits as
    each conversation alone, and the padding attends to nothing."""
    model = tiny_model(attn)
    examples = [
        {"input_ids": [5, 6, 7, 63, 10, 11, 63], "labels": [5, 6, 7, 63, 10, 11, 63], "seq_lengths": [4, 3]},
        {"input_ids": [20, 21, 22, 63], "labels": [20, 21, 22, 63], "seq_lengths": [4]},
    ]
    batch = PackedCollator(pad_token_id=0)(examples)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 3, 0, 0, 0]]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX, 21, 22, 63, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    with torch.no_grad():
        packed = model(**batch).logits
        pieces = [[5, 6, 7, 63], [10, 11, 63], [20, 21, 22, 63]]
        separate = [model(input_ids=torch.tensor([p])).logits[0] for p in pieces]
    assert torch.allclose(packed[0], torch.cat(separate[:2]), atol=1e-5)
    assert torch.allclose(packed[1, :4], separate[2], atol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_documents_leak_once_a_cache_is_built(tmp_path, attn):
    """transformers skips its packed-sequence detection when a KV cache exists: then the documents see each
    other. This is why every training batch says use_cache=False; if an upgrade changes either behaviour,
    this test or the one above fails."""
    model = tiny_model(attn)
    batch = PackedCollator(pad_token_id=0, single_row=True)(packed_blocks(tmp_path, block_size=6))
    with torch.no_grad():
        isolated = model(**batch).logits
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
    assert not torch.allclose(leaky, isolated, atol=1e-3)


def test_one_row_for_flash_attention_and_labels_at_restarts():
    examples = [
        {"input_ids": [1, 2, 3], "labels": [1, 2, 3], "seq_lengths": [2, 1]},
        {"input_ids": [4, 5], "labels": [-100, 5], "seq_lengths": [2]},
    ]
    collator = PackedCollator(pad_token_id=0, single_row=True)
    batch = collator(examples)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 0, 1]]
    # The first token of every segment is not a target: it would be predicted from the previous segment.
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX, 5]]
    assert collator.take_real_token_share() == 1.0 and collator.take_real_token_share() is None


def test_padded_mode_is_upstreams_layout():
    examples = [{"input_ids": [1, 2, 3, 4], "labels": [1, 2, 3, 4]}, {"input_ids": [5], "labels": [5]}]
    collator = PackedCollator(pad_token_id=0, isolate=False)
    batch = collator(examples)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert batch["labels"][1].tolist() == [5, -100, -100, -100]
    assert collator.take_real_token_share() == pytest.approx(5 / 8)
