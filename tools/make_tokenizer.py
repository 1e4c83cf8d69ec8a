"""Write a tokenizer into a folder: the exact Qwen2.5 tokenizer (offline), or the small demo tokenizer.

The Qwen2.5 tokenizer, into the model folder (what ``run.sh`` does on first use)::

    python -m tools.make_tokenizer --output_dir models/Qwen2.5-0.5B-Instruct

The small demo tokenizer (same formats, 4k tokens), trained on every string of the bundled data::

    python -m tools.make_tokenizer --train_from mini_data/pt mini_data/sft mini_data/dpo --vocab_size 4000 \\
        --output_dir models/mini-tokenizer

Fetch the Qwen BPE ranks the first form is built from (``run.sh setup`` does it once): one file of the pinned
dashscope wheel, checked by sha256, kept in the environment; dashscope itself is not installed::

    python -m tools.make_tokenizer --fetch_ranks

A folder that already holds tokenizer files is kept as it is, silently (``--force`` rebuilds).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from utils.bpe import QWEN_RANKS_MEMBER, QWEN_RANKS_SHA256, QWEN_RANKS_SOURCE, qwen_ranks_path
from utils.data.parquet import iter_strings
from utils.tokenizer import DEFAULT_TOKENIZER_DIR, build_qwen_tokenizer, has_tokenizer_files, train_small_tokenizer

logger = logging.getLogger(__name__)


def fetch_ranks() -> Path:
    """Download the pinned wheel (no dependencies), take out the ranks, check their sha256, then move them into place
    in one step, so that an interrupted fetch never leaves a file that looks fetched."""
    target = qwen_ranks_path()
    with tempfile.TemporaryDirectory() as download:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            download,
            QWEN_RANKS_SOURCE,
        ]
        subprocess.run(command, check=True)
        (wheel,) = Path(download).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(QWEN_RANKS_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != QWEN_RANKS_SHA256:
        raise SystemExit(f"{QWEN_RANKS_MEMBER} of {wheel.name} has sha256 {digest}, expected {QWEN_RANKS_SHA256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=DEFAULT_TOKENIZER_DIR, help="Where to write the tokenizer files.")
    parser.add_argument("--tiktoken_file", default=None, help="qwen.tiktoken path (default: the installed copy).")
    parser.add_argument("--force", action="store_true", help="Rebuild even if tokenizer files exist.")
    parser.add_argument(
        "--train_from", nargs="+", default=None, help="Train a small tokenizer on every string of these parquet files."
    )
    parser.add_argument("--vocab_size", type=int, default=4000, help="Vocabulary size with --train_from.")
    parser.add_argument(
        "--fetch_ranks", action="store_true", help=f"Only fetch the Qwen BPE ranks into {qwen_ranks_path()}."
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.fetch_ranks:
        logger.info("Qwen BPE ranks: %s", fetch_ranks())
        return
    if has_tokenizer_files(args.output_dir) and not args.force:
        return
    if args.train_from:
        texts = (text for folder in args.train_from for text in iter_strings(folder))
        tokenizer = train_small_tokenizer(texts, args.vocab_size)
    else:
        tokenizer = build_qwen_tokenizer(args.tiktoken_file)
    tokenizer.save_pretrained(args.output_dir)
    logger.info("Wrote a tokenizer of %d tokens to %s", len(tokenizer), args.output_dir)


if __name__ == "__main__":
    main()
