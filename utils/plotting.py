"""Training curves from runs' ``trainer_state.json``, read as JSON data (never executed).

``plot_loss``: one run, every logged curve in its own panel, saved next to the run. ``plot_runs``: several runs'
losses in one figure, one line per run named after its folder, against optimizer steps or against training tokens
(steps x the run's tokens per step, from its run_info.json), the way scaling-law figures compare runs of different
sizes. ``tools/plot.py`` is the command line.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

from utils.run_info import read_run_info  # noqa: E402

logger = logging.getLogger(__name__)

# Curves drawn when present in the log history, one panel each; DPO adds its reward metrics, GRPO its reward, the
# reward's parts, the reply length and the share of replies that ended.
DEFAULT_KEYS = (
    "loss",
    "eval_loss",
    "learning_rate",
    "grad_norm",
    "real_token_share",
    "rewards/margins",
    "rewards/accuracies",
    "reward",
    "rewards/correctness_reward/mean",
    "rewards/format_reward/mean",
    "completions/mean_length",
    "completions/ended_ratio",
)
# Curves that are one minus a logged one: TRL logs the share of replies cut at max_completion_length.
COMPLEMENTS = {"completions/ended_ratio": "completions/clipped_ratio"}


def find_log_history(run_dir: str | Path) -> list[dict]:
    """The log history of the run: ``trainer_state.json`` in the dir, else in its newest checkpoint."""
    run = Path(run_dir)
    candidates = [run / "trainer_state.json"]
    candidates += sorted(run.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1]))[
        ::-1
    ]
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text()).get("log_history", [])
    raise FileNotFoundError(f"No trainer_state.json in {run} or its checkpoints")


def series(history: list[dict], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of every finite ``key`` in a log history (or one minus its ``COMPLEMENTS`` entry)."""
    if key in COMPLEMENTS:
        return [(step, 1 - value) for step, value in series(history, COMPLEMENTS[key])]
    points = [(h["step"], h[key]) for h in history if key in h and isinstance(h[key], (int, float))]
    return [(s, v) for s, v in points if math.isfinite(v)]


def plot_loss(run_dir: str | Path, keys: tuple[str, ...] = DEFAULT_KEYS, output: str | Path | None = None) -> Path:
    """Plot every ``key`` found in the log history against the step; returns the PNG path."""
    history = find_log_history(run_dir)
    curves = {key: points for key in keys if (points := series(history, key))}
    if not curves:
        raise ValueError(f"{run_dir}: the log history has none of {keys}")
    fig, axes = plt.subplots(len(curves), 1, figsize=(8, 2.6 * len(curves)), sharex=True, squeeze=False)
    for ax, (key, points) in zip(axes[:, 0], curves.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimizer step")
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    out = Path(output) if output else Path(run_dir) / "training_curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    logger.info("Saved %s", out)
    return out


def tokens_per_step(run_dir: str | Path) -> float:
    """Training tokens per optimizer step: the global batch times the tokens of one example (PT: the block size;
    SFT: the average packed row, from the data summary)."""
    info = read_run_info(run_dir) or {}
    arguments = {k: v for group in info.get("arguments", {}).values() for k, v in group.items()}
    batch, data = info.get("global_batch_size"), info.get("data", {})
    if batch and info.get("stage") == "pt":
        return batch * arguments["block_size"]
    if batch and info.get("stage") == "sft" and data.get("rows_per_epoch"):
        return batch * data["tokens"] / data["rows_per_epoch"]
    raise ValueError(f"{run_dir}: tokens per step are known for PT and SFT runs with a run_info.json only")


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Folder names, or the last two path parts where names repeat (results/a/pt, results/b/pt)."""
    names = [p.name for p in run_dirs]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in run_dirs]


def plot_runs(run_dirs: list[str | Path], x: str = "steps", key: str = "loss", output: str | Path = "runs.png"):
    """One line per run of ``key`` against ``x`` (steps or tokens); returns the PNG path and the axes."""
    if x not in ("steps", "tokens"):
        raise ValueError(f"x must be steps or tokens, got {x!r}")
    runs = [Path(r) for r in run_dirs]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run, label in zip(runs, run_labels(runs)):
        points = series(find_log_history(run), key)
        if not points:
            raise ValueError(f"{run}: no {key} in the log history")
        scale = tokens_per_step(run) if x == "tokens" else 1
        steps, values = zip(*points)
        ax.plot([s * scale for s in steps], values, label=label, marker="." if len(points) < 50 else None)
    ax.set_xlabel("training tokens" if x == "tokens" else "optimizer step")
    if x == "tokens":
        ax.set_xscale("log")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    logger.info("Saved %s", out)
    return out, ax
