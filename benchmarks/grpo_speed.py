"""GRPO's step on the demo shape: how fast replies are generated and how fast the policy trains on them, with
rollout sizes side by side.

    python -m benchmarks.grpo_speed                                    # demo shape, rollouts of 32, 64, 128 replies
    python -m benchmarks.grpo_speed --rollouts 32 64 --steps 8 --max_completion_length 128
    python -m benchmarks.grpo_speed --model_name_or_path results/demo/sft   # a trained model (replies that stop)

Each rollout size gets TRL's GRPOTrainer built from the same pieces as the stage (the bundled problems of
``mini_data/grpo/train`` through ``utils.data.problems``, the rewards of ``utils.rewards``, thinking on), 8 replies
per problem, 16 replies per optimizer step; a rollout of R replies feeds R / 16 steps. The default model is a
random one of the demo shape (hidden 128, 4 layers, the 4k demo tokenizer), whose replies never stop: every reply
is ``max_completion_length`` tokens, the worst case.

TRL logs each optimizer step's ``step_time``; the steps that start a rollout include its generation, the others are
updates only. Printed per rollout size:

  update s/step      the median step time of the steps without a rollout
  rollout s          the median of (step time of a rollout step - update s/step)
  completions/s      replies per rollout / rollout s
  trained tokens/s   (prompt + reply) tokens per optimizer step / update s/step
  replies/s overall  replies per rollout / (rollout s + R/16 x update s/step): what a run gets
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path

import torch
from trl import GRPOConfig, GRPOTrainer

from demo.common import DEMO_TOKENIZER, ensure_demo_tokenizer
from utils import REPO_ROOT
from utils.data.problems import as_dataset, load_problems
from utils.generation import default_generation_config, end_of_turn_ids
from utils.modeling import ModelShapeArguments, build_model, load_causal_lm
from utils.rewards import reward_functions
from utils.tokenizer import THINKING_SWITCH, has_tokenizer_files, load_tokenizer

DEMO_SHAPE = dict(
    hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=384
)
STEP_REPLIES = 16  # replies per optimizer step (2 problems x 8), as in configs/grpo_demo.yaml
GENERATIONS = 8


def demo_tokenizer(work: Path):
    """The demo tokenizer where the demo left it, else one trained the same way into ``work``."""
    folder = REPO_ROOT / DEMO_TOKENIZER
    if not has_tokenizer_files(folder):
        folder = work / "tokenizer"
        ensure_demo_tokenizer(str(folder))
    return load_tokenizer(folder)


def measure(rollout: int, args, tokenizer, problems, work: Path) -> dict:
    torch.manual_seed(0)
    if args.model_name_or_path:
        model = load_causal_lm(args.model_name_or_path)
    else:
        model = build_model(ModelShapeArguments(**DEMO_SHAPE, vocab_size=4096))
    model.generation_config = default_generation_config(tokenizer)
    steps_per_rollout = rollout // STEP_REPLIES
    config = GRPOConfig(
        output_dir=str(work / f"rollout{rollout}"),
        per_device_train_batch_size=STEP_REPLIES,
        num_generations=GENERATIONS,
        steps_per_generation=steps_per_rollout,
        max_completion_length=args.max_completion_length,
        max_steps=args.steps * steps_per_rollout,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        chat_template_kwargs={THINKING_SWITCH: True},
        seed=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_functions(True, end_of_turn_ids(tokenizer, model.generation_config)),
        args=config,
        train_dataset=as_dataset(problems),
        processing_class=tokenizer,
    )
    trainer.train()
    history = [h for h in trainer.state.log_history if "step_time" in h]
    # The first rollout also warms up (allocations, kernels): it is left out of the medians.
    rollout_steps = [h["step_time"] for h in history[steps_per_rollout:] if "reward" in h]
    update_steps = [h["step_time"] for h in history[steps_per_rollout:] if "reward" not in h]
    update = statistics.median(update_steps)
    generation = statistics.median(rollout_steps) - update
    # TRL counts the prompt and reply tokens of every rollout (num_tokens, logged with each rollout).
    rollouts = [h["num_tokens"] for h in history if "num_tokens" in h]
    per_step = rollouts[-1] / len(rollouts) / steps_per_rollout
    return {
        "rollout": rollout,
        "update_s": update,
        "rollout_s": generation,
        "completions_per_s": rollout / generation,
        "trained_tokens_per_s": per_step / update,
        "replies_per_s": rollout / (generation + steps_per_rollout * update),
        "mean_reply_tokens": statistics.mean(h["completions/mean_length"] for h in history if "reward" in h),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rollouts", type=int, nargs="+", default=[32, 64, 128], help="Replies per rollout (x16, at least 32)."
    )
    parser.add_argument("--steps", type=int, default=4, help="Rollouts per size (the first one warms up).")
    parser.add_argument("--max_completion_length", type=int, default=64, help="Longest reply in tokens.")
    parser.add_argument("--model_name_or_path", default=None, help="A checkpoint instead of a random demo model.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if any(r % STEP_REPLIES or r < 2 * STEP_REPLIES for r in args.rollouts) or args.steps < 2:
        # A rollout of one step's replies leaves no step without generation to time the update alone.
        raise SystemExit(f"rollouts must be multiples of {STEP_REPLIES} from {2 * STEP_REPLIES}, --steps at least 2")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = load_tokenizer(args.model_name_or_path) if args.model_name_or_path else demo_tokenizer(work)
        problems, _ = load_problems(str(REPO_ROOT / "mini_data" / "grpo" / "train"), tokenizer, None, thinking=True)
        rows = [measure(rollout, args, tokenizer, problems, work) for rollout in args.rollouts]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    model = args.model_name_or_path or "random demo-shape model"
    print(
        f"\nGRPO step, {model}, {device}, {STEP_REPLIES} replies per optimizer step, up to "
        f"{args.max_completion_length} tokens each"
    )
    print(
        f"{'rollout':>8} {'rollout s':>10} {'completions/s':>14} {'update s/step':>14} {'trained tok/s':>14} "
        f"{'replies/s overall':>18} {'reply tokens':>13}"
    )
    for row in rows:
        cells = [
            f"{row['rollout']:>8}",
            f"{row['rollout_s']:>10.2f}",
            f"{row['completions_per_s']:>14.1f}",
            f"{row['update_s']:>14.3f}",
            f"{row['trained_tokens_per_s']:>14.0f}",
            f"{row['replies_per_s']:>18.1f}",
            f"{row['mean_reply_tokens']:>13.1f}",
        ]
        print(" ".join(cells))
    return rows


if __name__ == "__main__":
    main()
