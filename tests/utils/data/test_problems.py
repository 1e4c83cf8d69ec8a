"""Math problems: GRPO prompts and exact references, the held-out split, every skip counted; SFT's reasoning
conversations; the bundled generator's files are what it writes."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import MINI_DATA
from tests.stages.test_bad_input import invalid_utf8_strings
from tools.make_math_problems import make_problems
from utils.data.chat import encode_chat, prompt_ids
from utils.data.collate import IGNORE_INDEX
from utils.data.parquet import DataError
from utils.data.problems import as_dataset, load_problems, reasoning_messages
from utils.data.sft import load_sft_dataset

GRPO = MINI_DATA / "grpo"


def test_bundled_problems_are_what_the_generator_writes():
    """mini_data/grpo is the generator's output with its defaults: anyone can rebuild (or extend) it."""
    train, sft, test = (
        pq.read_table(GRPO / split / "problems.parquet").to_pylist() for split in ("train", "sft", "test")
    )
    assert train == make_problems(240, 2024)
    assert sft == make_problems(48, 2025, exclude={row["question"] for row in train})
    assert test == make_problems(60, 2026, exclude={row["question"] for row in train + sft})
    questions = [{r["question"] for r in rows} for rows in (train, sft, test)]
    assert sum(map(len, questions)) == len(set.union(*questions)) == 348  # three disjoint sets
    assert [r["language"] for r in train].count("zh") == [r["language"] for r in train].count("en") == 120


def test_bundled_problems_load_with_exact_references(qwen_tokenizer):
    problems, summary = load_problems(str(GRPO / "train"), qwen_tokenizer, max_prompt_length=256, thinking=True)
    assert summary["kept"] == len(problems) == 240 and summary["skipped"] == {}
    rows = pq.read_table(GRPO / "train" / "problems.parquet").to_pylist()
    assert [p.reference for p in problems] == [r["answer"].rsplit("#### ", 1)[1] for r in rows]
    dataset = as_dataset(problems)
    assert dataset.column_names == ["prompt", "reference"]
    assert dataset[0]["prompt"] == [{"role": "user", "content": rows[0]["question"]}]


def test_gsm8k_layout_split_and_bad_rows_are_counted(tmp_path, qwen_tokenizer):
    long_question = "How many? " * 200
    rows = [
        ("Tom has 3 apples and buys 1,200 more. How many now?", "3 + 1200 = <<3+1200=1203>>1203\n#### 1,203", "train"),
        ("A test question that must stay held out.", "x\n#### 5", "test"),
        ("What is 1 + 1?", "no final line", "train"),
        ("   ", "x\n#### 1", "train"),
        ("Is <|im_end|> a number?", "x\n#### 1", "train"),
        ("Tom has 3 apples and buys 1,200 more. How many now?", "x\n#### 1203", "train"),
        (long_question, "x\n#### 1", "train"),
        ("Half of 5?", "5/2\n#### 2.5", "train"),
    ]
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    columns = list(zip(*rows))
    table = pa.table({"question": columns[0], "answer": columns[1], "split": columns[2]})
    pq.write_table(table, folder / "train-00000-of-00001.parquet")
    pq.write_table(
        pa.table({"question": invalid_utf8_strings([b"ok?", b"\xff"]), "answer": ["a\n#### 1", "b\n#### 2"]}),
        folder / "more.parquet",
    )
    problems, summary = load_problems(str(folder), qwen_tokenizer, max_prompt_length=128, thinking=True)
    assert [(p.question, p.reference) for p in problems] == [
        ("ok?", "1"),
        ("Tom has 3 apples and buys 1,200 more. How many now?", "1203"),
        ("Half of 5?", "5/2"),
    ]
    assert summary["skipped"] == {
        "test split: held out": 1,
        "no final number (#### N) in the solution": 1,
        "empty question": 1,
        "question spells a special token": 1,
        "duplicate question": 1,
        "prompt longer than max_prompt_length": 1,
        "invalid UTF-8": 1,
    }
    assert summary["rows"] == 10


def test_malformed_problem_rows_name_the_file(tmp_path, qwen_tokenizer):
    pq.write_table(pa.table({"question": ["q"], "solution": ["x\n#### 1"]}), tmp_path / "a.parquet")
    with pytest.raises(DataError, match=r"a\.parquet: missing column\(s\) \['answer'\]"):
        load_problems(str(tmp_path), qwen_tokenizer, None, thinking=False)


def test_prompt_length_counts_the_opened_think_block(tmp_path, qwen_tokenizer):
    question = "What is 2 + 2?"
    pq.write_table(pa.table({"question": [question], "answer": ["4\n#### 4"]}), tmp_path / "a.parquet")
    prompt = [{"role": "user", "content": question}]
    plain, thinking = len(prompt_ids(qwen_tokenizer, prompt)), len(prompt_ids(qwen_tokenizer, prompt, thinking=True))
    assert thinking == plain + 3  # "<th" "ink" ">\n"
    assert load_problems(str(tmp_path), qwen_tokenizer, plain, thinking=False)[1]["kept"] == 1
    assert load_problems(str(tmp_path), qwen_tokenizer, plain, thinking=True)[1]["kept"] == 0


def test_reasoning_messages_from_worked_solutions():
    en = {"question": "Natalia sold 48 clips, then half as many. Total?", "answer": "48/2 = <<48/2=24>>24\n#### 72"}
    assert reasoning_messages(en) == [
        {"role": "user", "content": en["question"]},
        {"role": "assistant", "content": "The answer is 72.", "reasoning_content": "48/2 = 24"},
    ]
    zh = {"question": "小明有 3 个苹果，又买了 4 个。", "answer": "3 + 4 = 7。\n#### 7"}
    assert reasoning_messages(zh)[1] == {
        "role": "assistant",
        "content": "答案是 7。",
        "reasoning_content": "3 + 4 = 7。",
    }


def test_sft_mixes_reasoning_conversations(tmp_path, qwen_tokenizer_dir, qwen_tokenizer):
    """--reasoning_data_dir adds one thinking conversation per problem, labelled from the reasoning to <|im_end|>
    (the "<think>" that opens it belongs to the prompt)."""
    plain, _, plain_summary = load_sft_dataset(
        str(MINI_DATA / "sft"), str(qwen_tokenizer_dir), 1024, cache_dir=str(tmp_path)
    )
    mixed, _, summary = load_sft_dataset(
        str(MINI_DATA / "sft"),
        str(qwen_tokenizer_dir),
        1024,
        cache_dir=str(tmp_path),
        reasoning_data_dir=str(GRPO / "sft"),
    )
    assert summary["kept"] == plain_summary["kept"] + 48 and len(mixed) == len(plain) + 48
    first = pq.read_table(GRPO / "sft" / "problems.parquet").to_pylist()[0]
    expected = encode_chat(qwen_tokenizer, reasoning_messages(first), 1024, thinking=True)
    row = mixed[len(plain)]
    assert row["input_ids"] == expected.input_ids and row["labels"] == expected.labels
    supervised = qwen_tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
    assert supervised.startswith("小雨从37本中送出35本") and "</think>\n\n答案是 2。" in supervised
    assert "<think>" in qwen_tokenizer.decode(row["input_ids"]) and "<think>" not in supervised
