"""The whole demo in one command: PT -> SFT -> DPO -> side-by-side answers, on the bundled mini_data.

    python -m demo.run_all                          # what `bash run.sh demo` runs
    python -m demo.run_all --max_steps 20 --logging_steps 5 --output_root /tmp/demo   # shorter, elsewhere
    python -m demo.run_all --recipes cpu            # the tiny recipes even on a GPU (default: what the machine suits)
    python -m demo.run_all --with_grpo              # SFT also learns worked solutions; GRPO after DPO

Each stage is the real stage ``main()`` with its demo recipe (configs/*_demo.yaml); the flags here only
override where outputs go and, optionally, the number of steps of every stage. ``--with_grpo`` (the tiny recipes)
adds the demo problems' worked solutions to SFT (``--reasoning_data_dir mini_data/grpo/sft``: the thinking layout
GRPO rewards) and runs GRPO from the DPO model (``configs/grpo_demo.yaml``), then prints how its rewards moved and
its held-out report.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from demo import demo_dpo, demo_grpo, demo_pt, demo_sft
from demo.common import RECIPES, ROOT, announce_recipes
from mini_qwen_eval import EvalArguments
from mini_qwen_eval import main as eval_main
from utils.plotting import find_log_history
from utils.train.args import parse_args, read_recipe

EVAL_RECIPE = ROOT / "configs" / "eval_demo.yaml"
# The worked solutions the demo SFT learns the thinking layout from, when GRPO follows.
REASONING_DATA = "mini_data/grpo/sft"
# GRPO's logged reward parts, summarised as their mean over the first and last quarter of the run.
GRPO_CURVES = ("rewards/format_reward/mean", "rewards/correctness_reward/mean", "completions/mean_length")


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    return [h[key] for h in find_log_history(run_dir) if key in h]


def first_and_last_quarter(run_dir: Path, key: str) -> tuple[float, float]:
    """The mean of ``key`` over the first and over the last quarter of its logged values (one log entry is noisy:
    a handful of problems)."""
    values = losses(run_dir, key)
    quarter = max(1, len(values) // 4)
    return sum(values[:quarter]) / quarter, sum(values[-quarter:]) / quarter


def run(
    output_root: str | None = None,
    max_steps: int | None = None,
    prompts: int = 4,
    logging_steps: int | None = None,
    recipes: str = "cpu",
    work_dir: str | None = None,
    with_grpo: bool = False,
) -> dict:
    """The whole demo; ``work_dir``: where the demo tokenizer and the token caches go instead of the recipes'
    models/mini-tokenizer and cache/ (the tests keep everything in a temporary folder); ``with_grpo``: SFT with
    worked solutions, and GRPO after DPO (cpu recipes)."""
    if with_grpo and recipes != "cpu":
        raise SystemExit(f"--with_grpo has a demo recipe for the cpu recipes only, not {recipes}")
    output_root = output_root or ("results/demo" if recipes == "cpu" else f"results/{recipes}_demo")
    root = Path(output_root)
    steps = ["--max_steps", str(max_steps)] if max_steps else []
    steps += ["--logging_steps", str(logging_steps)] if logging_steps else []
    work = Path(work_dir) if work_dir else None
    cache = ["--cache_dir", str(work / "cache")] if work else []
    tokenizer = ["--tokenizer_name_or_path", str(work / "tokenizer")] if work and recipes == "cpu" else []
    start = time.perf_counter()
    timings = {}
    demo_pt.run(["--output_dir", str(root / "pt"), *steps, *cache, *tokenizer], recipes)
    timings["pt"] = time.perf_counter() - start
    reasoning = ["--reasoning_data_dir", REASONING_DATA] if with_grpo else []
    demo_sft.run(
        ["--model_name_or_path", str(root / "pt"), "--output_dir", str(root / "sft"), *steps, *cache, *reasoning],
        recipes,
    )
    timings["sft"] = time.perf_counter() - start - sum(timings.values())
    demo_dpo.run(["--model_name_or_path", str(root / "sft"), "--output_dir", str(root / "dpo"), *steps], recipes)
    timings["dpo"] = time.perf_counter() - start - sum(timings.values())
    if with_grpo:
        demo_grpo.run(["--model_name_or_path", str(root / "dpo"), "--output_dir", str(root / "grpo"), *steps])
        timings["grpo"] = time.perf_counter() - start - sum(timings.values())

    prompt_file = root / "demo_prompts.jsonl"
    # The first ``prompts`` of the recipe's prompt file: a short demo answers a few.
    lines = (ROOT / read_recipe(str(EVAL_RECIPE))["prompts"]).read_text(encoding="utf-8").splitlines()[:prompts]
    prompt_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    checkpoints = [str(root / s) for s in ("pt", "sft", "dpo")]
    (eval_args,) = parse_args(
        (EvalArguments,),
        [
            "--config",
            str(EVAL_RECIPE),
            "--model_name_or_path",
            *checkpoints,
            "--prompts",
            str(prompt_file),
            "--output_dir",
            str(root / "eval"),
        ],
    )
    rows = eval_main(eval_args)
    seconds = time.perf_counter() - start
    timings["eval"] = seconds - sum(timings.values())

    stage_losses = {stage: losses(root / stage) for stage in ("pt", "sft", "dpo")}
    # The held-out curves: PT and SFT score their held-out share, DPO its held-out pairs.
    heldout = {
        "pt": losses(root / "pt", "eval_loss"),
        "sft": losses(root / "sft", "eval_loss"),
        "dpo": losses(root / "dpo", "eval_rewards/accuracies"),
    }
    chat_rows = [row for row in rows if row["mode"] == "chat"]
    print("\n" + "=" * 72)
    for row in chat_rows:
        name, stop = Path(row["model"]).name, row["ended_with_eos"]
        print(f"[{name}] {row['prompt']}\n  -> {row['output']!r}  (ended at <|im_end|>: {stop})")
    print((root / "eval" / "report.md").read_text(encoding="utf-8"))
    for stage, values in stage_losses.items():
        held = heldout[stage]
        what = "held-out preference accuracy" if stage == "dpo" else "held-out loss"
        shown = f"; {what}: first {held[0]:.3f} -> last {held[-1]:.3f}" if held else ""
        print(f"{stage.upper()} loss: first {values[0]:.3f} -> last {values[-1]:.3f}{shown}  ({timings[stage]:.0f} s)")
    grpo = {key: first_and_last_quarter(root / "grpo", key) for key in GRPO_CURVES} if with_grpo else {}
    for key, (first, last) in grpo.items():
        print(f"GRPO {key}: first quarter {first:.3f} -> last quarter {last:.3f}  ({timings['grpo']:.0f} s)")
    if with_grpo:
        print((root / "grpo" / "grpo_report.md").read_text(encoding="utf-8"))
    ended = sum(row["ended_with_eos"] for row in chat_rows)
    print(f"Chat answers that ended at <|im_end|>: {ended} of {len(chat_rows)} (the rest hit max_new_tokens)")
    print(f"Demo finished in {seconds / 60:.1f} min ({seconds:.0f} s). Outputs under {root}/")
    summary = {"seconds": seconds, "timings": timings, "losses": stage_losses, "heldout": heldout, "generations": rows}
    summary["grpo"] = grpo
    (root / "demo_summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output_root", default=None, help="Checkpoints and eval go here (default results/demo, results/t4_demo)."
    )
    parser.add_argument(
        "--recipes",
        choices=["auto", *sorted(RECIPES)],
        default="auto",
        help="auto: t4 on a CUDA GPU with the memory for it, else cpu; cpu: tiny model, any machine; t4: the 1B shape "
        "at seq 128 on a 16 GB GPU.",
    )
    parser.add_argument("--max_steps", type=int, default=None, help="Override every stage's step count.")
    parser.add_argument("--prompts", type=int, default=4, help="How many of the eval prompts to answer.")
    parser.add_argument("--logging_steps", type=int, default=None, help="Override every stage's logging interval.")
    parser.add_argument(
        "--work_dir",
        default=None,
        help="The demo tokenizer and token caches go here (default: the recipes' models/mini-tokenizer and cache/).",
    )
    parser.add_argument(
        "--with_grpo",
        action="store_true",
        help="The tiny chain, its SFT also learning the bundled problems' worked solutions; GRPO after DPO.",
    )
    args = parser.parse_args()
    # GRPO's demo recipe is a tiny one: with --with_grpo, "auto" means the tiny chain on any machine.
    recipes = announce_recipes("cpu" if args.with_grpo and args.recipes == "auto" else args.recipes)
    run(args.output_root, args.max_steps, args.prompts, args.logging_steps, recipes, args.work_dir, args.with_grpo)


if __name__ == "__main__":
    main()
