"""Helpers for the demo entry points: the stage code is reused as is, only the recipe changes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from utils.data.parquet import iter_strings
from utils.tokenizer import has_tokenizer_files, train_small_tokenizer

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
DEMO_TOKENIZER = "models/mini-tokenizer"
# Recipe sets: "cpu" is the tiny model with the small demo tokenizer (minutes on a laptop); "t4" is the full
# 1B shape with the Qwen tokenizer at seq 128, sized for a 16 GB GPU (python -m benchmarks.memory).
RECIPES = {"cpu": "{stage}_demo.yaml", "t4": "{stage}_t4_demo.yaml"}
# GPU memory the t4 recipes need: the largest stage's peak estimated by benchmarks/memory.py (fake tensors, gradient
# accumulation included) plus ~1.5 GiB of CUDA context and allocator slack (tests/stages/test_demo.py checks the
# estimate stays below this).
T4_RECIPES_GIB = 14.0
# The training texts the demo tokenizer learns from (not the benchmark fixtures in mini_data/bench).
TOKENIZER_TEXTS = ["mini_data/pt", "mini_data/sft", "mini_data/dpo"]
# Learned tokens of the demo tokenizer; the demo recipes round its embedding up to 4096 rows (vocab_size).
DEMO_VOCAB_SIZE = 4000


def choose_recipes(requested: str = "auto", free_gib: float | None = None, bitsandbytes: bool | None = None):
    """``(recipe set, why)``. ``auto``: the t4 recipes on a CUDA GPU with at least ``T4_RECIPES_GIB`` free and
    bitsandbytes installed (their 8-bit Adam), else the cpu recipes. ``free_gib``/``bitsandbytes`` default to this
    machine's."""
    if requested != "auto":
        if requested not in RECIPES:
            raise ValueError(f"--recipes must be auto or one of {sorted(RECIPES)}, got {requested!r}")
        return requested, "asked for with --recipes"
    if free_gib is None:
        import torch

        free_gib = torch.cuda.mem_get_info()[0] / 2**30 if torch.cuda.is_available() else None
    if free_gib is None:
        return "cpu", "no CUDA GPU"
    if free_gib < T4_RECIPES_GIB:
        return "cpu", f"the GPU has {free_gib:.1f} GiB free, the t4 recipes need {T4_RECIPES_GIB:g} GiB"
    if bitsandbytes is None:
        from utils.train.hardware import installed

        bitsandbytes = installed("bitsandbytes")
    if not bitsandbytes:
        return "cpu", "the t4 recipes train with 8-bit Adam: pip install -r requirements/gpu.txt"
    return "t4", f"a CUDA GPU with {free_gib:.1f} GiB free (the t4 recipes need {T4_RECIPES_GIB:g} GiB)"


def pop_recipes_flag(argv: list[str]) -> tuple[str, list[str]]:
    """``--recipes X`` (or ``--recipes=X``) taken out of a demo script's flags; ``auto`` when absent."""
    requested, rest, i = "auto", [], 0
    while i < len(argv):
        if argv[i] == "--recipes" and i + 1 < len(argv):
            requested, i = argv[i + 1], i + 2
            continue
        if argv[i].startswith("--recipes="):
            requested = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return requested, rest


def announce_recipes(requested: str = "auto") -> str:
    """Decide the recipe set and say which, and why, before anything else is logged."""
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    recipes, why = choose_recipes(requested)
    logger.info("Demo recipes: %s (%s); --recipes cpu|t4 chooses", recipes, why)
    return recipes


def stage_main(run) -> None:
    """What ``python demo/demo_<stage>.py [--recipes cpu|t4] [flags]`` does: choose the recipes, then run."""
    requested, flags = pop_recipes_flag(sys.argv[1:])
    try:
        recipes = announce_recipes(requested)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    run(flags, recipes)


def demo_argv(stage: str, extra: list[str] | None = None, recipes: str = "cpu") -> list[str]:
    """``--config configs/<stage recipe>`` followed by the user's own flags (which win). Demo outputs are
    disposable, so a re-run with other settings replaces the previous one instead of refusing."""
    if recipes not in RECIPES:
        raise ValueError(f"recipes must be one of {sorted(RECIPES)}, got {recipes!r}")
    user = [] if extra is None else extra
    recipe = ROOT / "configs" / RECIPES[recipes].format(stage=stage)
    return ["--config", str(recipe), "--overwrite_output_dir", "true", *user]


def flag_value(argv: list[str], name: str, default: str) -> str:
    """The value of ``--name`` in argv (the last one wins, as in argparse), else ``default``."""
    values = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == f"--{name}"]
    return values[-1] if values else default


def ensure_demo_tokenizer(output_dir: str = DEMO_TOKENIZER) -> None:
    """Train the small demo tokenizer on mini_data once into ``output_dir``; later runs reuse it."""
    if has_tokenizer_files(output_dir):
        return
    texts = (text for folder in TOKENIZER_TEXTS for text in iter_strings(ROOT / folder))
    tokenizer = train_small_tokenizer(texts, DEMO_VOCAB_SIZE)
    tokenizer.save_pretrained(output_dir)
    logger.info(
        "Trained the demo tokenizer (%d tokens) on %s into %s", len(tokenizer), ", ".join(TOKENIZER_TEXTS), output_dir
    )
