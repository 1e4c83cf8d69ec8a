"""One full checkpoint from LoRA adapters: the adapters merged into their base, saved as any stage saves a model.

    python -m tools.merge results/sft_lora/checkpoint-400          # -> results/sft_lora/checkpoint-400-merged
    python -m tools.merge results/sft_lora/adapter --output_dir results/sft_lora_merged
    python -m tools.merge ADAPTER_DIR --base_model_name_or_path results/pt --output_dir OUT

A LoRA run (``--use_peft true``) already ends with a merged model in its output folder; this is for the adapters
it keeps on the way (a ``checkpoint-*`` of a stopped run, its ``adapter/`` folder) or brought from elsewhere. The
base is the folder the adapters were trained on, as ``adapter_config.json`` names it, unless given. It is loaded in
fp32 (never in 4 bits, even after QLoRA) and the output is a full checkpoint: fp32 weights, tokenizer, sampling
defaults, made portable, so mini_qwen_eval.py, tools.serve, tools.web, tools.export and tools.bench use it as it is.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from utils import WEIGHT_FILES
from utils.train.adapters import merge_adapter

logger = logging.getLogger(__name__)


def default_output_dir(adapter_dir: Path) -> Path:
    return adapter_dir.with_name(adapter_dir.name + "-merged")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapter_dir", help="Folder with adapter_config.json and adapter_model.safetensors.")
    parser.add_argument(
        "--output_dir", default=None, help="Where the merged model goes (default: ADAPTER_DIR-merged)."
    )
    parser.add_argument(
        "--base_model_name_or_path",
        default=None,
        help="The base folder (default: the one adapter_config.json names, where the adapters were trained).",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace a model already in --output_dir.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    adapter_dir = Path(args.adapter_dir)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(adapter_dir)
    if not args.overwrite and any((output_dir / name).is_file() for name in WEIGHT_FILES):
        raise SystemExit(f"{output_dir} already holds a model: pick another --output_dir, or pass --overwrite")
    try:
        merged = merge_adapter(adapter_dir, output_dir, base=args.base_model_name_or_path)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from None
    print(f"Merged model: {merged}\nChat with it: python mini_qwen_eval.py --model_name_or_path {merged}")
    return merged


if __name__ == "__main__":
    main()
