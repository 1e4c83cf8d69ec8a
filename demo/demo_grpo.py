"""Demo GRPO: ``python -m demo.demo_grpo [...]`` (the same main() as mini_qwen_grpo.py)."""

from trl import GRPOConfig

from demo.common import demo_argv
from mini_qwen_grpo import GRPOArguments, main
from utils.train.args import parse_args


def run(extra: list[str] | None = None, recipes: str = "cpu"):
    return main(*parse_args((GRPOArguments, GRPOConfig), demo_argv("grpo", extra, recipes)))


if __name__ == "__main__":
    run()
