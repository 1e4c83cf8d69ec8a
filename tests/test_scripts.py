"""run.sh and prepare.sh: every documented mode runs; downloads are stubbed at the process boundary."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, TINY_SHAPE

ENV = {**os.environ, "VENV": sys.prefix}


def sh(*args, env=None, check=True, timeout=600):
    result = subprocess.run(["bash", *args], cwd=ROOT, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def test_run_sh_help_documents_every_mode():
    out = sh("run.sh", "-h").stdout
    for mode in ("demo", "test", "pt", "sft", "dpo", "eval", "setup", "NUM_GPUS", "BACKGROUND", "ACCELERATE_CONFIG"):
        assert mode in out
    bad = sh("run.sh", "train", check=False)
    assert bad.returncode == 2 and "unknown mode" in bad.stderr


def test_run_sh_pt_foreground_then_dpo_in_background(tmp_path, small_tokenizer_dir):
    pt = ["--data_dir", "mini_data/pt", "--tokenizer_name_or_path", str(small_tokenizer_dir), *TINY_SHAPE,
          "--vocab_size", "1024", "--block_size", "64", "--max_steps", "3", "--output_dir", str(tmp_path / "pt"),
          "--cache_dir", str(tmp_path / "cache"), "--report_to", "none"]  # fmt: skip
    sh("run.sh", "pt", *pt, env={**ENV, "CONFIG": "configs/pt_demo.yaml"})
    assert (tmp_path / "pt" / "model.safetensors").is_file()

    log = ROOT / "logs" / "sft.log"
    log.unlink(missing_ok=True)
    sft = ["--model_name_or_path", str(tmp_path / "pt"), "--output_dir", str(tmp_path / "sft"), "--max_steps", "2",
           "--max_length", "128", "--cache_dir", str(tmp_path / "cache_sft"), "--report_to", "none"]  # fmt: skip
    started = sh("run.sh", "sft", *sft, env={**ENV, "CONFIG": "configs/sft_demo.yaml", "BACKGROUND": "1"})
    assert "tail -f logs/sft.log" in started.stdout
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "sft" / "model.safetensors").is_file():
        time.sleep(2)
    time.sleep(2)
    assert (tmp_path / "sft" / "model.safetensors").is_file(), log.read_text()[-3000:]
    assert "Saved the final model" in log.read_text()

    # dpo through the multi-process path of run.sh: accelerate launch, DeepSpeed ZeRO-2 on 2 CPU processes.
    dpo = ["--model_name_or_path", str(tmp_path / "sft"), "--output_dir", str(tmp_path / "dpo"), "--max_steps", "2",
           "--max_length", "128", "--max_prompt_length", "48", "--holdout", "2", "--report_to", "none"]  # fmt: skip
    env = {**ENV, "CONFIG": "configs/dpo_demo.yaml", "NUM_GPUS": "2", "MAIN_PROCESS_PORT": str(free_port()),
           "ACCELERATE_CONFIG": "configs/accelerate/cpu_zero2.yaml"}  # fmt: skip
    sh("run.sh", "dpo", *dpo, env=env)
    assert (tmp_path / "dpo" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "dpo" / "run_info.json").read_text())["global_batch_size"] == 4 * 2

    out = tmp_path / "eval"
    prompts = tmp_path / "p.txt"
    prompts.write_text("你好\n", encoding="utf-8")
    sh("run.sh", "eval", "--model_name_or_path", str(tmp_path / "sft"), "--prompts", str(prompts),
       "--output_dir", str(out), "--max_new_tokens", "4")  # fmt: skip
    assert (out / "generations.jsonl").read_text(encoding="utf-8").count("\n") == 1


def test_run_sh_setup_and_demo(tmp_path):
    sh("run.sh", "setup")
    out = sh("run.sh", "demo", "--max_steps", "2", "--logging_steps", "1", "--prompts", "1",
             "--output_root", str(tmp_path / "demo")).stdout  # fmt: skip
    assert "PT loss: first" in out and "Demo finished in" in out
    assert (tmp_path / "demo" / "eval" / "report.md").is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def stub_modelscope(tmp_path):
    """A fake `modelscope` that records its arguments and writes a 150-row parquet where data would land."""
    log = tmp_path / "calls.txt"
    stub = tmp_path / "modelscope"
    stub.write_text(
        f"""#!{sys.executable}
import sys, pyarrow as pa, pyarrow.parquet as pq
from pathlib import Path
args = sys.argv[1:]
open({str(log)!r}, "a").write(" ".join(args) + "\\n")
local = Path(args[args.index("--local_dir") + 1])
include = args[args.index("--include") + 1]
name = include.replace("*", "rank_00000.parquet") if include.endswith(("*", ".parquet")) else "config.json"
target = local / name
target.parent.mkdir(parents=True, exist_ok=True)
if target.suffix == ".parquet":
    pq.write_table(pa.table({{"text": [f"row {{i}}" for i in range(150)]}}), target)
"""
    )
    stub.chmod(0o755)
    return stub, log


def test_prepare_downloads_skips_and_cuts_mini(tmp_path, stub_modelscope):
    stub, log = stub_modelscope
    env = {**ENV, "MODELSCOPE": str(stub), "PREPARE_CHECK_ONLINE": "0", "PYTHON": sys.executable}
    data = tmp_path / "data"
    args = ["prepare.sh", "--stage", "pt", "--stage", "sft", "--domains", "news_media tourism_geography",
            "--data_dir", str(data), "--mini", "--mini_dir", str(tmp_path / "mini")]  # fmt: skip
    sh(*args, env=env)
    calls = log.read_text().splitlines()
    assert len(calls) == 6  # 2 domains x 2 languages + 2 SFT subsets
    assert any("news_media/chinese/high/*" in c for c in calls)
    # news_media is one of the five large English sets: only its first three files.
    english = next(c for c in calls if "news_media/english" in c)
    assert "rank_00000.parquet" in english and "rank_00002.parquet" in english and "*" not in english
    assert any("tourism_geography/english/high/*" in c for c in calls)
    assert any("--dataset BAAI/Infinity-Instruct --include 7M/*" in c for c in calls)
    minis = sorted((tmp_path / "mini").rglob("*.parquet"))
    assert minis and all(pq.read_metadata(p).num_rows == 100 for p in minis)
    again = sh(*args, env=env)
    assert again.stdout.count("already complete, skipping") == 6 and len(log.read_text().splitlines()) == 6


def _online() -> bool:
    try:
        socket.create_connection(("www.modelscope.cn", 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online(), reason="this machine is online; the offline message cannot be shown")
def test_prepare_fails_fast_offline(stub_modelscope):
    stub, log = stub_modelscope
    start = time.time()
    result = sh("prepare.sh", "--stage", "dpo", env={**ENV, "MODELSCOPE": str(stub)}, check=False)
    assert result.returncode == 1 and "cannot reach www.modelscope.cn" in result.stderr
    assert time.time() - start < 30 and not log.exists()


def test_prepare_help():
    assert "--domains" in sh("prepare.sh", "-h").stdout


def test_mini_data_layout_mirrors_real_schemas():
    root = Path(ROOT / "mini_data")
    zh = sorted(root.glob("pt/*/chinese/high/*.parquet"))
    en = sorted(root.glob("pt/*/english/high/*.parquet"))
    assert len(zh) >= 3 and len(en) >= 3
    zh_cols, en_cols = set(pq.read_schema(zh[0]).names), set(pq.read_schema(en[0]).names)
    assert "text" in zh_cols & en_cols and en_cols < zh_cols
    docs = sum(pq.read_metadata(p).num_rows for p in zh + en)
    assert docs >= 200
    assert pq.read_schema(root / "sft/7M/train-00000-of-00001.parquet").field("id").type == pa.int64()
    assert pq.read_schema(root / "sft/Gen/train-00000-of-00001.parquet").field("id").type == pa.string()
    assert pa.types.is_struct(pq.read_schema(root / "sft/Gen/train-00000-of-00001.parquet").field("label").type)
    dpo = pq.read_table(root / "dpo/train-00000-of-00001.parquet")
    assert {"prompt", "chosen", "rejected", "task_category", "id"} <= set(dpo.column_names) and dpo.num_rows >= 100
