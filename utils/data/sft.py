"""SFT data: Infinity-Instruct conversations -> token ids and assistant-only labels, cached, every skip counted.

What happens to each row: ``conversations`` -> chat messages (human/gpt/system -> user/assistant/system) ->
the tokenizer's chat template -> labels that supervise every assistant reply and its ``<|im_end|>``. Rows that
cannot be used are kept as empty rows carrying the reason, counted, then filtered out. The result is an
on-disk Arrow dataset that the next run (and the other processes of a multi-GPU run) reuse; its cache key is
a fingerprint of the input files, the tokenizer and the settings, not a hash of Python objects.

Optionally (``reasoning_data_dir``) math problems with worked solutions join them as conversations that reason
in a think block before answering (``utils.data.problems.reasoning_messages``): where a thinking model learns the
layout that GRPO later rewards.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pyarrow.compute as pc
from datasets import Dataset
from datasets.exceptions import DatasetGenerationError

from utils.data.chat import SkipRow, conversation_to_messages, encode_chat
from utils.data.collate import IGNORE_INDEX
from utils.data.parquet import (
    INVALID_UTF8,
    DataError,
    SkipCounter,
    files_fingerprint,
    find_parquet_files,
    heldout_fraction,
    read_rows,
)
from utils.data.problems import problem_rows, reasoning_messages
from utils.tokenizer import load_tokenizer, tokenizer_fingerprint

logger = logging.getLogger(__name__)

SFT_CACHE_VERSION = 3


@lru_cache(maxsize=2)
def _worker_tokenizer(tokenizer_dir: str):
    """One tokenizer per process: datasets calls the generator once per file (shard), and loading costs ~1 s."""
    return load_tokenizer(tokenizer_dir)


def conversation_text(conversation: list[dict]) -> str:
    """What decides whether an Infinity-Instruct conversation is held out (``heldout_fraction``): its turns as the
    file holds them (speaker and text), before any recipe option such as a default system prompt changes them."""
    return "\n".join(f"{turn.get('from')}: {turn.get('value')}" for turn in conversation)


def _records(path: str, reasoning_dir: str | None) -> Iterator[tuple[int, dict | SkipRow | None, bool]]:
    """``(row, record, thinking)`` of one file: Infinity-Instruct conversations, or (under ``reasoning_dir``) math
    problems with worked solutions, which become reasoning conversations."""
    if reasoning_dir is not None and Path(path).resolve().is_relative_to(Path(reasoning_dir).resolve()):
        for row, record in problem_rows(Path(path)):
            yield row, record, True
    else:
        for _, row, record in read_rows([path], ["conversations"]):
            yield row, record, False


def _sft_rows(
    files: list[str],
    tokenizer_dir: str,
    max_length: int | None,
    default_system_prompt: str | None,
    holdout: float,
    reasoning_dir: str | None = None,
):
    """One output row per input row: tokenized, or empty with the reason it is skipped."""
    tokenizer = _worker_tokenizer(tokenizer_dir)
    for path in files:
        yield from _file_rows(tokenizer, path, max_length, default_system_prompt, holdout, reasoning_dir)


def _file_rows(tokenizer, path: str, max_length, default_system_prompt, holdout: float, reasoning_dir):
    """The output rows of one file (see ``_sft_rows``)."""
    for row, record, thinking in _records(path, reasoning_dir):
        try:
            if record is None:
                raise SkipRow(INVALID_UTF8)
            if isinstance(record, SkipRow):
                raise record
            if thinking:
                messages = reasoning_messages(record)
                if default_system_prompt:
                    messages.insert(0, {"role": "system", "content": default_system_prompt})
                text = f"{record['question']}\n{record['answer']}"
            else:
                messages = conversation_to_messages(record["conversations"], default_system_prompt)
                text = conversation_text(record["conversations"])
            encoded = encode_chat(tokenizer, messages, max_length, thinking=thinking)
        except SkipRow as reason:
            yield {
                "input_ids": [],
                "labels": [],
                "supervised": 0,
                "truncated": False,
                "heldout": False,
                "skip": str(reason),
                "where": f"{path}, row {row}",
            }
            continue
        except (TypeError, AttributeError) as err:
            raise DataError(f"{path}, row {row}: malformed conversation ({err})") from err
        supervised = sum(label != IGNORE_INDEX for label in encoded.labels)
        yield {
            "input_ids": encoded.input_ids,
            "labels": encoded.labels,
            "supervised": supervised,
            "truncated": encoded.truncated,
            "heldout": holdout > 0 and heldout_fraction(text) < holdout,
            "skip": "",
            "where": "",
        }


def load_sft_dataset(
    data_dir: str,
    tokenizer_dir: str,
    max_length: int | None,
    default_system_prompt: str | None = None,
    num_proc: int = 1,
    cache_dir: str | None = None,
    tokenizer=None,
    holdout: float = 0.0,
    reasoning_data_dir: str | None = None,
) -> tuple[Dataset, Dataset | None, dict]:
    """Tokenized conversations (``input_ids``, ``labels``) to train on, the held-out ones (a ``holdout`` share chosen
    by ``heldout_fraction`` of each conversation; None without a share), and a summary of what was kept, held out,
    skipped and cut. ``num_proc`` processes tokenize the files in parallel (one file is never split).

    ``reasoning_data_dir``: math problems with worked solutions (``utils.data.problems``), added as conversations
    rendered with thinking on (the solution in the think block, then the final number), so that the model learns
    the layout that GRPO's rewards check."""
    files = [str(p) for p in find_parquet_files(data_dir)]
    logger.info("Found %d parquet files under %s", len(files), data_dir)
    if reasoning_data_dir:
        reasoning_files = [str(p) for p in find_parquet_files(reasoning_data_dir)]
        logger.info(
            "Found %d problem files under %s (reasoning conversations)", len(reasoning_files), reasoning_data_dir
        )
        files += reasoning_files
    tokenizer = tokenizer or load_tokenizer(tokenizer_dir)
    settings = (
        f"sft-v{SFT_CACHE_VERSION}",
        tokenizer_fingerprint(tokenizer),
        f"{max_length}",
        f"{default_system_prompt}",
        f"holdout={holdout}",
        *([f"reasoning={reasoning_data_dir}"] if reasoning_data_dir else []),
    )
    gen_kwargs = {
        "files": files,
        "tokenizer_dir": tokenizer_dir,
        "max_length": max_length,
        "default_system_prompt": default_system_prompt,
        "holdout": holdout,
        "reasoning_dir": reasoning_data_dir,
    }
    try:
        dataset = Dataset.from_generator(
            _sft_rows,
            gen_kwargs=gen_kwargs,
            num_proc=min(num_proc, len(files)) if num_proc > 1 else None,
            cache_dir=cache_dir,
            fingerprint=files_fingerprint(files, *settings),
        )
    except DatasetGenerationError as err:
        # datasets wraps whatever the generator raised; our DataError names the file and row, so surface it.
        cause = err.__cause__
        while cause is not None and not isinstance(cause, DataError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
    # Counted with Arrow kernels over whole columns: no Python loop over millions of rows.
    table = dataset.data.table
    kept_mask = pc.equal(table["skip"], "")
    skipped = table.filter(pc.invert(kept_mask)).select(["skip", "where"]).to_pylist()
    skips = SkipCounter()
    for row in skipped:
        skips.skip(row["skip"], row["where"])
    skips.log("SFT conversations", len(dataset))
    # Skipped rows are empty (no tokens, not truncated), so whole-column sums count the kept rows only.
    summary = {
        "files": files,
        "rows": len(dataset),
        "kept": len(dataset) - sum(skips.values()),
        "skipped": dict(skips),
        "truncated": int(pc.sum(table["truncated"].cast("int64")).as_py() or 0),
        "tokens": int(pc.sum(pc.list_value_length(table["input_ids"])).as_py() or 0),
        "supervised_tokens": int(pc.sum(table["supervised"]).as_py() or 0),
        "heldout": int(pc.sum(table["heldout"].cast("int64")).as_py() or 0),
    }
    kept = dataset.filter(lambda skip: [not s for s in skip], input_columns="skip", batched=True)
    logger.info(
        "SFT data: %d conversations, %d tokens (%d supervised); %d cut at a turn boundary to fit %s tokens",
        summary["kept"],
        summary["tokens"],
        summary["supervised_tokens"],
        summary["truncated"],
        max_length,
    )
    kept = kept.remove_columns(["skip", "where", "truncated", "supervised"])
    if not holdout:
        return kept.remove_columns("heldout"), None, summary
    train = kept.filter(lambda held: [not h for h in held], input_columns="heldout", batched=True)
    heldout = kept.filter(lambda held: held, input_columns="heldout", batched=True)
    logger.info(
        "Held out of training: %d conversations (%.1f%%, chosen by a hash of their text)", len(heldout), 100 * holdout
    )
    return train.remove_columns("heldout"), heldout.remove_columns("heldout"), summary
