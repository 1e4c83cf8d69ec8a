"""Training curves from runs' ``trainer_state.json``, read as JSON data (never executed).

``plot_loss``: one run, every logged curve in its own panel, saved next to the run. ``plot_runs``: several runs'
losses in one figure, one line per run named after its folder, against optimizer steps or against training tokens
(steps x the run's tokens per step, from its run_info.json), the way scaling-law figures compare runs of different
sizes. ``plot_groups``: the same with the seeds of each variant drawn together (their mean and range).
``tools/plot.py`` is the command line.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

from utils.run_info import read_run_info  # noqa: E402

logger = logging.getLogger(__name__)

# Curves drawn when present in the log history, one panel each; DPO adds its reward metrics.
DEFAULT_KEYS = (
    "loss",
    "eval_loss",
    "learning_rate",
    "grad_norm",
    "real_token_share",
    "rewards/margins",
    "rewards/accuracies",
)


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
    """``(step, value)`` of every finite ``key`` in a log history."""
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
    runs = [Path(r) for r in run_dirs]
    return plot_groups({label: [run] for run, label in zip(runs, run_labels(runs))}, x, key, output)


def plot_groups(
    groups: dict[str, list[str | Path]], x: str = "steps", key: str = "loss", output: str | Path = "runs.png"
):
    """One line per group of runs (the seeds of one variant): the mean of ``key`` over the group's runs at every
    step they all logged, and a band from their lowest to their highest value, so that every seed is in the figure.
    A group of one run is its plain curve. Returns the PNG path and the axes."""
    if x not in ("steps", "tokens"):
        raise ValueError(f"x must be steps or tokens, got {x!r}")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, members in groups.items():
        curves = []
        for run in map(Path, members):
            points = dict(series(find_log_history(run), key))
            if not points:
                raise ValueError(f"{run}: no {key} in the log history")
            curves.append(points)
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not steps:
            raise ValueError(f"{label}: its runs logged {key} at no common step")
        values = np.array([[c[s] for s in steps] for c in curves])
        scale = tokens_per_step(members[0]) if x == "tokens" else 1
        xs = [s * scale for s in steps]
        name = f"{label} (mean of {len(members)} seeds, band: min-max)" if len(members) > 1 else label
        (line,) = ax.plot(xs, values.mean(0), label=name, marker="." if len(steps) < 50 else None)
        if len(members) > 1:
            ax.fill_between(xs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
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
