"""Supervised fine-tuning: whole multi-turn conversations, loss on assistant replies only, packed rows.

Single GPU (or CPU)::

    python mini_qwen_sft.py --config configs/sft_full.yaml

Many GPUs (DeepSpeed ZeRO-2)::

    accelerate launch --config_file accelerate_config.yaml mini_qwen_sft.py --config configs/sft_full.yaml

Demo on the bundled data (after the demo PT run)::

    python mini_qwen_sft.py --config configs/sft_demo.yaml

LoRA on one GPU of 24 GB (16 GB: configs/sft_lora_16gb.yaml; QLoRA: add --load_in_4bit true); the output folder
holds the merged full model, and the adapters in its adapter/ folder (``utils/train/adapters.py``)::

    python mini_qwen_sft.py --config configs/sft_lora_24gb.yaml

Each Infinity-Instruct row becomes one tokenized conversation (``utils/data/sft.py``); conversations are packed
several to a row (``layout isolated``), each attending only to itself (``utils/data/collate.py``). At the end
of every epoch ``run_info.json`` records which checkpoint closed it (``epoch_checkpoints``), so that DPO can
start from a chosen epoch.
"""

from __future__ import annotations

import logging
from argparse import Namespace
from dataclasses import dataclass, field
from typing import ClassVar

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer, pack_dataset

from utils.data.collate import LAYOUT_HELP, LAYOUTS, PackedCollator
from utils.data.parquet import DataError
from utils.data.sft import load_sft_dataset
from utils.run_info import record_in_run_info
from utils.tokenizer import load_tokenizer
from utils.train.adapters import (
    AdapterArguments,
    check_adapter_values,
    check_not_adapters,
    load_base_model,
    peft_config,
)
from utils.train.args import parse_args
from utils.train.callbacks import RealTokenShareCallback
from utils.train.processes import finish
from utils.train.stage import log_batch_geometry, setup_logging, train_and_save
from utils.train.stage_args import StageArguments, check_holdout

logger = logging.getLogger(__name__)


@dataclass
class SFTArguments(StageArguments, AdapterArguments):
    model_name_or_path: str = field(
        default="results/pt", metadata={"help": "Checkpoint to fine-tune (the PT output); its tokenizer is used."}
    )
    data_dir: str = field(default="data/sft", metadata={"help": "Folder searched (any depth) for *.parquet."})
    default_system_prompt: str | None = field(
        default=None,
        metadata={"help": "System prompt added to conversations that have none (off: most data has none)."},
    )
    reasoning_data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Math problems with worked solutions (question, answer ending in '#### N': GSM8K's layout, "
            "mini_data/grpo/sft) to mix in as conversations that reason in a think block before answering "
            "(the chat template's thinking switch on). Where a model learns the layout that GRPO rewards; off by "
            "default."
        },
    )
    layout: str = field(default="isolated", metadata={"help": LAYOUT_HELP, "choices": list(LAYOUTS)})
    cache_dir: str = field(default="cache/sft", metadata={"help": "Where tokenized conversations are cached."})
    holdout: float = field(
        default=0.0,
        metadata={
            "help": "Share of conversations never trained on (chosen by a hash of their text, so eval and reruns "
            "agree); their loss is logged at every eval_steps as eval_loss, the held-out curve. 0: none."
        },
    )

    # Rows are already tokenized, labelled and packed: TRL's own preparation would only redo it.
    TRAINING_OVERRIDES: ClassVar[dict] = {
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "remove_unused_columns": False,
    }

    # The name this choice had before it was the same word as PT's; accepted for one more release.
    RENAMED: ClassVar[dict] = {"packing_mode": ("layout", {"padded": "one_per_row"})}

    @classmethod
    def validate(cls, ns: Namespace) -> None:
        check_holdout(ns)
        if ns.packing or ns.padding_free:
            raise ValueError(f"use --layout ({', '.join(LAYOUTS)}); TRL's packing/padding_free flags are managed here")
        check_adapter_values(ns)
        check_not_adapters(ns.model_name_or_path)


class EpochCheckpointCallback(TrainerCallback):
    """Record in run_info.json which checkpoint ends each epoch (``{"1": "checkpoint-7730", ...}``)."""

    def on_save(self, args, state, control, **kwargs):
        epoch = round(state.epoch or 0)
        if not args.should_save or abs((state.epoch or 0) - epoch) > 1e-6 or epoch == 0:
            return
        checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        record_in_run_info(args.output_dir, "epoch_checkpoints", str(epoch), checkpoint)


def lay_out(dataset, layout: str, training_args: SFTConfig):
    """Conversations in the rows of ``layout``: packed best-fit-decreasing into rows of at most max_length, none cut
    (shuffled first, so that a row mixes conversations from every file), or one per row."""
    if layout == "one_per_row":
        return dataset
    packed = pack_dataset(dataset.shuffle(seed=training_args.seed), training_args.max_length, "bfd")
    # Without the lengths the collator sees one sequence per row: conversations attend to earlier ones.
    return packed.remove_columns("seq_lengths") if layout == "cross_document" else packed


def main(script_args: SFTArguments, training_args: SFTConfig) -> SFTTrainer:
    setup_logging(training_args, script_args.settled_notes)
    tokenizer = load_tokenizer(script_args.model_name_or_path)
    with training_args.main_process_first(desc="tokenize conversations"):
        dataset, heldout, summary = load_sft_dataset(
            script_args.data_dir,
            script_args.model_name_or_path,
            training_args.max_length,
            script_args.default_system_prompt,
            training_args.dataset_num_proc or 1,
            script_args.cache_dir,
            tokenizer,
            script_args.holdout,
            script_args.reasoning_data_dir,
        )
    if len(dataset) == 0:
        raise DataError(f"No usable conversation under {script_args.data_dir}: skipped {summary['skipped']}")
    conversations = len(dataset)
    dataset = lay_out(dataset, script_args.layout, training_args)
    logger.info(
        "Layout %s: %d conversations to train on in %d rows of at most %d tokens",
        script_args.layout,
        conversations,
        len(dataset),
        training_args.max_length,
    )
    if heldout is not None:
        if len(heldout) == 0:
            raise DataError(f"holdout={script_args.holdout} holds out no conversation of {script_args.data_dir}")
        heldout = lay_out(heldout, script_args.layout, training_args)
    summary["rows_per_epoch"] = len(dataset)

    model = load_base_model(script_args.model_name_or_path, script_args)
    collator = PackedCollator(
        tokenizer.pad_token_id,
        isolate=script_args.layout != "one_per_row",
        single_row=script_args.attn_implementation == "flash_attention_2",
    )
    global_batch = log_batch_geometry(training_args)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=heldout,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[RealTokenShareCallback(collator), EpochCheckpointCallback()],
        peft_config=peft_config(script_args),
    )
    tokens_per_step = global_batch * summary["tokens"] / max(summary["rows_per_epoch"], 1)  # an average packed row
    train_and_save(
        trainer,
        tokenizer,
        "sft",
        script_args,
        seen_per_step={"tokens": tokens_per_step},
        data_summary=summary,
        global_batch_size=global_batch,
    )
    finish(trainer)
    return trainer


if __name__ == "__main__":
    main(*parse_args((SFTArguments, SFTConfig)))
