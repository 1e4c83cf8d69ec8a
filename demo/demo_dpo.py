"""Demo DPO (after the demo SFT run): the same main() as mini_qwen_dpo.py with a demo recipe.

From the repository root (``--recipes cpu|t4`` overrides the choice this machine suits: t4 on a 16 GB GPU)::

    python demo/demo_dpo.py                     # the recipes this machine suits (t4 on a 16 GB GPU, else cpu)
    python demo/demo_dpo.py --recipes cpu --max_steps 10
"""

if __package__ in (None, ""):  # run as a file (python demo/demo_dpo.py, upstream's quick start)
    from bootstrap import enter_project  # demo/bootstrap.py, beside this file; standard library only

    enter_project()

from trl import DPOConfig

from demo.common import demo_argv, stage_main
from mini_qwen_dpo import DPOArguments, main
from utils.train.args import parse_args


def run(extra: list[str] | None = None, recipes: str = "cpu"):
    return main(*parse_args((DPOArguments, DPOConfig), demo_argv("dpo", extra, recipes)))


if __name__ == "__main__":
    stage_main(run)
