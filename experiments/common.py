"""What every experiment shares: training variants with the demo recipes (the stages' own main(), never copied
code), scoring them, and a report that separates what the runs show from what is within noise.

A study runs each variant with several seeds; a difference counts only when the seeds' ranges do not overlap,
and the report says so when they do instead of naming a winner.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from demo import demo_dpo, demo_pt, demo_sft
from demo.common import DEMO_TOKENIZER
from mini_qwen_eval import EvalArguments
from mini_qwen_eval import main as eval_main
from utils.plotting import find_log_history, plot_runs

# The demo model trains in minutes on a laptop CPU; "ci" shrinks it further to check the wiring in seconds.
TINY = [
    "--hidden_size",
    "32",
    "--num_hidden_layers",
    "2",
    "--num_attention_heads",
    "4",
    "--num_key_value_heads",
    "2",
    "--intermediate_size",
    "64",
]
HELD_OUT_DOMAIN = "tourism_geography"  # never trained on by the PT studies: their perplexity is measured on it
# Where the demo tokenizer and the token caches live; ``python -m experiments --work_dir`` moves both.
WORK = {"tokenizer": DEMO_TOKENIZER, "cache": "cache/experiments"}
RAW_PROMPTS = ["李白是", "旅游的意义在于", "The history of", "Machine learning is"]


@dataclass(frozen=True)
class Scale:
    """How big each run is: ``full`` is the documented size (each study within about 10 minutes on 2 CPU cores)."""

    pt_steps: int
    sft_epochs: int
    dpo_steps: int
    seeds: tuple[int, ...]
    eval_tokens: int
    new_tokens: int
    logging_steps: int
    pt_epochs: int  # the scaling study trains for epochs, not steps...
    data_scale: float  # ...on these shares of its data shares
    shape: tuple[str, ...] = ()  # model shape overrides


SCALES = {
    "full": Scale(
        pt_steps=300,
        sft_epochs=3,
        dpo_steps=40,
        seeds=(1, 2),
        eval_tokens=6000,
        new_tokens=48,
        logging_steps=10,
        pt_epochs=3,
        data_scale=1.0,
    ),
    "ci": Scale(
        pt_steps=6,
        sft_epochs=2,
        dpo_steps=2,
        seeds=(1,),
        eval_tokens=300,
        new_tokens=6,
        logging_steps=1,
        pt_epochs=1,
        data_scale=0.125,
        shape=tuple(TINY),
    ),
}


def common_flags(seed: int, out: Path, scale: Scale) -> list[str]:
    return [
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--logging_steps",
        str(scale.logging_steps),
    ]


def train_pt(out: Path, seed: int, scale: Scale, *overrides: str) -> Path:
    """A demo-recipe PT run (configs/pt_demo.yaml) with ``overrides``; the held-out domain is never trained on."""
    domains = sorted(p.name for p in Path("mini_data/pt").iterdir() if p.is_dir() and p.name != HELD_OUT_DOMAIN)
    demo_pt.run(
        [
            *common_flags(seed, out, scale),
            "--max_steps",
            str(scale.pt_steps),
            "--domains",
            *domains,
            "--cache_dir",
            WORK["cache"],
            "--tokenizer_name_or_path",
            WORK["tokenizer"],
            *scale.shape,
            *overrides,
        ]
    )
    return out


def train_sft(out: Path, model: Path, seed: int, scale: Scale, *overrides: str) -> Path:
    epochs = ["--max_steps", "-1", "--num_train_epochs", str(scale.sft_epochs)]
    demo_sft.run(
        [
            *common_flags(seed, out, scale),
            "--model_name_or_path",
            str(model),
            *epochs,
            "--cache_dir",
            WORK["cache"],
            *overrides,
        ]
    )
    return out


def train_dpo(out: Path, model: Path, seed: int, scale: Scale, *overrides: str) -> dict:
    """A demo-recipe DPO run; returns its held-out preference report."""
    demo_dpo.run(
        [
            *common_flags(seed, out, scale),
            "--model_name_or_path",
            str(model),
            "--max_steps",
            str(scale.dpo_steps),
            *overrides,
        ]
    )
    return json.loads((out / "preference_report.json").read_text())


def final_loss(run: Path, last: int = 3) -> float:
    """The mean of the last logged training losses (one logged value is noisy)."""
    losses = [h["loss"] for h in find_log_history(run) if "loss" in h]
    return statistics.fmean(losses[-last:])


def score(runs: list[Path], out: Path, scale: Scale, eval_data: str) -> dict:
    """Held-out perplexity and greedy answers (repetition metrics) of every run, through mini_qwen_eval."""
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in RAW_PROMPTS))
    rows = eval_main(
        EvalArguments(
            model_name_or_path=[str(r) for r in runs],
            prompts=str(prompts),
            eval_data=eval_data,
            eval_max_tokens=scale.eval_tokens,
            block_size=256,
            output_dir=str(out / "eval"),
            decoding=["greedy"],
            max_new_tokens=scale.new_tokens,
        )
    )
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    answers = {}
    for row in rows:
        answers.setdefault(Path(row["model"]).name, []).append((row["prompt"], row["output"]))
    return {"metrics": {Path(r).name: metrics[Path(r).name] for r in runs}, "answers": answers}


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def verdict(groups: dict[str, list[float]], lower_is_better: bool, what: str, sample_size: int | None = None) -> str:
    """Name the best variant only if its seeds' range clears every other variant's range and, for a share measured
    on ``sample_size`` items, the gap also exceeds two standard errors of such a share (at 50%, the widest)."""
    pick = min if lower_is_better else max
    best = pick(groups, key=lambda name: statistics.fmean(groups[name]))
    if len({round(statistics.fmean(v), 6) for v in groups.values()}) == 1:
        return f"Every variant has the same {what}: no difference at all at this size."
    if sample_size:
        floor = 2 * math.sqrt(0.25 / sample_size)
        gap = min(abs(statistics.fmean(groups[best]) - statistics.fmean(v)) for n, v in groups.items() if n != best)
        side = "lowest" if lower_is_better else "highest"
        if gap == 0:
            return f"{best} ties with another variant for the {side} {what}: these runs do not support a conclusion."
        if gap < floor:
            return (
                f"{best} has the {side} {what}, but by {gap:.3f}: less than two standard errors of a share of "
                f"{sample_size} items ({floor:.3f}), so within the sampling noise of the held-back set; these "
                "runs do not support a conclusion."
            )
    lo, hi = min(groups[best]), max(groups[best])
    clear = all((max(v) < lo) if not lower_is_better else (min(v) > hi) for n, v in groups.items() if n != best)
    if len(groups[best]) < 2:
        return (
            f"One seed per variant: {best} has the {'lowest' if lower_is_better else 'highest'} {what}, but "
            "without a second seed nothing can be said about noise."
        )
    if clear:
        return (
            f"**{best}** has the {'lowest' if lower_is_better else 'highest'} {what}, and the ranges over seeds "
            "do not overlap: the difference is larger than the seed-to-seed noise of these runs."
        )
    return (
        f"The {what} ranges over seeds overlap: on data this small the difference is within noise, so these runs "
        "do not support a conclusion. Repeat at full size (below)."
    )


def write_report(
    out: Path,
    title: str,
    question: str,
    table: list[list[str]],
    header: list[str],
    figure: Path | None,
    answers: dict | None,
    conclusion: str,
    full_size: str,
) -> Path:
    lines = [
        f"# Experiment: {title}",
        "",
        question,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in table),
        "",
    ]
    if figure is not None:
        lines += [f"![curves]({figure.name})", ""]
    lines += ["## What to conclude", "", conclusion, ""]
    if answers:
        lines += ["## Greedy answers (first seed)", ""]
        for name, pairs in answers.items():
            lines += [f"**{name}**", ""] + [f"- {p!r} → {a[:160]!r}" for p, a in pairs] + [""]
    lines += ["## At full size, on GPUs", "", full_size, ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def curves(runs: list[Path], out: Path, x: str = "steps") -> Path:
    return plot_runs(runs, x=x, output=out / "curves.png")[0]
