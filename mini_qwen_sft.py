"""Supervised fine-tuning: whole multi-turn conversations, loss on assistant replies only, packed rows.

Single GPU (or CPU)::

    python mini_qwen_sft.py --config configs/sft_full.yaml

Many GPUs (DeepSpeed ZeRO-2)::

    accelerate launch --config_file accelerate_config.yaml mini_qwen_sft.py --config configs/sft_full.yaml

Demo on the bundled data (after the demo PT run)::

    python mini_qwen_sft.py --config configs/sft_demo.yaml

Each Infinity-Instruct row becomes one tokenized conversation (``utils/sft_data.py``); conversations are packed
several to a row (``packing_mode isolated``), each attending only to itself (``utils/collate.py``). At the end
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

from utils.args import parse_args
from utils.callbacks import RealTokenShareCallback
from utils.collate import PackedCollator
from utils.data import DataError
from utils.modeling import load_causal_lm
from utils.run_info import record_in_run_info
from utils.sft_data import load_sft_dataset
from utils.stage import finish, log_batch_geometry, setup_logging, train_and_save
from utils.stage_args import StageArguments
from utils.tokenizer import load_tokenizer

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

    # Rows are already tokenized, labelled and packed: TRL's own preparation would only redo it.
    TRAINING_OVERRIDES: ClassVar[dict] = {"dataset_kwargs": {"skip_prepare_dataset": True},
                                          "remove_unused_columns": False}  # fmt: skip

    @classmethod
    def validate(cls, ns: Namespace) -> None:
        if ns.packing or ns.padding_free:
            raise ValueError("use --packing_mode isolated|padded; TRL's packing/padding_free flags are managed here")


class EpochCheckpointCallback(TrainerCallback):
    """Record in run_info.json which checkpoint ends each epoch (``{"1": "checkpoint-7730", ...}``)."""

    def on_save(self, args, state, control, **kwargs):
        epoch = round(state.epoch or 0)
        if not args.should_save or abs((state.epoch or 0) - epoch) > 1e-6 or epoch == 0:
            return
        checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        record_in_run_info(args.output_dir, "epoch_checkpoints", str(epoch), checkpoint)


def main(script_args: SFTArguments, training_args: SFTConfig) -> SFTTrainer:
    setup_logging(training_args, script_args.settled_notes)
    tokenizer = load_tokenizer(script_args.model_name_or_path)
    with training_args.main_process_first(desc="tokenize conversations"):
        dataset, summary = load_sft_dataset(script_args.data_dir, script_args.model_name_or_path,
                                            training_args.max_length, script_args.default_system_prompt,
                                            training_args.dataset_num_proc or 1, script_args.cache_dir,
                                            tokenizer)  # fmt: skip
    if len(dataset) == 0:
        raise DataError(f"No usable conversation under {script_args.data_dir}: skipped {summary['skipped']}")
    if script_args.packing_mode == "isolated":
        # Best-fit-decreasing: whole conversations into rows of at most max_length, none cut. Shuffled
        # first so that a row mixes conversations from every file.
        dataset = pack_dataset(dataset.shuffle(seed=training_args.seed), training_args.max_length, "bfd")
        logger.info("Packed %d conversations into %d rows of at most %d tokens", summary["kept"], len(dataset),
                    training_args.max_length)  # fmt: skip
    summary["rows_per_epoch"] = len(dataset)

    model = load_causal_lm(script_args.model_name_or_path, script_args.attn_implementation)
    collator = PackedCollator(tokenizer.pad_token_id, isolate=script_args.packing_mode == "isolated",
                              single_row=script_args.attn_implementation == "flash_attention_2")  # fmt: skip
    global_batch = log_batch_geometry(training_args)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[RealTokenShareCallback(collator), EpochCheckpointCallback()],
    )
    train_and_save(trainer, tokenizer, "sft", script_args, data_summary=summary, global_batch_size=global_batch)
    finish(trainer)
    return trainer


if __name__ == "__main__":
    main(*parse_args((SFTArguments, SFTConfig)))
