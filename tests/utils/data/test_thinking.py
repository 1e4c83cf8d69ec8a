"""The thinking switch of the chat template: off, every id (and label, and DPO prompt) is what the template gave
before the switch existed; on, each assistant turn opens a think block, with exact ids, and a generated reply taken
apart by ``split_reasoning`` renders back to the same ids."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from tests.helpers import MINI_DATA
from utils.data.chat import (
    completion_ids,
    encode_chat,
    encode_messages,
    prompt_ids,
    split_reasoning,
    template_switches,
)
from utils.data.collate import IGNORE_INDEX
from utils.data.dpo import load_preference_pairs
from utils.tokenizer import CHAT_TEMPLATE, LEGACY_CHAT_TEMPLATES, load_tokenizer

SOLVED = [
    {"role": "user", "content": "小明有 3 个苹果，又买了 4 个。他现在有几个？"},
    {"role": "assistant", "content": "答案是 7。", "reasoning_content": "3 + 4 = 7"},
]
CONVERSATIONS = {
    "single": [{"role": "user", "content": "李白是谁？"}, {"role": "assistant", "content": "唐代诗人。"}],
    "multi": [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And times 3?"},
        {"role": "assistant", "content": "12, since 4 x 3 = 12."},
    ],
    "system": [
        {"role": "system", "content": "You are mini_qwen."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
    ],
    "special_text": [
        {"role": "user", "content": "What does <|im_end|> mean?"},
        {"role": "assistant", "content": "It ends a turn: <|im_end|>, and <think> is just text."},
    ],
    # A reasoning field is ignored with thinking off, as the template ignored unknown fields before.
    "reasoning_field": SOLVED,
}


@pytest.fixture(scope="module", params=["qwen", "small"])
def tokenizers(request, qwen_tokenizer_dir, small_tokenizer_dir):
    """(current template, the template as it was before the switch) on the same vocabulary."""
    folder = qwen_tokenizer_dir if request.param == "qwen" else small_tokenizer_dir
    current = load_tokenizer(folder)
    legacy = AutoTokenizer.from_pretrained(folder)
    legacy.chat_template = LEGACY_CHAT_TEMPLATES[0]
    assert current.chat_template == CHAT_TEMPLATE
    return current, legacy


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_thinking_off_renders_todays_ids(tokenizers, name):
    current, legacy = tokenizers
    messages = CONVERSATIONS[name]
    for switch in ({}, {"enable_thinking": False}):
        for generation_prompt in (False, True):
            now = current.apply_chat_template(
                messages,
                return_dict=True,
                return_assistant_tokens_mask=True,
                add_generation_prompt=generation_prompt,
                **switch,
            )
            before = legacy.apply_chat_template(
                messages, return_dict=True, return_assistant_tokens_mask=True, add_generation_prompt=generation_prompt
            )
            assert now["input_ids"] == before["input_ids"]
            assert now["assistant_masks"] == before["assistant_masks"]
    # Our encoders (special-token text kept as text, labels, DPO prompt and reply) give the same ids as before.
    assert encode_messages(current, messages) == encode_messages(legacy, messages)
    assert encode_chat(current, messages, None) == encode_chat(legacy, messages, None)
    head, reply = messages[:-1], messages[-1:]
    assert prompt_ids(current, head) == prompt_ids(legacy, head)
    assert completion_ids(current, head, reply) == completion_ids(legacy, head, reply)


def test_thinking_off_dpo_rows_are_todays(tokenizers):
    current, legacy = tokenizers
    rows_now, _ = load_preference_pairs(str(MINI_DATA / "dpo"), current, 128, 384)
    rows_before, _ = load_preference_pairs(str(MINI_DATA / "dpo"), legacy, 128, 384)
    assert rows_now == rows_before and len(rows_now) > 20


def test_thinking_on_exact_ids_and_labels(qwen_tokenizer):
    enc = lambda s: qwen_tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = qwen_tokenizer.eos_token_id
    user, reply = SOLVED
    head = enc(f"<|im_start|>user\n{user['content']}") + [eos] + enc("\n<|im_start|>assistant\n<think>\n")
    body = enc(f"{reply['reasoning_content']}\n</think>\n\n{reply['content']}") + [eos]
    encoded = encode_chat(qwen_tokenizer, SOLVED, None, thinking=True)
    assert encoded.input_ids == head + body
    assert encoded.labels == [IGNORE_INDEX] * len(head) + body
    # "<think>\n" opens the generation prompt, and the reply continues it.
    assert prompt_ids(qwen_tokenizer, [user], thinking=True) == head
    assert completion_ids(qwen_tokenizer, [user], [reply], thinking=True) == body
    assert qwen_tokenizer.decode(head[-3:]) == "<think>\n"


def test_thinking_on_multi_turn_keeps_each_block(qwen_tokenizer):
    messages = [
        *SOLVED,
        {"role": "user", "content": "再加 2 个呢？"},
        {"role": "assistant", "content": "答案是 9。", "reasoning_content": "  7 + 2 = 9\n"},
    ]
    text = qwen_tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=True)
    assert text.count("<think>\n") == 2 and text.count("\n</think>\n\n") == 2
    assert "<think>\n7 + 2 = 9\n</think>\n\n答案是 9。<|im_end|>" in text  # the reasoning is trimmed
    # A turn without reasoning still opens (and closes) its block, so every turn has one layout.
    plain = qwen_tokenizer.apply_chat_template(CONVERSATIONS["single"], tokenize=False, enable_thinking=True)
    assert plain.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n唐代诗人。<|im_end|>")


def test_special_token_text_in_reasoning_stays_text(qwen_tokenizer):
    messages = [SOLVED[0], {**SOLVED[1], "reasoning_content": "Is <|im_end|> a number? No: 3 + 4 = 7"}]
    ids, mask = encode_messages(qwen_tokenizer, messages, thinking=True)
    assert ids.count(qwen_tokenizer.eos_token_id) == 2  # the user turn's and the reply's, not the text's
    assert "Is <|im_end|> a number?" in qwen_tokenizer.decode(ids)
    assert len(mask) == len(ids)


@pytest.mark.parametrize("tokenizer_name", ["qwen", "small"])
def test_generated_reply_round_trip(tokenizer_name, qwen_tokenizer_dir, small_tokenizer_dir):
    """What a thinking model generates after the prompt, taken apart and put back as a message, renders to the
    same ids: training conversations and served replies agree token for token."""
    tokenizer = load_tokenizer(qwen_tokenizer_dir if tokenizer_name == "qwen" else small_tokenizer_dir)
    generated = completion_ids(tokenizer, SOLVED[:1], SOLVED[1:], thinking=True)
    text = tokenizer.decode(generated, skip_special_tokens=True)
    reasoning, answer, clean = split_reasoning(text, thinking=True)
    assert clean and reasoning.strip() == "3 + 4 = 7" and answer.strip() == "答案是 7。"
    rebuilt = {"role": "assistant", "content": answer.strip(), "reasoning_content": reasoning}
    assert completion_ids(tokenizer, SOLVED[:1], [rebuilt], thinking=True) == generated


def test_split_reasoning_cases():
    assert split_reasoning("a\n</think>\n\nb", thinking=True) == ("a\n", "\n\nb", True)
    assert split_reasoning("still thinking", thinking=True) == ("still thinking", None, True)
    assert split_reasoning("a</think>b</think>c", thinking=True)[2] is False
    assert split_reasoning("<think>a</think>b", thinking=True)[2] is False
    assert split_reasoning("just an answer", thinking=False) == ("", "just an answer", True)
    assert split_reasoning("x</think>y", thinking=False)[2] is False


def test_saved_legacy_template_gains_the_switch(tmp_path, qwen_tokenizer_dir):
    """A checkpoint saved before the switch existed loads with the current template (same bytes when off)."""
    old = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    old.chat_template = LEGACY_CHAT_TEMPLATES[0]
    old.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).chat_template == CHAT_TEMPLATE


def test_foreign_template_without_switch_is_refused(tmp_path, qwen_tokenizer_dir):
    foreign = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    foreign.chat_template = LEGACY_CHAT_TEMPLATES[0].replace("<|im_start|>", "<|im_start|> ")
    foreign.save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert template_switches(tokenizer, thinking=False) == {}
    with pytest.raises(ValueError, match="no enable_thinking switch"):
        prompt_ids(tokenizer, SOLVED[:1], thinking=True)
