"""Demo pretraining: the same main() as mini_qwen_pt.py with a demo recipe.

From the repository root (``--recipes cpu|t4`` overrides the choice this machine suits: t4 on a 16 GB GPU)::

    python demo/demo_pt.py                      # the recipes this machine suits (t4 on a 16 GB GPU, else cpu)
    python demo/demo_pt.py --recipes cpu --max_steps 50      # any recipe value can be overridden by a flag
    python -m demo.demo_pt                      # the same
"""

if __package__ in (None, ""):  # run as a file (python demo/demo_pt.py, upstream's quick start)
    from bootstrap import enter_project  # demo/bootstrap.py, beside this file; standard library only

    enter_project()

from transformers import TrainingArguments

from demo.common import DEMO_TOKENIZER, demo_argv, ensure_demo_tokenizer, flag_value, stage_main
from mini_qwen_pt import PTArguments, main
from utils.train.args import parse_args


def run(extra: list[str] | None = None, recipes: str = "cpu"):
    argv = demo_argv("pt", extra, recipes)
    if recipes == "cpu":  # the t4 recipes use the Qwen tokenizer
        ensure_demo_tokenizer(flag_value(argv, "tokenizer_name_or_path", DEMO_TOKENIZER))
    return main(*parse_args((PTArguments, TrainingArguments), argv))


if __name__ == "__main__":
    stage_main(run)
