"""Loss curves from a run's ``trainer_state.json``, read as JSON data (never executed).

Run on a finished (or running) output dir::

    python -m utils.plotting results/pt
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

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


def plot_loss(run_dir: str | Path, keys: tuple[str, ...] = DEFAULT_KEYS, output: str | Path | None = None) -> Path:
    """Plot every ``key`` found in the log history against the step; returns the PNG path."""
    history = find_log_history(run_dir)
    series = {}
    for key in keys:
        points = [(h["step"], h[key]) for h in history if key in h and isinstance(h[key], (int, float))]
        points = [(s, v) for s, v in points if math.isfinite(v)]
        if points:
            series[key] = points
    if not series:
        raise ValueError(f"{run_dir}: the log history has none of {keys}")
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 2.6 * len(series)), sharex=True, squeeze=False)
    for ax, (key, points) in zip(axes[:, 0], series.items()):
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plot the training curves of a run.")
    parser.add_argument("run_dir", help="A stage's output_dir (or one of its checkpoints).")
    parser.add_argument("--output", default=None, help="PNG path (default: <run_dir>/training_curves.png).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    print(plot_loss(args.run_dir, output=args.output))


if __name__ == "__main__":
    main()
