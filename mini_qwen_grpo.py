"""Group relative policy optimisation with verifiable rewards: math word problems whose final number can be checked.

Single GPU (or CPU)::

    python mini_qwen_grpo.py --config configs/grpo_full.yaml

Many GPUs (DeepSpeed ZeRO-2)::

    accelerate launch --config_file accelerate_config.yaml mini_qwen_grpo.py --config configs/grpo_full.yaml

Demo on the bundled problems (after a demo SFT run with reasoning conversations; ``python -m demo.run_all
--with_grpo`` runs the whole chain)::

    python mini_qwen_grpo.py --config configs/grpo_demo.yaml

The policy starts from an SFT or DPO checkpoint. For each problem it samples ``num_generations`` replies with the
chat template's thinking switch on (the prompt opens ``<think>``); every reply is scored by ``correctness_reward``
(is the final number of the answer part the reference?) and ``format_reward`` (one think block, then an answer
stating a number; ``utils/rewards.py``), and TRL's ``GRPOTrainer`` pushes up the replies that beat their group's
mean. No reward model and, with ``beta`` 0, no reference model. Rollouts use transformers' generate, or vLLM where
``use_vllm`` is set and vLLM is installed on a CUDA GPU (otherwise one log line says so).

Logged and plotted (``reward_curves.png``, beside the loss in ``training_curves.png``): the reward and each part of
it, the reply length, and the share of replies that ended at an end-of-turn token (``completions/ended_ratio``; TRL
logs the complement, ``completions/clipped_ratio``, the share cut at ``max_completion_length``). A share of the
problems (``holdout``) is never trained on: at the end the start checkpoint and the trained model answer them
greedily, and ``grpo_report.json`` / ``.md`` in the output dir say how many each got right and well formed.
"""

from __future__ import annotations

import logging
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from utils.data.chat import template_switches
from utils.data.dpo import split_holdout
from utils.data.parquet import DataError
from utils.data.problems import as_dataset, load_problems
from utils.generation import build_generation_config, default_generation_config, end_of_turn_ids, generate_batch
from utils.modeling import load_causal_lm
from utils.plotting import plot_loss
from utils.rewards import problem_scores, reward_functions, write_problem_report
from utils.run_info import read_run_info
from utils.tokenizer import THINKING_SWITCH, load_tokenizer
from utils.train.args import parse_args
from utils.train.stage import finish, log_batch_geometry, setup_logging, train_and_save
from utils.train.stage_args import StageArguments

logger = logging.getLogger(__name__)

# How many held-out replies grpo_report.md shows.
REPORT_EXAMPLES = 4
ENDED = "completions/ended_ratio"
# The curves of reward_curves.png: the reward, its parts, the reply length and the share of replies that ended.
REWARD_CURVES = (
    "reward",
    "rewards/correctness_reward/mean",
    "rewards/format_reward/mean",
    "completions/mean_length",
    ENDED,
)


@dataclass
class GRPOArguments(StageArguments):
    model_name_or_path: str = field(
        default="results/dpo",
        metadata={"help": "The checkpoint to start from: an SFT or DPO output (results/sft works as well)."},
    )
    data_dir: str = field(
        default="data/grpo",
        metadata={"help": "Folder searched (any depth) for *.parquet math problems in GSM8K's layout."},
    )
    enable_thinking: bool = field(
        default=True,
        metadata={
            "help": "The chat template's thinking switch: replies reason in a think block, then answer; the format "
            "reward checks that layout. false: plain answers, and the format reward checks for a stated number."
        },
    )
    max_prompt_length: int = field(
        default=256,
        metadata={
            "help": "Problems whose prompt is longer (in tokens) are skipped and counted (TRL would not cut them)."
        },
    )
    holdout: float = field(
        default=0.05,
        metadata={"help": "Problems held out of training for the final report: a share (<1) or a count (>=1)."},
    )

    @classmethod
    def validate(cls, ns: Namespace) -> None:
        if ns.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be at least 1, got {ns.max_prompt_length}")
        if ns.chat_template_kwargs:
            raise ValueError("chat_template_kwargs is set from --enable_thinking here; leave it unset")
        if ns.reward_weights is not None and len(ns.reward_weights) != 2:
            raise ValueError(f"reward_weights needs 2 values (correctness, format), got {ns.reward_weights}")
        info = read_run_info(ns.model_name_or_path) or {}
        if info.get("stage") == "pt":
            raise ValueError(
                f"{ns.model_name_or_path} is a pretraining checkpoint: GRPO starts from a chat model (an SFT or DPO "
                "output)"
            )
        # The trainer renders every prompt with these (before the arguments are built, so the run record has them).
        ns.chat_template_kwargs = {THINKING_SWITCH: True} if ns.enable_thinking else None


class EndedShareCallback(TrainerCallback):
    """Records ``completions/ended_ratio``, the share of replies that ended (1 - TRL's ``clipped_ratio``), as its own
    log-history entry: the Trainer has copied ``logs`` into the history when callbacks see them, and an entry of its
    own reaches trainer_state.json and the curves."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        clipped = (logs or {}).get("completions/clipped_ratio")
        if clipped is not None:
            state.log_history.append({ENDED: round(1 - clipped, 4), "step": state.global_step})


def heldout_report(script_args: GRPOArguments, training_args: GRPOConfig, tokenizer, heldout, device) -> dict:
    """The start checkpoint and the trained model on the held-out problems: greedy replies, scored by the rewards."""
    thinking, attn = script_args.enable_thinking, script_args.attn_implementation
    prompts, references = [p.prompt() for p in heldout], [p.reference for p in heldout]
    report = {"thinking": thinking, "start_checkpoint": script_args.model_name_or_path}
    for name, path in (("start", script_args.model_name_or_path), ("grpo", training_args.output_dir)):
        model = load_causal_lm(path, attn).to(device).eval()
        config = build_generation_config(
            model,
            do_sample=False,
            max_new_tokens=training_args.max_completion_length,
            repetition_penalty=training_args.repetition_penalty,
        )
        generations = generate_batch(model, tokenizer, prompts, config, thinking)
        report[name] = problem_scores(generations, references, thinking)
    report["examples"] = [
        {"question": p.question, "reference": p.reference, "reply": g.text}
        for p, g in zip(heldout[:REPORT_EXAMPLES], generations)
    ]
    return report


def main(script_args: GRPOArguments, training_args: GRPOConfig) -> GRPOTrainer:
    setup_logging(training_args, script_args.settled_notes)
    start, thinking = script_args.model_name_or_path, script_args.enable_thinking
    logger.info("Policy: %s (thinking %s)", start, "on" if thinking else "off")
    tokenizer = load_tokenizer(start)
    template_switches(tokenizer, thinking)  # a template without the switch fails here, before anything is loaded
    problems, summary = load_problems(script_args.data_dir, tokenizer, script_args.max_prompt_length, thinking)
    if not problems:
        raise DataError(f"No usable problem under {script_args.data_dir}: skipped {summary['skipped']}")
    train, heldout = split_holdout(problems, script_args.holdout, training_args.seed)
    summary.update(train=len(train), heldout=len(heldout))
    logger.info("GRPO data: %d problems for training, %d held out", len(train), len(heldout))

    model = load_causal_lm(start, script_args.attn_implementation)
    # TRL stops rollouts at the model's end-of-turn ids: the same ones every saved checkpoint carries.
    model.generation_config = default_generation_config(tokenizer)
    global_batch = log_batch_geometry(training_args)
    logger.info(
        "%d replies per problem: %d problems per optimizer step, a rollout of %d replies every %d steps",
        training_args.num_generations,
        global_batch // training_args.num_generations,
        training_args.generation_batch_size,
        training_args.steps_per_generation,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_functions(thinking, end_of_turn_ids(tokenizer, model.generation_config)),
        args=training_args,
        train_dataset=as_dataset(train),
        processing_class=tokenizer,
        callbacks=[EndedShareCallback()],
    )
    train_and_save(
        trainer,
        tokenizer,
        "grpo",
        script_args,
        data_summary=summary,
        global_batch_size=global_batch,
        start_checkpoint=start,
    )
    if trainer.is_world_process_zero():
        try:
            plot_loss(training_args.output_dir, REWARD_CURVES, Path(training_args.output_dir) / "reward_curves.png")
        except ValueError as err:  # a run too short to log a rollout
            logger.warning("No reward curves plotted: %s", err)
    if heldout and trainer.is_world_process_zero():
        report = heldout_report(script_args, training_args, tokenizer, heldout, trainer.args.device)
        write_problem_report(report, training_args.output_dir)
        logger.info(
            "Held-out problems: start %.1f%% right, %.1f%% well formed; GRPO %.1f%% right, %.1f%% well formed",
            100 * report["start"]["correct"],
            100 * report["start"]["well_formed"],
            100 * report["grpo"]["correct"],
            100 * report["grpo"]["well_formed"],
        )
    finish(trainer)
    return trainer


if __name__ == "__main__":
    main(*parse_args((GRPOArguments, GRPOConfig)))
