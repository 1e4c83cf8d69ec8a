"""Training curves of finished (or running) runs, from their ``trainer_state.json``.

One run: every logged curve in its own panel (``<run>/training_curves.png`` unless ``--output``)::

    python -m tools.plot results/pt

Several runs: one figure, one line per run, against optimizer steps or training tokens::

    python -m tools.plot results/pt_quarter results/pt_half results/pt --x tokens --output scaling.png
"""

from __future__ import annotations

import argparse
import logging

from utils.plotting import plot_loss, plot_runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", help="Stage output dirs (or checkpoints); several: one figure.")
    parser.add_argument("--x", choices=["steps", "tokens"], default="steps", help="Several runs: the x axis.")
    parser.add_argument("--key", default="loss", help="Several runs: the logged value to compare.")
    parser.add_argument("--output", default=None, help="PNG path (default: <run_dir>/training_curves.png, runs.png).")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if len(args.run_dirs) == 1:
        print(plot_loss(args.run_dirs[0], output=args.output))
    else:
        print(plot_runs(args.run_dirs, args.x, args.key, args.output or "runs.png")[0])


if __name__ == "__main__":
    main()
