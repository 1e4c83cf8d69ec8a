"""Chat data: converting dataset rows to messages, and messages to token ids and labels.

Every chat format comes from the tokenizer's chat template (``utils.tokenizer.CHAT_TEMPLATE``, saved
with every checkpoint), so training, evaluation and ``apply_chat_template`` never disagree. One exception is
deliberate: text inside a message that spells a special token (``"What does <|im_end|> mean?"``) is encoded
as the text it is, never as the control token, so data cannot forge turn boundaries (``encode_messages``).

``thinking`` is the template's thinking switch: each assistant turn then opens a think block holding its
``reasoning_content`` before its ``content``, and the generation prompt opens one (``split_reasoning`` takes a
generated reply apart again).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from utils.data.collate import IGNORE_INDEX
from utils.tokenizer import THINK_CLOSE, THINK_OPEN, THINKING_SWITCH, supports_thinking

# Infinity-Instruct speaker names -> chat roles.
ROLE_MAP = {"human": "user", "gpt": "assistant", "system": "system"}
# Stands for one message's content while the template is rendered: private-use characters, never special and
# never merged with the template's own text by the pre-tokenizer.
PLACEHOLDER = "\ue000{}\ue001"
# The message fields the template renders verbatim (the reasoning trimmed), in the order it renders them.
TEXT_FIELDS = ("reasoning_content", "content")


class SkipRow(ValueError):
    """A row that is skipped and counted; the message is the reason (the counter's key)."""


def conversation_to_messages(conversation, default_system_prompt: str | None = None) -> list[dict]:
    """Infinity-Instruct ``[{from, value}, ...]`` -> ``[{role, content}, ...]``, or raise ``SkipRow``.

    Skipped: an empty conversation, an unknown speaker, a non-text value, an empty user or assistant turn (it
    would teach the model to answer nothing), a system turn that is not first, or a conversation that does not
    end with the assistant (nothing to learn at its end). An empty system turn is dropped.
    """
    if not conversation:
        raise SkipRow("empty conversation")
    messages = []
    for turn in conversation:
        role = ROLE_MAP.get((turn or {}).get("from"))
        if role is None:
            raise SkipRow("unknown role")
        if not isinstance(turn.get("value"), str):
            raise SkipRow("missing text")
        if role == "system" and messages:
            raise SkipRow("system turn not first")
        if not turn["value"].strip():
            if role == "system":
                continue
            raise SkipRow(f"empty {role} turn")
        messages.append({"role": role, "content": turn["value"]})
    if not messages or messages[-1]["role"] != "assistant":
        raise SkipRow("does not end with an assistant turn")
    if default_system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": default_system_prompt})
    return messages


def special_texts(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Strings the tokenizer would turn into special (control) tokens."""
    return [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]


def template_switches(tokenizer: PreTrainedTokenizerBase, thinking: bool) -> dict:
    """The keyword arguments of ``apply_chat_template`` for the thinking switch: none when off, so that the render
    is byte for byte the one from before the switch existed."""
    if not thinking:
        return {}
    if not supports_thinking(tokenizer):
        raise ValueError(f"thinking was asked for, but this tokenizer's chat template has no {THINKING_SWITCH} switch")
    return {THINKING_SWITCH: True}


def _shown(message: dict, field: str, thinking: bool) -> str | None:
    """The text of ``field`` as the template renders it, or None when it is not rendered."""
    value = message.get(field)
    if field == "content":
        return value
    if not thinking or message["role"] != "assistant" or not isinstance(value, str):
        return None
    return value.strip()  # the template trims the reasoning (Jinja's trim is str.strip)


def encode_messages(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    add_generation_prompt: bool = False,
    thinking: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids of ``messages`` through the chat template, and the assistant mask (1 = inside a
    ``{% generation %}`` block: an assistant reply and its end-of-turn token; with ``thinking``, also its reasoning
    and ``</think>``).

    Texts are tokenized as plain text: when one spells a special token, the template is rendered around
    placeholders and each text is tokenized on its own with ``split_special_tokens``, as pretraining
    text is. Otherwise the ids are exactly ``apply_chat_template``'s.
    """
    specials = special_texts(tokenizer)
    texts = []  # (message index, field, text as rendered), in the order the template renders them
    for i, message in enumerate(messages):
        for field in TEXT_FIELDS:
            text = _shown(message, field, thinking)
            if text is not None:
                texts.append((i, field, text))
    plain = not any(s in text for _, _, text in texts for s in specials)
    marks = [PLACEHOLDER.format(n) for n in range(len(texts))]
    rendered = [dict(m) for m in messages]
    if not plain:
        for (i, field, _), mark in zip(texts, marks):
            rendered[i][field] = mark
    out = tokenizer.apply_chat_template(
        rendered,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt,
        **template_switches(tokenizer, thinking),
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if plain:
        return ids, mask
    result_ids, result_mask, pos = [], [], 0
    for (_, _, text), mark in zip(texts, marks):
        mark_ids = tokenizer(mark, add_special_tokens=False)["input_ids"]
        at = next((i for i in range(pos, len(ids)) if ids[i : i + len(mark_ids)] == mark_ids), None)
        if at is None:
            raise ValueError("the chat template does not render message texts verbatim")
        text_ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        result_ids += ids[pos:at] + text_ids
        result_mask += mask[pos:at] + [mask[at]] * len(text_ids)
        pos = at + len(mark_ids)
    return result_ids + ids[pos:], result_mask + mask[pos:]


def split_reasoning(text: str, thinking: bool) -> tuple[str, str | None, bool]:
    """A generated reply taken apart: ``(reasoning, answer, clean)``.

    With ``thinking`` the reply continues a prompt that opened the think block: the reasoning is what comes before
    the first ``</think>``, the answer what follows it (None when the block never closed). Without, the whole
    reply is the answer. ``clean``: no other think tag anywhere (a second block, or tags in the answer)."""
    if not thinking:
        return "", text, THINK_OPEN not in text and THINK_CLOSE not in text
    if THINK_CLOSE not in text:
        return text, None, THINK_OPEN not in text
    reasoning, answer = text.split(THINK_CLOSE, 1)
    clean = THINK_OPEN not in reasoning and THINK_OPEN not in answer and THINK_CLOSE not in answer
    return reasoning, answer, clean


def reply_message(text: str, thinking: bool) -> dict:
    """A generated reply as a message: the answer as ``content`` and, with thinking, the think block's text apart as
    ``reasoning_content`` (as OpenAI-compatible servers return it; a block that never closed is all reasoning)."""
    if not thinking:
        return {"content": text}
    reasoning, answer, _ = split_reasoning(text, thinking=True)
    return {"content": (answer or "").strip(), "reasoning_content": reasoning.strip()}


@dataclass
class EncodedChat:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def _encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict], thinking: bool) -> tuple[list[int], list[int]]:
    ids, mask = encode_messages(tokenizer, messages, thinking=thinking)
    return ids, [tok if bit else IGNORE_INDEX for tok, bit in zip(ids, mask)]


def encode_chat(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int | None, thinking: bool = False
) -> EncodedChat:
    """Token ids and labels of a conversation; only assistant replies and their ``<|im_end|>`` are supervised
    (with ``thinking``, their reasoning and ``</think>`` too).

    A conversation longer than ``max_length`` is cut after the last assistant turn that still fits, so
    no reply is cut in half. If not even the first assistant turn fits, raise ``SkipRow``.
    """
    ids, labels = _encode(tokenizer, messages, thinking)
    truncated = False
    if max_length is not None and len(ids) > max_length:
        truncated = True
        ends = [i + 1 for i, m in enumerate(messages) if m["role"] == "assistant"][:-1]
        for end in reversed(ends):
            ids, labels = _encode(tokenizer, messages[:end], thinking)
            if len(ids) <= max_length:
                break
        else:
            raise SkipRow("no complete assistant turn fits in max_length")
    if all(label == IGNORE_INDEX for label in labels):
        raise SkipRow("no supervised tokens")
    return EncodedChat(ids, labels, truncated)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict], thinking: bool = False) -> list[int]:
    """Token ids of ``messages`` followed by the assistant generation prompt (with ``thinking``, ending in an
    opened think block)."""
    return encode_messages(tokenizer, messages, add_generation_prompt=True, thinking=thinking)[0]


def completion_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: list[dict], reply: list[dict], thinking: bool = False
) -> list[int]:
    """Ids of ``reply`` after ``prompt`` as one conversation renders them (ends with <|im_end|>)."""
    head = prompt_ids(tokenizer, prompt, thinking)
    full = encode_messages(tokenizer, prompt + reply, thinking=thinking)[0]
    if full[: len(head)] != head:
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + reply")
    return full[len(head) :]


def keep_last_tokens(tokenizer: PreTrainedTokenizerBase, text: str, budget: int) -> tuple[str, bool]:
    """The end of ``text`` that fits in ``budget`` tokens (cut on a token boundary), and whether it was cut."""
    enc = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= budget:
        return text, False
    start = enc["offset_mapping"][len(enc["input_ids"]) - budget][0] if budget > 0 else len(text)
    return text[start:], True
