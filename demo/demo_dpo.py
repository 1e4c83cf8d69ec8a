"""Demo DPO: ``python -m demo.demo_dpo [...]`` (the same main() as mini_qwen_dpo.py)."""

from trl import DPOConfig

from demo.common import demo_argv
from mini_qwen_dpo import DPOArguments, main
from utils.train.args import parse_args


def run(extra: list[str] | None = None, recipes: str = "cpu"):
    return main(*parse_args((DPOArguments, DPOConfig), demo_argv("dpo", extra, recipes)))


if __name__ == "__main__":
    run()
