"""SFT and DPO rows: exact labels, special-token text kept as text, turn-boundary truncation, skip reasons,
real-sample formats."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from tests.helpers import MINI_DATA, REAL_SAMPLES, needs_real_samples
from utils.data.chat import SkipRow, completion_ids, conversation_to_messages, encode_chat
from utils.data.collate import IGNORE_INDEX
from utils.data.dpo import load_preference_pairs, preference_pair
from utils.data.sft import load_sft_dataset

SINGLE = [{"role": "user", "content": "李白是谁？"}, {"role": "assistant", "content": "唐代诗人，号青莲居士。"}]
MULTI = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And times 3?"},
    {"role": "assistant", "content": "12, since 4 x 3 = 12."},
]
SYSTEM = [{"role": "system", "content": "You are mini_qwen."}, *MULTI]


def reference(tokenizer, messages):
    """Ids and labels built piece by piece from the ChatML format, independent of our encoder."""
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids, labels = [], []
    for i, m in enumerate(messages):
        head = enc(f"<|im_start|>{m['role']}\n")
        body = enc(m["content"]) + [tokenizer.eos_token_id]
        tail = [] if i == len(messages) - 1 and m["role"] == "assistant" else enc("\n")
        supervised = m["role"] == "assistant"
        ids += head + body + tail
        labels += [IGNORE_INDEX] * len(head) + (body if supervised else [IGNORE_INDEX] * len(body))
        labels += [IGNORE_INDEX] * len(tail)
    return ids, labels


@pytest.mark.parametrize("messages", [SINGLE, MULTI, SYSTEM], ids=["single", "multi", "system"])
def test_labels_match_reference(qwen_tokenizer, messages):
    encoded = encode_chat(qwen_tokenizer, messages, max_length=None)
    ids, labels = reference(qwen_tokenizer, messages)
    assert encoded.input_ids == ids
    assert encoded.input_ids == qwen_tokenizer.apply_chat_template(messages, return_dict=True)["input_ids"]
    assert encoded.labels == labels
    assert encoded.labels.count(qwen_tokenizer.eos_token_id) == sum(m["role"] == "assistant" for m in messages)


def test_truncation_keeps_whole_turns(qwen_tokenizer):
    full = encode_chat(qwen_tokenizer, MULTI, None)
    first_turn = encode_chat(qwen_tokenizer, MULTI[:2], None)
    cut = encode_chat(qwen_tokenizer, MULTI, max_length=len(full.input_ids) - 1)
    assert cut.truncated and cut.input_ids == first_turn.input_ids and cut.labels == first_turn.labels
    assert cut.input_ids[-1] == qwen_tokenizer.eos_token_id
    exact = encode_chat(qwen_tokenizer, MULTI, max_length=len(full.input_ids))
    assert not exact.truncated and exact.input_ids == full.input_ids
    with pytest.raises(SkipRow, match="no complete assistant turn fits"):
        encode_chat(qwen_tokenizer, MULTI, max_length=len(first_turn.input_ids) - 1)


def test_conversation_conversion_and_skips():
    conv = [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    assert [m["role"] for m in conversation_to_messages(conv)] == ["system", "user", "assistant"]
    default = conversation_to_messages(conv[1:], default_system_prompt="Be brief.")
    assert default[0] == {"role": "system", "content": "Be brief."}
    assert conversation_to_messages(conv, default_system_prompt="Be brief.")[0]["content"] == "S"
    cases = {
        "empty conversation": [],
        "unknown role": [{"from": "human", "value": "Q"}, {"from": "bot", "value": "A"}],
        "does not end with an assistant turn": [{"from": "human", "value": "Q"}],
        "system turn not first": [{"from": "human", "value": "Q"}, {"from": "system", "value": "S"}],
    }
    for reason, conversation in cases.items():
        with pytest.raises(SkipRow, match=reason):
            conversation_to_messages(conversation)


def test_bundled_sft_data_skips_are_counted(tmp_path, qwen_tokenizer_dir):
    dataset, _, summary = load_sft_dataset(
        str(MINI_DATA / "sft"), str(qwen_tokenizer_dir), 1024, cache_dir=str(tmp_path)
    )
    assert summary["skipped"] == {
        "empty conversation": 1,
        "does not end with an assistant turn": 1,
        "unknown role": 1,
    }
    assert summary["kept"] == len(dataset) == summary["rows"] - 3
    assert all(any(x != IGNORE_INDEX for x in labels) for labels in dataset["labels"])


@needs_real_samples
def test_real_7m_and_gen_load_together(tmp_path, qwen_tokenizer_dir, qwen_tokenizer):
    rows = []
    for sub in ("7M", "Gen"):
        for path in (REAL_SAMPLES / "sft" / sub).glob("*.parquet"):
            rows += pq.read_table(path, columns=["conversations"]).column(0).to_pylist()
    dataset, _, summary = load_sft_dataset(
        str(REAL_SAMPLES / "sft"), str(qwen_tokenizer_dir), max_length=None, cache_dir=str(tmp_path)
    )
    assert summary["rows"] == len(rows) == 200 and summary["kept"] == len(dataset) == 200
    # Multi-turn rows keep every turn: one supervised <|im_end|> per assistant turn.
    turns = sorted(sum(t["from"] == "gpt" for t in conv) for conv in rows)
    kept = sorted(labels.count(qwen_tokenizer.eos_token_id) for labels in dataset["labels"])
    assert kept == turns and max(turns) > 1


REAL_DPO = REAL_SAMPLES / "dpo" / "train-00000-of-00001.parquet"


@needs_real_samples
def test_real_dpo_rows_exact(qwen_tokenizer):
    rows = pq.read_table(REAL_DPO).to_pylist()[:3]
    for row in rows:
        pair = preference_pair(row, qwen_tokenizer, max_prompt_length=None)
        assert pair.prompt == [{"role": "user", "content": row["prompt"]}]
        assert pair.chosen == [{"role": "assistant", "content": row["chosen"][1]["content"]}]
        assert pair.rejected == [{"role": "assistant", "content": row["rejected"][1]["content"]}]
        ids = completion_ids(qwen_tokenizer, pair.prompt, pair.chosen)
        assert ids == qwen_tokenizer(row["chosen"][1]["content"], add_special_tokens=False)["input_ids"] + [151645]
        text = qwen_tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
        assert text == f"<|im_start|>user\n{row['prompt']}<|im_end|>\n<|im_start|>assistant\n"


def test_dpo_bad_rows_and_prompt_budget(qwen_tokenizer):
    def row(chosen, rejected, user="Q?"):
        return {
            "chosen": [{"role": "user", "content": user}, {"role": "assistant", "content": chosen}],
            "rejected": [{"role": "user", "content": user}, {"role": "assistant", "content": rejected}],
        }

    with pytest.raises(SkipRow, match="chosen equals rejected"):
        preference_pair(row("same", "same"), qwen_tokenizer)
    with pytest.raises(SkipRow, match="empty reply"):
        preference_pair(row("good", "  "), qwen_tokenizer)
    swapped = row("good", "bad")
    swapped["chosen"] = swapped["chosen"][::-1]
    with pytest.raises(SkipRow, match="roles out of order"):
        preference_pair(swapped, qwen_tokenizer)
    long_prompt = " ".join(f"word{i}" for i in range(400)) + " Final question: why?"
    pair = preference_pair(row("A", "B", user=long_prompt), qwen_tokenizer, max_prompt_length=64)
    assert pair.prompt_cut and pair.prompt[0]["content"].endswith("Final question: why?")
    rendered = qwen_tokenizer.apply_chat_template(pair.prompt, return_dict=True, add_generation_prompt=True)
    assert len(rendered["input_ids"]) <= 64


def test_bundled_dpo_data_skips_are_counted(qwen_tokenizer):
    rows, summary = load_preference_pairs(str(MINI_DATA / "dpo"), qwen_tokenizer, 512, 1024)
    assert summary["skipped"] == {"chosen equals rejected": 1, "empty reply": 1, "roles out of order": 1}
    assert len(rows) == summary["rows"] - 3 >= 100
