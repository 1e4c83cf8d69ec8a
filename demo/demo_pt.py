"""Demo pretraining: ``python -m demo.demo_pt [--max_steps 50 ...]`` (the same main() as mini_qwen_pt.py)."""

from transformers import TrainingArguments

from demo.common import DEMO_TOKENIZER, demo_argv, ensure_demo_tokenizer, flag_value
from mini_qwen_pt import PTArguments, main
from utils.train.args import parse_args


def run(extra: list[str] | None = None, recipes: str = "cpu"):
    argv = demo_argv("pt", extra, recipes)
    if recipes == "cpu":  # the t4 recipes use the Qwen tokenizer
        ensure_demo_tokenizer(flag_value(argv, "tokenizer_name_or_path", DEMO_TOKENIZER))
    return main(*parse_args((PTArguments, TrainingArguments), argv))


if __name__ == "__main__":
    run()
