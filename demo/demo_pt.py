"""Demo pretraining: ``python -m demo.demo_pt [--max_steps 50 ...]`` (the same main() as mini_qwen_pt.py)."""

from transformers import TrainingArguments

from demo.common import demo_argv, ensure_demo_tokenizer
from mini_qwen_pt import PTArguments, main
from utils.args import parse_args


def run(extra: list[str] | None = None, recipes: str = "cpu"):
    if recipes == "cpu":  # the t4 recipes use the Qwen tokenizer
        ensure_demo_tokenizer()
    return main(*parse_args((PTArguments, TrainingArguments), demo_argv("pt", extra, recipes)))


if __name__ == "__main__":
    run()
