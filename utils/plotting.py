"""Training curves from runs' ``trainer_state.json``, read as JSON data (never executed).

``plot_loss``: one run, every logged curve in its own panel, saved next to the run; a held-out curve (``eval_loss``,
``eval_rewards/accuracies`` ...) shares the panel of its training twin, and a reference curve (``utils.reference``)
is drawn beside the loss. Several runs in one figure: ``utils.plot_runs``. ``tools/plot.py`` is the command line.

What cannot be read is named and skipped, never a traceback: an unreadable ``trainer_state.json`` (the newest
readable checkpoint's is used instead), folders that are not ``checkpoint-<step>``, log entries without a step."""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

from utils.reference import ReferenceCurve, load_reference  # noqa: E402
from utils.run_info import RUN_INFO_FILE, read_run_info, recorded_arguments  # noqa: E402

logger = logging.getLogger(__name__)

# Curves drawn when logged, a panel each with the key's held-out twin (HELD_OUT + key); DPO adds its reward metrics.
DEFAULT_KEYS = ("loss", "learning_rate", "grad_norm", "real_token_share", "rewards/margins", "rewards/accuracies")
HELD_OUT = "eval_"
CHECKPOINT = re.compile(r"checkpoint-(\d+)")


class PlotInputError(ValueError):
    """A run that cannot be plotted as asked; the message names the file and what to do instead."""


def find_log_history(run_dir: str | Path) -> list[dict]:
    """The log history of the run: ``trainer_state.json`` in the dir, else in its newest checkpoint that has a
    readable one. Unreadable files and folders that are not ``checkpoint-<step>`` are skipped with a warning."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    checkpoints, others = [], []
    for folder in run.glob("checkpoint-*"):
        match = CHECKPOINT.fullmatch(folder.name)
        if match and folder.is_dir():
            checkpoints.append((int(match.group(1)), folder))
        else:
            others.append(folder.name)
    if others:
        logger.warning(
            "%s: %d folder(s) not named checkpoint-<step> left out: %s", run, len(others), ", ".join(others)
        )
    candidates = [run / "trainer_state.json"] + [f / "trainer_state.json" for _, f in sorted(checkpoints)[::-1]]
    problems = []
    for path in candidates:
        if not path.is_file():
            continue
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            problems.append(f"{path} is not readable JSON ({err})")
            continue
        history = state.get("log_history") if isinstance(state, dict) else None
        if not isinstance(history, list):
            problems.append(f"{path} has no log_history list")
            continue
        for problem in problems:
            logger.warning("Skipped: %s", problem)
        return history
    detail = f": {'; '.join(problems)}" if problems else ""
    raise FileNotFoundError(f"No readable trainer_state.json in {run} or its checkpoints{detail}")


def series(history: list[dict], key: str, source: str = "the log history") -> list[tuple[int, float]]:
    """``(step, value)`` of every finite ``key`` in a log history; entries without an integer step are skipped and
    counted in one warning naming ``source``."""
    points, no_step = [], 0
    for entry in history:
        if not isinstance(entry, dict) or key not in entry:
            continue
        step, value = entry.get("step"), entry[key]
        if not isinstance(step, int) or isinstance(step, bool):
            no_step += 1
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            points.append((step, value))
    if no_step:
        logger.warning("%s: %d entries with %s but no step left out", source, no_step, key)
    return points


def seen_per_step(run_dir: str | Path, unit: str = "tokens") -> float:
    """What one optimizer step of the run trains on: tokens (PT: global batch x block size; SFT: the average packed
    row, from the data summary) or preference pairs (DPO: the global batch), from its run_info.json."""
    info = read_run_info(run_dir)
    where = Path(run_dir) / RUN_INFO_FILE
    if info is None:
        raise PlotInputError(
            f"{where}: missing or unreadable, so the {unit} per step of {run_dir} are unknown; plot against --x steps"
        )
    stage, batch, data = info.get("stage"), info.get("global_batch_size"), info.get("data") or {}
    if not isinstance(batch, int | float) or batch <= 0:
        raise PlotInputError(
            f"{where}: no global_batch_size, so the {unit} per step are unknown; plot against --x steps"
        )
    if unit == "pairs" and stage == "dpo":
        return float(batch)
    if unit == "tokens" and stage == "pt":
        block = recorded_arguments(info).get("block_size")
        if not isinstance(block, int) or block <= 0:
            raise PlotInputError(
                f"{where}: no block_size among the PT arguments, so the tokens per step are "
                "unknown; plot against --x steps"
            )
        return float(batch * block)
    if unit == "tokens" and stage == "sft" and data.get("rows_per_epoch") and data.get("tokens"):
        return batch * data["tokens"] / data["rows_per_epoch"]
    counted = {
        "dpo": "pairs (a DPO step trains on chosen/rejected pairs, not a token stream)",
        "pt": "tokens",
        "sft": "tokens (with rows_per_epoch in its data summary)",
    }.get(stage, "nothing known")
    raise PlotInputError(
        f"{run_dir}: a {stage or 'unknown'} run, counted in {counted}, has no {unit} per step in "
        f"{where}: plot it against --x steps"
    )


def reference_on_steps(reference: ReferenceCurve, run_dir: str | Path) -> tuple[list[float], list[float]]:
    """The reference on the run's own step axis: at the same tokens (or pairs) seen, not the same step number."""
    per_step = seen_per_step(run_dir, reference.unit)
    return [seen / per_step for seen in reference.seen], reference.loss


def panel_curves(history: list[dict], keys: tuple[str, ...] = DEFAULT_KEYS, source: str = "the log history"):
    """``{key: {key: points, HELD_OUT + key: points}}`` for every key logged: a panel each, the held-out twin with its
    training curve."""
    curves = {}
    for key in keys:
        pair = {name: points for name in (key, HELD_OUT + key) if (points := series(history, name, source))}
        if pair:
            curves[key] = pair
    return curves


def plot_loss(
    run_dir: str | Path,
    keys: tuple[str, ...] = DEFAULT_KEYS,
    output: str | Path | None = None,
    reference: str | None = None,
) -> Path:
    """Plot every ``key`` found in the log history against the step, each with its held-out twin, and the loss
    beside ``reference`` (default: the run's own ``reference_curve`` argument, if any); returns the PNG path."""
    curves = panel_curves(find_log_history(run_dir), keys, f"{Path(run_dir) / 'trainer_state.json'}")
    if not curves:
        raise ValueError(f"{run_dir}: the log history has none of {keys}")
    reference = reference or recorded_arguments(read_run_info(run_dir) or {}).get("reference_curve")
    fig, axes = plt.subplots(len(curves), 1, figsize=(8, 2.6 * len(curves)), sharex=True, squeeze=False)
    for ax, (key, pair) in zip(axes[:, 0], curves.items()):
        for name, points in pair.items():
            steps, values = zip(*points)
            label = "held-out" if name.startswith(HELD_OUT) else "train"
            ax.plot(steps, values, marker="." if len(points) < 50 else None, label=label)
        if key == "loss" and reference:
            _draw_reference(ax, reference, run_dir, max(s for s, _ in pair.get("loss", pair[next(iter(pair))])))
        if len(pair) > 1 or (key == "loss" and reference):
            ax.legend(fontsize=8)
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


def _draw_reference(ax, name: str, run_dir: str | Path, last_step: int) -> None:
    """The reference up to a little past the run's last step (the whole reference would flatten a short run)."""
    curve = load_reference(name)
    try:
        steps, losses = reference_on_steps(curve, run_dir)
    except PlotInputError as err:
        logger.warning("No reference drawn: %s", err)
        return
    shown = [(s, v) for s, v in zip(steps, losses) if s <= 1.5 * last_step] or list(zip(steps, losses))[:1]
    xs, ys = zip(*shown)
    ax.plot(
        xs,
        ys,
        color="gray",
        linestyle="--",
        marker="." if len(shown) < 50 else None,
        label=f"{curve.label}, at equal {curve.unit}",
    )
