"""Demo GRPO (after a demo SFT run with reasoning conversations, and DPO): the same main() as mini_qwen_grpo.py with
a demo recipe. ``python -m demo.run_all --with_grpo`` runs the whole chain.

From the repository root (there is a tiny GRPO recipe only: ``--recipes cpu``, which "auto" picks as well)::

    python demo/demo_grpo.py
    python demo/demo_grpo.py --max_steps 8
"""

if __package__ in (None, ""):  # run as a file (python demo/demo_grpo.py)
    from bootstrap import enter_project  # demo/bootstrap.py, beside this file; standard library only

    enter_project()

import sys

from trl import GRPOConfig

from demo.common import demo_argv, pop_recipes_flag
from mini_qwen_grpo import GRPOArguments, main
from utils.train.args import parse_args


def run(extra: list[str] | None = None, recipes: str = "cpu"):
    return main(*parse_args((GRPOArguments, GRPOConfig), demo_argv("grpo", extra, recipes)))


if __name__ == "__main__":
    requested, flags = pop_recipes_flag(sys.argv[1:])
    if requested not in ("auto", "cpu"):
        raise SystemExit(f"GRPO has a demo recipe for the cpu recipes only, not {requested}")
    run(flags)
