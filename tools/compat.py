"""Compatibility with other readers of our model folders.

Make a saved folder portable by hand (one saved before ``utils.train.portable`` existed, or edited by hand)::

    python -m tools.compat results/dpo

Install the transformers 4.x side folder that the tests read our folders with (``bash run.sh test`` does it once)::

    python -m tools.compat --install_transformers4
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from utils.train.portable import make_portable

# The newest transformers 4.x. It checks at import that tokenizers is >=0.22,<=0.23.0 and huggingface_hub <1.0,
# older than the venv's, so those two come along; everything else it needs (torch, numpy, safetensors, regex,
# pyyaml, requests, tqdm, filelock, packaging, fsspec) it takes from the venv.
TRANSFORMERS4 = ("transformers==4.57.6", "tokenizers==0.22.2", "huggingface_hub==0.36.2")


def transformers4_dir() -> Path:
    """The transformers 4.x side folder: inside the venv, so it lives and goes with it. Put it first on
    ``PYTHONPATH`` to run the venv's Python with 4.x instead of 5.x."""
    return Path(sys.prefix) / "compat" / TRANSFORMERS4[0].replace("==", "-")


def install_transformers4() -> Path:
    """pip-install ``TRANSFORMERS4`` into ``transformers4_dir()`` (no dependencies: the venv has them), check that
    it imports, and only then give it its final name, so a broken install never looks installed."""
    target = transformers4_dir()
    if (target / "transformers").is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(partial), *TRANSFORMERS4]
    subprocess.run(command, check=True)
    check = "import transformers; from transformers import AutoModelForCausalLM, AutoTokenizer"
    env = {**os.environ, "PYTHONPATH": str(partial)}
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"transformers 4.x in {partial} does not import:\n{result.stderr[-2000:]}")
    partial.rename(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", help="Saved model folders to make portable, in place.")
    parser.add_argument(
        "--install_transformers4",
        action="store_true",
        help=f"Install {', '.join(TRANSFORMERS4)} into {transformers4_dir()} (once).",
    )
    args = parser.parse_args(argv)
    if not args.folders and not args.install_transformers4:
        parser.error("give a folder, or --install_transformers4")
    if args.install_transformers4:
        print(f"transformers 4.x side folder: {install_transformers4()}")
    for folder in args.folders:
        if not (Path(folder) / "config.json").is_file() and not (Path(folder) / "tokenizer.json").is_file():
            raise SystemExit(f"{folder} has neither config.json nor tokenizer.json")
        make_portable(folder)
        print(f"made portable: {folder}")


if __name__ == "__main__":
    main()
