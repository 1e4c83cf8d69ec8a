"""Pretraining: a widened Qwen2.5 from random init on packed, document-isolated token blocks.

Single GPU (or CPU)::

    python mini_qwen_pt.py --config configs/pt_full.yaml

Many GPUs (DeepSpeed ZeRO-2, launcher settings in accelerate_config.yaml)::

    accelerate launch --config_file accelerate_config.yaml mini_qwen_pt.py --config configs/pt_full.yaml

Demo on the bundled data::

    python mini_qwen_pt.py --config configs/pt_demo.yaml

Resume an interrupted run (same data position, optimizer and scheduler)::

    python mini_qwen_pt.py --config configs/pt_full.yaml --resume auto

Any recipe value can be overridden by a flag, e.g. ``--num_hidden_layers 24 --learning_rate 3e-4``.
"""

from __future__ import annotations

import logging
import os
from argparse import Namespace
from dataclasses import dataclass, field

from torch.utils.data import Subset
from transformers import Trainer, TrainingArguments, set_seed

from utils.data.collate import LAYOUT_HELP, LAYOUTS, PackedCollator
from utils.data.parquet import DataError, find_parquet_files
from utils.data.pt import pt_dataset
from utils.data.token_cache import build_token_cache
from utils.modeling import ModelShapeArguments, build_model, check_block_size
from utils.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer
from utils.train.args import parse_args
from utils.train.callbacks import RealTokenShareCallback
from utils.train.processes import finish
from utils.train.stage import FusedLMHeadTrainer, log_batch_geometry, setup_logging, train_and_save
from utils.train.stage_args import StageArguments, check_holdout

logger = logging.getLogger(__name__)


@dataclass
class PTArguments(ModelShapeArguments, StageArguments):
    data_dir: str = field(default="data/pt", metadata={"help": "Folder searched (any depth) for *.parquet."})
    domains: list[str] | None = field(
        default=None, metadata={"help": "Keep only these domain folders (IndustryCorpus2 names)."}
    )
    languages: list[str] | None = field(default=None, metadata={"help": "Keep only these: chinese, english."})
    max_files_per_dir: int | None = field(
        default=None, metadata={"help": "First N files (sorted) of each folder; prepare.sh already caps the download."}
    )
    tokenizer_name_or_path: str = field(
        default=DEFAULT_TOKENIZER_DIR, metadata={"help": "Tokenizer folder; Qwen2.5's is built offline if empty."}
    )
    cache_dir: str = field(default="cache/pt", metadata={"help": "Where tokenized corpora are cached."})
    block_size: int = field(default=1024, metadata={"help": "Tokens per training sequence."})
    layout: str = field(default="isolated", metadata={"help": LAYOUT_HELP, "choices": list(LAYOUTS)})
    data_fraction: float = field(
        default=1.0, metadata={"help": "Train on the first share of the blocks (or documents): 0.25, 0.5, 1."}
    )
    fused_lm_head: str = field(
        default="auto",
        metadata={
            "help": "Loss through a fused, chunked LM head, never holding the full logits: auto (on CUDA GPUs), "
            "true, false.",
            "choices": ["auto", "true", "false"],
        },
    )
    num_proc: int = field(
        default=min(8, os.cpu_count() or 1), metadata={"help": "Processes that tokenize files in parallel."}
    )
    holdout: float = field(
        default=0.0,
        metadata={
            "help": "Share of documents never trained on (chosen by a hash of their text, so eval and reruns agree); "
            "their loss is logged at every eval_steps as eval_loss, the held-out curve. 0: none."
        },
    )
    eval_max_blocks: int = field(
        default=256, metadata={"help": "Held-out blocks scored at each evaluation (the first ones, always the same)."}
    )

    @classmethod
    def validate(cls, ns: Namespace) -> None:
        shape = ModelShapeArguments(**{k: getattr(ns, k) for k in ModelShapeArguments.__dataclass_fields__})
        check_block_size(shape, ns.block_size)
        check_holdout(ns)


def heldout_blocks(heldout_cache, script_args: PTArguments):
    """The first ``eval_max_blocks`` examples of the held-out documents, in the training layout."""
    if len(heldout_cache.tokens) < script_args.block_size:
        raise DataError(
            f"holdout={script_args.holdout} leaves {len(heldout_cache.tokens)} held-out tokens under "
            f"{script_args.data_dir}: fewer than one block of {script_args.block_size}; raise holdout"
        )
    blocks = pt_dataset(heldout_cache, script_args.block_size, script_args.layout)
    kept = min(len(blocks), script_args.eval_max_blocks)
    logger.info(
        "Held-out curve: %d blocks of %d tokens from %s held-out documents",
        kept,
        script_args.block_size,
        f"{len(heldout_cache.doc_starts):,}",
    )
    return Subset(blocks, range(kept))


def main(script_args: PTArguments, training_args: TrainingArguments) -> Trainer:
    setup_logging(training_args, script_args.settled_notes)
    tokenizer = load_tokenizer(script_args.tokenizer_name_or_path)
    files = find_parquet_files(
        script_args.data_dir, script_args.domains, script_args.languages, script_args.max_files_per_dir
    )
    logger.info("Found %d parquet files under %s", len(files), script_args.data_dir)
    # Tokenize on the main process only; the others wait here and then open the same cache.
    with training_args.main_process_first(desc="tokenize and pack"):
        cache = build_token_cache(
            files,
            script_args.data_dir,
            tokenizer,
            script_args.tokenizer_name_or_path,
            script_args.cache_dir,
            script_args.num_proc,
            script_args.holdout,
        )
    dataset = pt_dataset(cache, script_args.block_size, script_args.layout, script_args.data_fraction)
    heldout = heldout_blocks(cache.heldout(), script_args) if script_args.holdout else None
    logger.info(
        "Layout %s: %d examples of up to %d tokens (data_fraction %s); %d tokens are not used",
        script_args.layout,
        len(dataset),
        script_args.block_size,
        script_args.data_fraction,
        dataset.dropped_tokens,
    )

    set_seed(training_args.seed)  # the random init is part of the run: same seed, same weights
    model = build_model(
        script_args,
        attn_implementation=script_args.attn_implementation,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"vocab_size={model.config.vocab_size} is smaller than the tokenizer ({len(tokenizer)})")
    global_batch = log_batch_geometry(training_args, script_args.block_size)

    trainer_cls = FusedLMHeadTrainer if script_args.fused_lm_head == "true" else Trainer
    collator = PackedCollator(
        tokenizer.pad_token_id,
        isolate=script_args.layout != "one_per_row",
        single_row=script_args.attn_implementation == "flash_attention_2",
    )
    trainer = trainer_cls(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=heldout,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[RealTokenShareCallback(collator)],
    )
    train_and_save(
        trainer,
        tokenizer,
        "pt",
        script_args,
        seen_per_step={"tokens": global_batch * script_args.block_size},
        data_summary=cache.meta,
        global_batch_size=global_batch,
    )
    finish(trainer)
    return trainer


if __name__ == "__main__":
    main(*parse_args((PTArguments, TrainingArguments)))
