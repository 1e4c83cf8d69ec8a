"""Supervised fine-tuning: whole multi-turn conversations, loss on assistant replies only, packed rows.

Single GPU (or CPU)::

    python mini_qwen_sft.py --config configs/sft_full.yaml

Many GPUs (DeepSpeed ZeRO-2)::

    accelerate launch --config_file accelerate_config.yaml mini_qwen_sft.py --config configs/sft_full.yaml

Demo on the bundled data (after the demo PT run)::

    python mini_qwen_sft.py --config configs/sft_demo.yaml

What happens to each Infinity-Instruct row: ``conversations`` -> chat messages (human/gpt/system ->
user/assistant/system) -> the tokenizer's chat template -> labels that supervise every assistant reply
and its ``<|im_end|>``. Rows that cannot be used are skipped and counted per reason. Rows are packed
several to a sequence (``packing_mode isolated``), each conversation attending only to itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from datasets import Dataset
from trl import SFTConfig, SFTTrainer, pack_dataset

from utils.args import parse_args
from utils.chat import SkipRow, conversation_to_messages, encode_chat
from utils.checkpointing import fault_tolerant
from utils.data import DataError, SkipCounter, find_parquet_files, read_rows
from utils.modeling import load_causal_lm, select_attn_implementation
from utils.packing import PackedCollator, files_fingerprint
from utils.tokenizer import load_tokenizer
from utils.training import (
    NonFiniteLossCallback,
    RealTokenShareCallback,
    StageArguments,
    configure_hardware,
    finish,
    log_batch_geometry,
    setup_logging,
    train_and_save,
)

logger = logging.getLogger("mini_qwen")


@dataclass
class SFTArguments(StageArguments):
    model_name_or_path: str = field(
        default="results/pt", metadata={"help": "Checkpoint to fine-tune (the PT output); its tokenizer is used."}
    )
    data_dir: str = field(default="data/sft", metadata={"help": "Folder searched (any depth) for *.parquet."})
    default_system_prompt: str | None = field(
        default=None,
        metadata={"help": "System prompt added to conversations that have none (off: most data has none)."},
    )
    packing_mode: str = field(
        default="isolated",
        metadata={
            "help": "isolated: several conversations per row, each attending only to itself (fast); "
            "padded: one conversation per row, padded (upstream's layout, for comparison).",
            "choices": ["isolated", "padded"],
        },
    )
    cache_dir: str = field(default="cache/sft", metadata={"help": "Where tokenized conversations are cached."})


def _sft_rows(
    files: list[str], tokenizer_dir: str, max_length: int | None, default_system_prompt: str | None, fingerprint: str
):
    """One output row per input row: tokenized, or empty with the reason it is skipped.

    ``fingerprint`` is unused here: it is part of the arguments so that the ``datasets`` cache key
    changes when a file or the tokenizer changes, not only when a path does.
    """
    tokenizer = load_tokenizer(tokenizer_dir)
    for path, row, record in read_rows(files, ["conversations"]):
        try:
            messages = conversation_to_messages(record["conversations"], default_system_prompt)
            encoded = encode_chat(tokenizer, messages, max_length)
        except SkipRow as reason:
            yield {"input_ids": [], "labels": [], "truncated": False, "skip": str(reason)}
            continue
        except (TypeError, AttributeError) as err:
            raise DataError(f"{path}, row {row}: malformed conversation ({err})") from err
        yield {"input_ids": encoded.input_ids, "labels": encoded.labels, "truncated": encoded.truncated, "skip": ""}


def load_sft_dataset(
    data_dir: str,
    tokenizer_dir: str,
    max_length: int | None,
    default_system_prompt: str | None = None,
    num_proc: int = 1,
    cache_dir: str | None = None,
    tokenizer=None,
) -> tuple[Dataset, dict]:
    """Tokenized conversations (``input_ids``, ``labels``) and a summary of what was kept and skipped.

    Built with ``Dataset.from_generator``, so the result is an on-disk Arrow cache that the next run
    (and the other processes of a multi-GPU run) reuse.
    """
    files = [str(p) for p in find_parquet_files(data_dir)]
    logger.info("Found %d parquet files under %s", len(files), data_dir)
    dataset = Dataset.from_generator(
        _sft_rows,
        gen_kwargs={
            "files": files,
            "tokenizer_dir": tokenizer_dir,
            "max_length": max_length,
            "default_system_prompt": default_system_prompt,
            # The caller's loaded tokenizer serves the cache key; the generator loads its own in its process.
            "fingerprint": files_fingerprint(files, tokenizer or load_tokenizer(tokenizer_dir)),
        },
        num_proc=min(num_proc, len(files)) if num_proc > 1 else None,
        cache_dir=cache_dir,
    )
    skips = SkipCounter(reason for reason in dataset["skip"] if reason)
    truncated = sum(dataset["truncated"])
    skips.log("SFT conversations", len(dataset))
    dataset = dataset.filter(lambda skip: not skip, input_columns="skip").remove_columns(["skip", "truncated"])
    lengths = [len(ids) for ids in dataset["input_ids"]]
    supervised = sum(sum(1 for x in labels if x != -100) for labels in dataset["labels"])
    logger.info(
        "SFT data: %d conversations, %d tokens (%d supervised); %d cut at a turn boundary to fit %s tokens",
        len(dataset),
        sum(lengths),
        supervised,
        truncated,
        max_length,
    )
    summary = {
        "files": files,
        "rows": len(dataset) + sum(skips.values()),
        "kept": len(dataset),
        "skipped": dict(skips),
        "truncated": truncated,
        "tokens": sum(lengths),
        "supervised_tokens": supervised,
    }
    return dataset, summary


def main(script_args: SFTArguments, training_args: SFTConfig) -> SFTTrainer:
    setup_logging(training_args)
    if training_args.packing or training_args.padding_free:
        raise ValueError("Use --packing_mode isolated|padded; TRL's packing/padding_free flags are managed here.")
    configure_hardware(script_args.precision, training_args)
    tokenizer = load_tokenizer(script_args.model_name_or_path)

    with training_args.main_process_first(desc="tokenize conversations"):
        dataset, summary = load_sft_dataset(
            script_args.data_dir,
            script_args.model_name_or_path,
            training_args.max_length,
            script_args.default_system_prompt,
            training_args.dataset_num_proc or 1,
            script_args.cache_dir,
            tokenizer,
        )
    if len(dataset) == 0:
        raise DataError(f"No usable conversation under {script_args.data_dir}: skipped {summary['skipped']}")
    if script_args.packing_mode == "isolated":
        # Best-fit-decreasing: whole conversations into rows of at most max_length, none cut. Shuffled
        # first so that a row mixes conversations from every file.
        dataset = pack_dataset(dataset.shuffle(seed=training_args.seed), training_args.max_length, "bfd")
        logger.info("Packed into %d rows of at most %d tokens", len(dataset), training_args.max_length)

    attn = select_attn_implementation(script_args.attn_implementation)
    model = load_causal_lm(script_args.model_name_or_path, attn)
    collator = PackedCollator(attn, tokenizer.pad_token_id, isolate=script_args.packing_mode == "isolated")
    global_batch = log_batch_geometry(training_args)
    # Rows are already tokenized, labelled and packed: TRL's own preparation would only redo it.
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args.remove_unused_columns = False

    guard = NonFiniteLossCallback(training_args)
    trainer = fault_tolerant(SFTTrainer)(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[guard, RealTokenShareCallback(collator)],
    )
    train_and_save(trainer, guard, tokenizer, "sft", script_args, data_summary=summary, global_batch_size=global_batch)
    finish(trainer)
    return trainer


if __name__ == "__main__":
    main(*parse_args((SFTArguments, SFTConfig)))
