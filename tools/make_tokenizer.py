"""Write a tokenizer into a folder: the exact Qwen2.5 tokenizer (offline), or the small demo tokenizer.

The Qwen2.5 tokenizer, into the model folder (what ``run.sh`` does on first use)::

    python -m tools.make_tokenizer --output_dir models/Qwen2.5-0.5B-Instruct

The small demo tokenizer (same formats, 4k tokens), trained on every string of the bundled data::

    python -m tools.make_tokenizer --train_from mini_data/pt mini_data/sft mini_data/dpo --vocab_size 4000 \\
        --output_dir models/mini-tokenizer

A folder that already holds tokenizer files is kept as it is, silently (``--force`` rebuilds).
"""

from __future__ import annotations

import argparse
import logging

from utils.data.parquet import iter_strings
from utils.tokenizer import DEFAULT_TOKENIZER_DIR, build_qwen_tokenizer, has_tokenizer_files, train_small_tokenizer

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default=DEFAULT_TOKENIZER_DIR, help="Where to write the tokenizer files.")
    parser.add_argument("--tiktoken_file", default=None, help="qwen.tiktoken path (default: the installed copy).")
    parser.add_argument("--force", action="store_true", help="Rebuild even if tokenizer files exist.")
    parser.add_argument(
        "--train_from", nargs="+", default=None, help="Train a small tokenizer on every string of these parquet files."
    )
    parser.add_argument("--vocab_size", type=int, default=4000, help="Vocabulary size with --train_from.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
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
