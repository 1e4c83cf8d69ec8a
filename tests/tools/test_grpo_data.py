"""prepare.sh --stage grpo: the pinned sources select exactly the training files of their recorded listings, and
GSM8K_zh's JSON becomes GSM8K-layout parquet holding its training rows only."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.helpers import MINI_DATA, ROOT
from tests.helpers.bench_hub import hub_select
from tools.bench_data import hub_listing
from tools.grpo_data import GRPO_SOURCES, normalize_grpo_folder
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
    with pytest.raises(ValueError, match="no train record"):
        normalize_grpo_folder(tmp_path)


@pytest.mark.parametrize("folder", sorted(GRPO_SOURCES))
def test_sources_select_the_training_files_of_their_recorded_listing(folder):
    """Each source's revision is the one its listing records, and the download globs select the training data of
    that revision (huggingface_hub's own matcher), never a test split: those are the benchmark's."""
    source, listing = GRPO_SOURCES[folder], hub_listing(folder)
    assert (listing["repo"], listing["revision"]) == (source.repo, source.revision)
    selected = hub_select(folder, list(source.include), [])
    assert selected == {"gsm8k": ["main/train-00000-of-00001.parquet"], "gsm8k_zh": ["GSM8K_zh.json"]}[folder]


def test_prepare_stage_grpo_downloads_pinned_files_into_the_layout_the_stage_reads(tmp_path, qwen_tokenizer):
    """tools.download --stage grpo with an hf stand-in that serves only the recorded revisions (GSM8K's train file as
    the bundled fixture, GSM8K_zh's JSON with a train and a test record): both folders land as GSM8K-layout parquet,
    with their revision in MANIFEST.json, and the stage reads them."""
    cli = tmp_path / "hf"
    revisions = {source.repo: source.revision for source in GRPO_SOURCES.values()}
    fixture = MINI_DATA / "bench" / "gsm8k" / "main" / "train-00000-of-00001.parquet"
    cli.write_text(f"""#!{sys.executable}
import json, shutil, sys
from pathlib import Path
args = sys.argv[1:]
value = lambda flag: args[args.index(flag) + 1]
repo, local = args[1], Path(value("--local-dir"))
if value("--revision") != {revisions!r}[repo]:
    sys.exit(f"Revision Not Found for {{repo}}")
if repo == "openai/gsm8k":
    (local / "main").mkdir(parents=True, exist_ok=True)
    shutil.copy({str(fixture)!r}, local / "main" / "train-00000-of-00001.parquet")
else:
    local.mkdir(parents=True, exist_ok=True)
    (local / "GSM8K_zh.json").write_text({json.dumps(RECORDS[:3], ensure_ascii=False)!r})
""")
    cli.chmod(0o755)
    command = [sys.executable, "-m", "tools.download", "--stage", "grpo", "--data_dir", str(tmp_path / "data")]
    subprocess.run([*command, "--hf", str(cli)], cwd=ROOT, check=True, capture_output=True, text=True, timeout=300)
    grpo = tmp_path / "data" / "grpo"
    assert sorted(p.relative_to(grpo).as_posix() for p in grpo.rglob("*.parquet")) == [
        "gsm8k/main/train-00000-of-00001.parquet",
        "gsm8k_zh/train-00000-of-00001.parquet",
    ]
    for folder, source in GRPO_SOURCES.items():
        assert json.loads((grpo / folder / "MANIFEST.json").read_text())["revision"] == source.revision
    problems, summary = load_problems(str(grpo), qwen_tokenizer, 256, thinking=True)
    zh = [p for p in problems if p.question in {r["question_zh"] for r in RECORDS}]
    assert [p.reference for p in zh] == ["72", "10"]  # the test record stayed out
    assert summary["kept"] == len(pq.read_table(fixture)) + 2 and summary["skipped"] == {}
