"""prepare.sh --stage grpo: the pinned sources select exactly the training files of their recorded listings, and
GSM8K_zh's JSON becomes GSM8K-layout parquet holding its training rows only."""

from __future__ import annotations

import json
from fnmatch import fnmatch

import pyarrow.parquet as pq
import pytest

from tools.grpo_data import GRPO_SOURCES, HUB_LISTINGS, normalize_grpo_folder
from utils.data.problems import load_problems

RECORDS = [
    {
        "question": "Natalia sold clips to 48 of her friends in April...",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
        "answer_only": "72",
        "split": "train",
        "question_zh": "娜塔莉亚四月份卖了48个夹子，五月份卖了一半。她一共卖了多少个？",
        "answer_zh": "五月份卖了48/2 = 24个。\n一共卖了48+24 = 72个。",
    },
    {
        "question": "Weng earns $12 an hour...",
        "answer": "... #### 10",
        "answer_only": "10",
        "split": "train",
        "question_zh": "翁每小时挣12美元。她做了50分钟，挣了多少钱？",
        "answer_zh": "每分钟挣12/60 = 0.2美元。\n50分钟挣0.2 x 50 = 10美元。\n#### 10",
    },
    {"question": "A test question", "answer": "", "answer_only": "18", "split": "test", "question_zh": "测试题"},
    {"question": "No translation", "answer": "x #### 3", "answer_only": "3", "split": "train", "question_zh": ""},
]


@pytest.mark.parametrize("layout", ["array", "lines"])
def test_gsm8k_zh_keeps_its_training_rows_in_gsm8k_layout(tmp_path, layout, qwen_tokenizer):
    folder = tmp_path / "gsm8k_zh"
    folder.mkdir()
    text = json.dumps(RECORDS, ensure_ascii=False)
    if layout == "lines":
        text = "\n".join(json.dumps(r, ensure_ascii=False) for r in RECORDS)
    (folder / "GSM8K_zh.json").write_text(text, encoding="utf-8")
    written = normalize_grpo_folder(folder)
    assert written == [folder / "train-00000-of-00001.parquet"]
    assert not (folder / "GSM8K_zh.json").exists()  # only what the stage reads stays
    rows = pq.read_table(written[0]).to_pylist()
    assert rows == [
        {"question": RECORDS[0]["question_zh"], "answer": RECORDS[0]["answer_zh"] + "\n#### 72"},
        {"question": RECORDS[1]["question_zh"], "answer": RECORDS[1]["answer_zh"]},
    ]
    problems, summary = load_problems(str(folder), qwen_tokenizer, 256, thinking=True)
    assert [p.reference for p in problems] == ["72", "10"] and summary["skipped"] == {}
    assert normalize_grpo_folder(folder) == []  # a second run finds nothing left to convert


def test_gsm8k_zh_without_training_rows_is_an_error(tmp_path):
    (tmp_path / "GSM8K_zh.json").write_text(json.dumps(RECORDS[2:]), encoding="utf-8")
    with pytest.raises(ValueError, match="no training row"):
        normalize_grpo_folder(tmp_path)


@pytest.mark.parametrize("folder", sorted(GRPO_SOURCES))
def test_sources_select_the_training_files_of_their_recorded_listing(folder):
    """Replays each pinned revision's recorded file listing: the include globs pick the training data and never a
    test split (the benchmark's)."""
    listing_file = HUB_LISTINGS / f"{folder}.json"
    if not listing_file.is_file():
        pytest.skip(f"{listing_file.name} is recorded with the benchmark listings")
    repo, revision, include = GRPO_SOURCES[folder]
    listing = json.loads(listing_file.read_text(encoding="utf-8"))
    assert (listing["repo"], listing["revision"]) == (repo, revision)
    selected = [f for f in listing["files"] if any(fnmatch(f, glob) for glob in include)]
    expected = {"gsm8k": ["main/train-00000-of-00001.parquet"], "gsm8k_zh": ["GSM8K_zh.json"]}[folder]
    assert selected == expected
    assert not any("test" in name for name in selected)
