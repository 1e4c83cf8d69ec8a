"""Chat data: converting dataset rows to messages, and messages to token ids and labels.

Every chat format comes from the tokenizer's chat template (``utils.tokenizer.CHAT_TEMPLATE``, saved
with every checkpoint), so training, evaluation and ``apply_chat_template`` never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from utils.packing import IGNORE_INDEX

# Infinity-Instruct speaker names -> chat roles.
ROLE_MAP = {"human": "user", "gpt": "assistant", "system": "system"}


class SkipRow(ValueError):
    """A row that is skipped and counted; the message is the reason (the counter's key)."""


def conversation_to_messages(conversation, default_system_prompt: str | None = None) -> list[dict]:
    """Infinity-Instruct ``[{from, value}, ...]`` -> ``[{role, content}, ...]``, or raise ``SkipRow``.

    Skipped: an empty conversation, an unknown speaker, a non-text value, a system turn that is not
    first, or a conversation that does not end with the assistant (nothing to learn at its end).
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
        messages.append({"role": role, "content": turn["value"]})
    if messages[-1]["role"] != "assistant":
        raise SkipRow("does not end with an assistant turn")
    if default_system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": default_system_prompt})
    return messages


@dataclass
class EncodedChat:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def _encode(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> tuple[list[int], list[int]]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, add_generation_prompt=False
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    return ids, [tok if bit else IGNORE_INDEX for tok, bit in zip(ids, mask)]


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_length: int | None) -> EncodedChat:
    """Token ids and labels of a conversation; only assistant replies and their ``<|im_end|>`` are supervised.

    A conversation longer than ``max_length`` is cut after the last assistant turn that still fits, so
    no reply is cut in half. If not even the first assistant turn fits, raise ``SkipRow``.
    """
    ids, labels = _encode(tokenizer, messages)
    truncated = False
    if max_length is not None and len(ids) > max_length:
        truncated = True
        ends = [i + 1 for i, m in enumerate(messages) if m["role"] == "assistant"][:-1]
        for end in reversed(ends):
            ids, labels = _encode(tokenizer, messages[:end])
            if len(ids) <= max_length:
                break
        else:
            raise SkipRow("no complete assistant turn fits in max_length")
    if all(label == IGNORE_INDEX for label in labels):
        raise SkipRow("no supervised tokens")
    return EncodedChat(ids, labels, truncated)


def _reply(messages, which: str) -> tuple[str, str]:
    """(user text, assistant reply) of an Infinity-Preference ``[user, assistant]`` list."""
    if not isinstance(messages, list) or len(messages) != 2:
        raise SkipRow(f"{which} is not a [user, assistant] pair")
    user, assistant = messages
    if (user or {}).get("role") != "user" or (assistant or {}).get("role") != "assistant":
        raise SkipRow("roles out of order")
    if not isinstance(user.get("content"), str) or not isinstance(assistant.get("content"), str):
        raise SkipRow("missing text")
    if not assistant["content"].strip():
        raise SkipRow("empty reply")
    return user["content"], assistant["content"]


def keep_last_tokens(tokenizer: PreTrainedTokenizerBase, text: str, budget: int) -> tuple[str, bool]:
    """The end of ``text`` that fits in ``budget`` tokens (cut on a token boundary), and whether it was cut."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= budget:
        return text, False
    start = enc["offset_mapping"][len(enc["input_ids"]) - budget][0] if budget > 0 else len(text)
    return text[start:], True


@dataclass
class PreferencePair:
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    prompt_cut: bool

    def as_row(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


def preference_pair(
    row: dict, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int | None = None
) -> PreferencePair:
    """An Infinity-Preference row -> TRL's conversational preference format, or raise ``SkipRow``.

    The prompt becomes ``[user]`` (rendered by the chat template with the generation prompt); chosen
    and rejected become ``[assistant]`` replies (the template closes each with ``<|im_end|>``). A prompt
    over ``max_prompt_length`` tokens keeps its end, where the question usually is.
    """
    user_c, chosen = _reply(row.get("chosen"), "chosen")
    user_r, rejected = _reply(row.get("rejected"), "rejected")
    if user_c != user_r:
        raise SkipRow("chosen and rejected answer different prompts")
    if chosen.strip() == rejected.strip():
        raise SkipRow("chosen equals rejected")
    if not user_c.strip():
        raise SkipRow("empty prompt")
    prompt_cut = False
    if max_prompt_length:
        # Template overhead: "<|im_start|>user\n" ... "<|im_end|>\n<|im_start|>assistant\n".
        overhead = len(prompt_ids(tokenizer, [{"role": "user", "content": ""}]))
        user_c, prompt_cut = keep_last_tokens(tokenizer, user_c, max_prompt_length - overhead)
    return PreferencePair(
        prompt=[{"role": "user", "content": user_c}],
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
        prompt_cut=prompt_cut,
    )


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> list[int]:
    """Token ids of ``messages`` followed by the assistant generation prompt."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
    return list(out["input_ids"])


def pair_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: list[dict], reply: list[dict]) -> list[int]:
    """Completion ids of ``reply`` after ``prompt``, as TRL's DPOTrainer cuts them (ends with <|im_end|>)."""
    head = prompt_ids(tokenizer, prompt)
    full = tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=True)["input_ids"]
    if list(full[: len(head)]) != head:
        raise ValueError("the chat template does not render the prompt as a prefix of prompt + reply")
    return list(full[len(head) :])
