"""Training curves of finished (or running) runs, from their ``trainer_state.json``.

One run: every logged curve in its own panel, held-out curves beside training ones (``<run>/training_curves.png``
unless ``--output``)::

    python -m tools.plot results/pt
    python -m tools.plot results/pt --reference upstream_pt          # upstream's PT loss at the same tokens seen

Several runs: one figure, one line per run, against optimizer steps, training tokens or preference pairs::

    python -m tools.plot results/pt_quarter results/pt_half results/pt --x tokens --output scaling.png
    python -m tools.plot results/dpo results/dpo_lr1e-6 --x pairs --reference upstream_dpo

References: upstream mini_qwen's logs (``mini_data/reference``: upstream_pt, upstream_pt1-3, upstream_dpo,
upstream_dpo1-3) or a CSV of one's own with a ``tokens`` or ``pairs`` column and a ``loss`` column.
"""

from __future__ import annotations

import argparse
import logging

from utils.plot_runs import plot_runs
from utils.plotting import PlotInputError, plot_loss
from utils.reference import ReferenceError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="Stage output dirs (or checkpoints); several: one figure.")
    parser.add_argument("--x", choices=["steps", "tokens", "pairs"], default="steps", help="Several runs: the x axis.")
    parser.add_argument("--key", default="loss", help="Several runs: the logged value to compare.")
    parser.add_argument("--reference", action="append", default=[], help="A reference curve to draw (repeatable).")
    parser.add_argument("--output", default=None, help="PNG path (default: <run_dir>/training_curves.png, runs.png).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if len(args.run_dirs) == 1 and args.x == "steps" and args.key == "loss" and len(args.reference) <= 1:
            print(plot_loss(args.run_dirs[0], output=args.output, reference=(args.reference or [None])[0]))
        else:
            print(plot_runs(args.run_dirs, args.x, args.key, args.output or "runs.png", args.reference)[0])
    except (PlotInputError, ReferenceError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
