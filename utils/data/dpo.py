"""DPO data: Infinity-Preference rows -> tokenized (prompt, chosen, rejected) triples, with every skip counted.

Rows are tokenized here, not by TRL, for two reasons: message text that spells a special token must stay
text (``utils.data.chat.encode_messages``), and every pair that is dropped or cut must be counted in the log and
``run_info.json`` (TRL filters fully truncated pairs silently).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from datasets import Dataset
from trl import DPOTrainer

from utils.data.chat import SkipRow, completion_ids, keep_last_tokens, prompt_ids
from utils.data.parquet import INVALID_UTF8, DataError, SkipCounter, find_parquet_files, read_rows

logger = logging.getLogger(__name__)

# Only the replies are read: each holds its own copy of the user turn, and the `prompt` column is not needed.
PREFERENCE_COLUMNS = ["chosen", "rejected"]
ID_COLUMNS = ["prompt_ids", "chosen_ids", "rejected_ids"]


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


@dataclass
class PreferencePair:
    prompt: list[dict]
    chosen: list[dict]
    rejected: list[dict]
    prompt_cut: bool


def preference_pair(row: dict, tokenizer, max_prompt_length: int | None = None) -> PreferencePair:
    """An Infinity-Preference row -> conversational (prompt, chosen, rejected), or raise ``SkipRow``.

    The prompt becomes ``[user]`` (rendered with the generation prompt); chosen and rejected become
    ``[assistant]`` replies (the template closes each with ``<|im_end|>``). A prompt over ``max_prompt_length``
    tokens keeps its end, where the question usually is.
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
        overhead = len(prompt_ids(tokenizer, [{"role": "user", "content": ""}]))  # the template around it
        user_c, prompt_cut = keep_last_tokens(tokenizer, user_c, max_prompt_length - overhead)
    return PreferencePair(
        [{"role": "user", "content": user_c}],
        [{"role": "assistant", "content": chosen}],
        [{"role": "assistant", "content": rejected}],
        prompt_cut,
    )


def encode_pair(tokenizer, pair: PreferencePair) -> dict:
    """TRL's pre-tokenized preference row: prompt ids (with the generation prompt) and each reply's ids."""
    return {
        "prompt_ids": prompt_ids(tokenizer, pair.prompt),
        "chosen_ids": completion_ids(tokenizer, pair.prompt, pair.chosen),
        "rejected_ids": completion_ids(tokenizer, pair.prompt, pair.rejected),
    }


def load_preference_pairs(data_dir: str, tokenizer, max_prompt_length: int, max_length: int | None):
    """Tokenized pairs and a summary of what was kept, skipped (per reason) and cut."""
    files = find_parquet_files(data_dir)
    skips, rows, cut, long_replies = SkipCounter(), [], 0, 0
    total = 0
    for path, index, record in read_rows(files, PREFERENCE_COLUMNS):
        total += 1
        try:
            if record is None:
                raise SkipRow(INVALID_UTF8)
            pair = preference_pair(record, tokenizer, max_prompt_length)
            encoded = encode_pair(tokenizer, pair)
            if max_length is not None and len(encoded["prompt_ids"]) >= max_length:
                raise SkipRow("prompt fills max_length")
        except SkipRow as reason:
            skips.skip(str(reason), f"{path}, row {index}")
            continue
        except (TypeError, AttributeError) as err:
            raise DataError(f"{path}, row {index}: malformed preference row ({err})") from err
        cut += pair.prompt_cut
        n_prompt = len(encoded["prompt_ids"])
        longest = max(len(encoded["chosen_ids"]), len(encoded["rejected_ids"]))
        long_replies += max_length is not None and n_prompt + longest > max_length
        rows.append(encoded)
    skips.log("Preference pairs", total)
    logger.info(
        "%d prompts kept only their last %d tokens; %d pairs have a reply that max_length=%s cuts",
        cut,
        max_prompt_length,
        long_replies,
        max_length,
    )
    summary = {
        "files": [str(f) for f in files],
        "rows": total,
        "kept": len(rows),
        "skipped": dict(skips),
        "prompts_cut": cut,
        "replies_cut": long_replies,
    }
    return rows, summary


def split_holdout(rows: list[dict], holdout: float, seed: int) -> tuple[list[dict], list[dict]]:
    """``holdout`` pairs (a share below 1, a count from 1) never trained on, chosen at random by ``seed``."""
    n = int(holdout) if holdout >= 1 else max(1, round(len(rows) * holdout)) if holdout > 0 else 0
    if n >= len(rows):
        raise DataError(f"holdout={holdout} leaves no pair to train on ({len(rows)} pairs)")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in order[n:]], [rows[i] for i in order[:n]]


class PreTokenizedDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer on rows that ``load_preference_pairs`` already tokenized and filtered.

    TRL 1.16 has no public switch to skip its own tokenization (SFT has ``skip_prepare_dataset``), so this
    overrides the one private method that does it; ``tests/test_stages.py`` fails if TRL renames it or stops
    calling it."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        missing = [c for c in ID_COLUMNS if c not in dataset.column_names]
        if missing:
            raise ValueError(f"{dataset_name} dataset is not pre-tokenized: missing {missing}")
        return dataset


def as_dataset(rows: list[dict]) -> Dataset:
    return Dataset.from_dict({c: [r[c] for r in rows] for c in ID_COLUMNS})
