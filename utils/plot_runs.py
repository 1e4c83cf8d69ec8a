"""Several runs in one figure: one line per run (``plot_runs``) or per variant with its seeds drawn together
(``plot_groups``), against optimizer steps or against what the runs have seen (steps x the run's tokens or pairs per
step, from its run_info.json), the way scaling-law figures compare runs of different sizes. The logs are read, and
what cannot be read is named, by ``utils.plotting``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from utils.plotting import PlotInputError, find_log_history, plt, reference_on_steps, seen_per_step, series
from utils.reference import load_reference
from utils.run_info import folder_labels

logger = logging.getLogger(__name__)
X_LABELS = {"steps": "optimizer step", "tokens": "training tokens", "pairs": "preference pairs"}


def plot_runs(
    run_dirs: list[str | Path],
    x: str = "steps",
    key: str = "loss",
    output: str | Path = "runs.png",
    references: list[str] = (),
):
    """One line per run of ``key`` against ``x`` (steps, tokens or pairs), and each of ``references`` (steps: at the
    first run's batch); returns the PNG path and the axes."""
    runs = [Path(r) for r in run_dirs]
    return plot_groups({label: [run] for run, label in zip(runs, folder_labels(runs))}, x, key, output, references)


def plot_groups(
    groups: dict[str, list[str | Path]],
    x: str = "steps",
    key: str = "loss",
    output: str | Path = "runs.png",
    references: list[str] = (),
):
    """One line per group of runs (the seeds of one variant): the mean of ``key`` over the group's runs at every
    step they all logged, and a band from their lowest to their highest value, so that every seed is in the figure.
    A group of one run is its plain curve. Returns the PNG path and the axes."""
    if x not in X_LABELS:
        raise ValueError(f"x must be steps, tokens or pairs, got {x!r}")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, members in groups.items():
        curves = []
        for run in map(Path, members):
            points = dict(series(find_log_history(run), key, str(run / "trainer_state.json")))
            if not points:
                raise PlotInputError(f"{run}: no {key} in the log history")
            curves.append(points)
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        if not steps:
            raise PlotInputError(f"{label}: its runs logged {key} at no common step")
        values = np.array([[c[s] for s in steps] for c in curves])
        scale = seen_per_step(members[0], x) if x != "steps" else 1
        xs = [s * scale for s in steps]
        name = f"{label} (mean of {len(members)} seeds, band: min-max)" if len(members) > 1 else label
        (line,) = ax.plot(xs, values.mean(0), label=name, marker="." if len(steps) < 50 else None)
        if len(members) > 1:
            ax.fill_between(xs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
    first = next(iter(groups.values()))[0]
    for name in references:
        curve = load_reference(name)
        if x == "steps":
            xs, ys = reference_on_steps(curve, first)
        elif x == curve.unit:
            xs, ys = curve.seen, curve.loss
        else:
            raise PlotInputError(f"reference {name} counts {curve.unit}; plot it against --x {curve.unit} or steps")
        ax.plot(xs, ys, color="gray", linestyle="--", label=curve.label)
    ax.set_xlabel(X_LABELS[x])
    if x != "steps":
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
