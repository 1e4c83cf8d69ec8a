"""Demo SFT: ``python -m demo.demo_sft [...]`` (the same main() as mini_qwen_sft.py)."""

from trl import SFTConfig

from demo.common import demo_argv
from mini_qwen_sft import SFTArguments, main
from utils.train.args import parse_args


def run(extra: list[str] | None = None, recipes: str = "cpu"):
    return main(*parse_args((SFTArguments, SFTConfig), demo_argv("sft", extra, recipes)))


if __name__ == "__main__":
    run()
