"""``python -m experiments NAME [--scale full|ci] [--output_root results/experiments]``: run one study, print
where its report is. NAME: packing, bilingual, scaling, sft_epochs, dpo_lr."""

from __future__ import annotations

import argparse
import importlib
import os
import time
from pathlib import Path

from experiments.common import SCALES, WORK

STUDIES = ("packing", "bilingual", "scaling", "sft_epochs", "dpo_lr")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=STUDIES, help="The study to run.")
    sizes = "full: the documented size (minutes on a CPU); ci: seconds, to check the wiring."
    parser.add_argument("--scale", choices=sorted(SCALES), default="full", help=sizes)
    parser.add_argument("--output_root", default="results/experiments", help="Reports go to <root>/<name>/.")
    parser.add_argument(
        "--work_dir",
        default=None,
        help="The demo tokenizer and token caches go here (default: models/mini-tokenizer and cache/experiments).",
    )
    args = parser.parse_args(argv)
    if args.work_dir:
        WORK.update(tokenizer=str(Path(args.work_dir) / "tokenizer"), cache=str(Path(args.work_dir) / "cache"))
    study = importlib.import_module(f"experiments.{args.name}")
    out = Path(args.output_root) / args.name
    out.mkdir(parents=True, exist_ok=True)
    scale = SCALES[args.scale]
    start, load_at_start = time.perf_counter(), os.getloadavg()[0]
    report = study.run(out, scale)
    minutes = (time.perf_counter() - start) / 60
    path = report.write(out, args.scale, scale.seeds, minutes, (load_at_start, os.getloadavg()[0]))
    print(path.read_text(encoding="utf-8"))
    print(f"Experiment {args.name} finished in {minutes:.1f} min; report: {path}")
    return path


if __name__ == "__main__":
    main()
