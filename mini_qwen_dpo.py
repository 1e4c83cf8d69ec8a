"""Direct preference optimisation from an SFT checkpoint, with a report that says whether it helped.

Single GPU (or CPU)::

    python mini_qwen_dpo.py --config configs/dpo_full.yaml

Many GPUs (DeepSpeed ZeRO-2)::

    accelerate launch --config_file accelerate_config.yaml mini_qwen_dpo.py --config configs/dpo_full.yaml

Demo on the bundled data (after the demo SFT run)::

    python mini_qwen_dpo.py --config configs/dpo_demo.yaml

The policy and the frozen reference are both loaded from ``--model_name_or_path`` (TRL builds the
reference from the policy's path, and prepares it for DeepSpeed itself). A share of the pairs
(``holdout``) is never trained on; at the end both models are scored on it and the result is written
to ``preference_report.json`` / ``.md`` in the output dir.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from utils.args import parse_args
from utils.chat import SkipRow, pair_token_ids, preference_pair, prompt_ids
from utils.checkpointing import fault_tolerant
from utils.data import DataError, SkipCounter, find_parquet_files, read_rows
from utils.evaluation import completion_logprob
from utils.modeling import load_causal_lm, select_attn_implementation
from utils.tokenizer import load_tokenizer
from utils.training import (
    NonFiniteLossCallback,
    StageArguments,
    configure_hardware,
    finish,
    log_batch_geometry,
    setup_logging,
    train_and_save,
)

logger = logging.getLogger("mini_qwen")

PREFERENCE_COLUMNS = ["prompt", "chosen", "rejected"]


@dataclass
class DPOArguments(StageArguments):
    model_name_or_path: str = field(
        default="results/sft",
        metadata={
            "help": "SFT checkpoint: the policy and the reference. Upstream started from its 2-epoch SFT checkpoint "
            "(results/sft/checkpoint-...), finding the 3-epoch one over-fitted."
        },
    )
    data_dir: str = field(default="data/dpo", metadata={"help": "Folder searched (any depth) for *.parquet."})
    max_prompt_length: int = field(
        default=512, metadata={"help": "Prompt budget in tokens; longer prompts keep their end (the question)."}
    )
    holdout: float = field(
        default=0.05,
        metadata={"help": "Pairs held out of training for the final report: a share (<1) or a count (>=1)."},
    )


def load_preference_pairs(data_dir: str, tokenizer, max_prompt_length: int) -> tuple[list[dict], dict]:
    """Valid pairs in TRL's conversational format, plus what was skipped and cut (per reason)."""
    files = find_parquet_files(data_dir)
    skips, rows, cut = SkipCounter(), [], 0
    total = 0
    for path, index, record in read_rows(files, PREFERENCE_COLUMNS):
        total += 1
        try:
            pair = preference_pair(record, tokenizer, max_prompt_length)
        except SkipRow as reason:
            skips[str(reason)] += 1
            continue
        except (TypeError, AttributeError) as err:
            raise DataError(f"{path}, row {index}: malformed preference row ({err})") from err
        cut += pair.prompt_cut
        rows.append(pair.as_row())
    skips.log("Preference pairs", total)
    logger.info("%d prompts kept only their last %d tokens", cut, max_prompt_length)
    return rows, {"files": [str(f) for f in files], "rows": total, "kept": len(rows), "skipped": dict(skips)}


def split_holdout(rows: list[dict], holdout: float, seed: int) -> tuple[list[dict], list[dict]]:
    n = int(holdout) if holdout >= 1 else max(1, round(len(rows) * holdout)) if holdout > 0 else 0
    if n >= len(rows):
        raise DataError(f"holdout={holdout} leaves no pair to train on ({len(rows)} pairs)")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return [rows[i] for i in order[n:]], [rows[i] for i in order[:n]]


def count_long_replies(rows: list[dict], tokenizer, max_length: int | None) -> int:
    """Pairs where prompt + a reply exceeds max_length; TRL cuts those replies from the end."""
    if max_length is None:
        return 0
    long = 0
    for row in rows:
        n_prompt = len(prompt_ids(tokenizer, row["prompt"]))
        longest = max(len(pair_token_ids(tokenizer, row["prompt"], row[k])) for k in ("chosen", "rejected"))
        long += n_prompt + longest > max_length
    return long


@torch.no_grad()
def preference_report(policy, reference, tokenizer, pairs: list[dict], beta: float, max_length: int | None) -> dict:
    """On held-out pairs: how often each model prefers the chosen reply (length-normalised
    log-likelihood), and the DPO model's mean implicit reward margin."""
    stats = {"policy_prefers_chosen": 0, "reference_prefers_chosen": 0, "margins": []}
    for row in pairs:
        head = prompt_ids(tokenizer, row["prompt"])
        scores = {}
        for key in ("chosen", "rejected"):
            tail = pair_token_ids(tokenizer, row["prompt"], row[key])
            if max_length is not None:
                tail = tail[: max(1, max_length - len(head))]
            scores[key] = {
                name: completion_logprob(model, head, tail) for name, model in (("pol", policy), ("ref", reference))
            }
            scores[key]["n"] = len(tail)
        c, r = scores["chosen"], scores["rejected"]
        stats["policy_prefers_chosen"] += c["pol"] / c["n"] > r["pol"] / r["n"]
        stats["reference_prefers_chosen"] += c["ref"] / c["n"] > r["ref"] / r["n"]
        stats["margins"].append(beta * ((c["pol"] - c["ref"]) - (r["pol"] - r["ref"])))
    n = len(pairs)
    return {
        "heldout_pairs": n,
        "reference_prefers_chosen": stats["reference_prefers_chosen"] / n,
        "dpo_prefers_chosen": stats["policy_prefers_chosen"] / n,
        "dpo_mean_reward_margin": sum(stats["margins"]) / n,
    }


def write_report(report: dict, output_dir: str) -> None:
    out = Path(output_dir)
    (out / "preference_report.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Preference report ({report['heldout_pairs']} held-out pairs)",
        "",
        "| model | prefers chosen (length-normalised log-likelihood) |",
        "|---|---|",
        f"| SFT reference | {report['reference_prefers_chosen']:.1%} |",
        f"| DPO | {report['dpo_prefers_chosen']:.1%} |",
        "",
        f"DPO mean implicit reward margin (beta-scaled): {report['dpo_mean_reward_margin']:.4f}",
        "",
    ]
    (out / "preference_report.md").write_text("\n".join(lines))


def main(script_args: DPOArguments, training_args: DPOConfig) -> DPOTrainer:
    setup_logging(training_args)
    configure_hardware(script_args.precision, training_args)
    tokenizer = load_tokenizer(script_args.model_name_or_path)
    rows, summary = load_preference_pairs(script_args.data_dir, tokenizer, script_args.max_prompt_length)
    if not rows:
        raise DataError(f"No usable preference pair under {script_args.data_dir}: skipped {summary['skipped']}")
    train_rows, heldout_rows = split_holdout(rows, script_args.holdout, training_args.seed)
    summary.update(train=len(train_rows), heldout=len(heldout_rows))
    summary["replies_cut"] = count_long_replies(train_rows, tokenizer, training_args.max_length)
    logger.info(
        "DPO data: %d pairs for training, %d held out; %d training pairs have a reply cut to fit max_length=%s",
        len(train_rows),
        len(heldout_rows),
        summary["replies_cut"],
        training_args.max_length,
    )

    attn = select_attn_implementation(script_args.attn_implementation)
    model = load_causal_lm(script_args.model_name_or_path, attn)
    global_batch = log_batch_geometry(training_args)
    guard = NonFiniteLossCallback(training_args)
    trainer = fault_tolerant(DPOTrainer)(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(train_rows),
        processing_class=tokenizer,
        callbacks=[guard],
    )
    train_and_save(trainer, guard, tokenizer, "dpo", script_args, data_summary=summary, global_batch_size=global_batch)

    if heldout_rows and trainer.is_world_process_zero():
        policy = load_causal_lm(training_args.output_dir, attn).to(trainer.args.device).eval()
        reference = load_causal_lm(script_args.model_name_or_path, attn).to(trainer.args.device).eval()
        report = preference_report(
            policy, reference, tokenizer, heldout_rows, training_args.beta, training_args.max_length
        )
        write_report(report, training_args.output_dir)
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
