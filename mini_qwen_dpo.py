"""Direct preference optimisation from an SFT checkpoint, with a report that says whether it helped.

Single GPU (or CPU)::

    python mini_qwen_dpo.py --config configs/dpo_full.yaml

Many GPUs (DeepSpeed ZeRO-2)::

    accelerate launch --config_file accelerate_config.yaml mini_qwen_dpo.py --config configs/dpo_full.yaml

Demo on the bundled data (after the demo SFT run)::

    python mini_qwen_dpo.py --config configs/dpo_demo.yaml

The policy and the frozen reference are both loaded from the SFT checkpoint: by default the one that ended
SFT epoch ``--sft_epoch`` (the SFT run records it), else ``--model_name_or_path`` as it is. A share of the
pairs (``holdout``) is never trained on; at the end both models are scored on it and the result is written to
``preference_report.json`` / ``.md`` in the output dir.
"""

from __future__ import annotations

import logging
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path

from trl import DPOConfig

from utils.data.dpo import PreTokenizedDPOTrainer, as_dataset, load_preference_pairs, split_holdout
from utils.data.parquet import DataError
from utils.evaluation import heldout_preference_report, write_preference_report
from utils.modeling import load_causal_lm
from utils.run_info import read_run_info
from utils.tokenizer import load_tokenizer
from utils.train.args import parse_args
from utils.train.processes import finish, release_training_memory, run_on_main
from utils.train.stage import log_batch_geometry, setup_logging, train_and_save
from utils.train.stage_args import StageArguments

logger = logging.getLogger(__name__)


@dataclass
class DPOArguments(StageArguments):
    model_name_or_path: str = field(
        default="results/sft", metadata={"help": "The SFT output dir (with --sft_epoch) or any checkpoint folder."}
    )
    sft_epoch: int = field(
        default=0,
        metadata={
            "help": "Start from the checkpoint that ended this SFT epoch, as the SFT run recorded it in "
            "<model_name_or_path>/run_info.json; 0: model_name_or_path as it is. The full recipe uses 2: upstream "
            "found its 3-epoch SFT model over-fitted and started DPO from the 2-epoch one."
        },
    )
    data_dir: str = field(default="data/dpo", metadata={"help": "Folder searched (any depth) for *.parquet."})
    max_prompt_length: int = field(
        default=512, metadata={"help": "Prompt budget in tokens (< max_length); longer prompts keep their end."}
    )
    holdout: float = field(
        default=0.05,
        metadata={"help": "Pairs held out of training for the final report: a share (<1) or a count (>=1)."},
    )

    @classmethod
    def validate(cls, ns: Namespace) -> None:
        if ns.max_length is not None and ns.max_prompt_length >= ns.max_length:
            raise ValueError(
                f"max_prompt_length={ns.max_prompt_length} must be smaller than max_length="
                f"{ns.max_length}: nothing of the replies would be left to train on"
            )
        if str(getattr(ns.eval_strategy, "value", ns.eval_strategy)) != "no" and not ns.holdout:
            raise ValueError("eval_strategy asks for evaluations but holdout is 0: no pair is held out to evaluate on")
        if ns.beta <= 0:
            raise ValueError(f"beta must be positive, got {ns.beta}")
        if ns.sft_epoch:
            epoch_checkpoint(ns.model_name_or_path, ns.sft_epoch)  # fails now, naming the problem, not after loading


def epoch_checkpoint(sft_dir: str, epoch: int) -> str:
    """The checkpoint that ended SFT epoch ``epoch``, from the SFT run's record."""
    info = read_run_info(sft_dir)
    if info is None or info.get("stage") != "sft":
        raise ValueError(
            f"--sft_epoch {epoch}: {sft_dir} holds no SFT run record (run_info.json); pass the "
            "checkpoint folder as --model_name_or_path with --sft_epoch 0"
        )
    recorded = info.get("epoch_checkpoints", {})
    if str(epoch) not in recorded:
        epochs = sorted(recorded, key=int) or "none"
        raise ValueError(
            f"--sft_epoch {epoch}: the SFT run in {sft_dir} recorded checkpoints for epochs {epochs} "
            "(save_strategy epoch keeps one per epoch)"
        )
    path = Path(sft_dir) / recorded[str(epoch)]
    if not path.is_dir():
        raise ValueError(f"--sft_epoch {epoch}: {path} was recorded but no longer exists")
    return str(path)


def start_checkpoint(script_args: DPOArguments) -> str:
    """The folder policy and reference are loaded from: the SFT epoch's checkpoint, or model_name_or_path."""
    if script_args.sft_epoch:
        return epoch_checkpoint(script_args.model_name_or_path, script_args.sft_epoch)
    return script_args.model_name_or_path


def main(script_args: DPOArguments, training_args: DPOConfig) -> PreTokenizedDPOTrainer:
    setup_logging(training_args, script_args.settled_notes)
    start = start_checkpoint(script_args)
    logger.info("Policy and reference: %s", start)
    tokenizer = load_tokenizer(start)
    rows, summary = load_preference_pairs(
        script_args.data_dir, tokenizer, script_args.max_prompt_length, training_args.max_length
    )
    if not rows:
        raise DataError(f"No usable preference pair under {script_args.data_dir}: skipped {summary['skipped']}")
    train_rows, heldout_rows = split_holdout(rows, script_args.holdout, training_args.seed)
    summary.update(train=len(train_rows), heldout=len(heldout_rows))
    logger.info("DPO data: %d pairs for training, %d held out", len(train_rows), len(heldout_rows))

    model = load_causal_lm(start, script_args.attn_implementation)
    global_batch = log_batch_geometry(training_args)
    # With eval_strategy set, TRL scores the held-out pairs during training (eval_loss, eval_rewards/accuracies ...):
    # the held-out curve. The final report below scores them once more, against the reference.
    evaluating = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) != "no"
    trainer = PreTokenizedDPOTrainer(
        model=model,
        args=training_args,
        train_dataset=as_dataset(train_rows),
        eval_dataset=as_dataset(heldout_rows) if evaluating and heldout_rows else None,
        processing_class=tokenizer,
    )
    train_and_save(
        trainer,
        tokenizer,
        "dpo",
        script_args,
        seen_per_step={"pairs": global_batch},
        data_summary=summary,
        global_batch_size=global_batch,
        start_checkpoint=start,
    )

    if heldout_rows:
        release_training_memory(trainer)
        report = run_on_main(
            trainer,
            "the held-out preference report",
            lambda: heldout_preference_report(
                training_args.output_dir,
                start,
                heldout_rows,
                training_args.beta,
                training_args.max_length,
                script_args.attn_implementation,
                str(trainer.args.device),
            ),
        )
        if report is not None:
            write_preference_report(report, training_args.output_dir)
            logger.info(
                "Held-out pairs: SFT prefers chosen %.1f%%, DPO %.1f%%; mean reward margin %.4f",
                100 * report["reference_prefers_chosen"],
                100 * report["dpo_prefers_chosen"],
                report["dpo_mean_reward_margin"],
            )
    finish(trainer)
    return trainer


if __name__ == "__main__":
    main(*parse_args((DPOArguments, DPOConfig)))
