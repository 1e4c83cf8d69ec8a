"""Benchmarks are not tests of speed; these smoke runs check that each prints a complete, sane table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from benchmarks import train_speed


def run_module(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_speed_smoke(tmp_path):
    out = tmp_path / "speed.json"
    rows = train_speed.main(["--stage", "all", "--shape", "tiny", "--steps", "2", "--warmup", "1",
                             "--seq_len", "512", "--json", str(out)])  # fmt: skip
    assert json.loads(out.read_text())["rows"] == rows
    assert [(r["stage"], r["config"]) for r in rows] == [
        (s, c) for s in ("pt", "sft", "dpo") for c in ("baseline", "ours")
    ]
    keys = {"step_s", "tokens_per_s", "real_tokens_per_s", "real_share", "mfu", "useful_mfu", "peak_mem_gb"}
    for r in rows:
        assert keys <= r.keys()
        assert r["step_s"] > 0 and r["tokens_per_s"] > 0 and 0 < r["real_share"] <= 1
        assert 0 < r["useful_mfu"] <= r["mfu"] and r["peak_mem_gb"] > 0
        assert (r["pairs_per_s"] > 0) if r["stage"] == "dpo" else r["pairs_per_s"] is None
    sft = {r["config"]: r for r in rows if r["stage"] == "sft"}
    assert sft["ours"]["real_share"] > sft["baseline"]["real_share"]


def test_train_speed_help_documents_every_option():
    text = run_module("benchmarks.train_speed", "--help")
    for option in (
        "--stage",
        "--shape",
        "--configs",
        "--seq_len",
        "--batch_size",
        "--steps",
        "--warmup",
        "--peak_tflops",
        "--sft_data",
        "--dpo_data",
        "--tokenizer",
        "--json",
        "baseline",
        "ours+gc",
    ):
        assert option in text  # fmt: skip


@pytest.mark.parametrize(
    "module, args, columns",
    [
        ("benchmarks.preprocess_pt", ["--data_dir", "mini_data/pt", "--repeat", "1"], ["MB/s", "speed-up"]),
        ("benchmarks.sft_tokens", ["--data_dir", "mini_data/sft"], ["real share", "upstream: last pair"]),
    ],
)
def test_data_benchmarks_smoke(module, args, columns):
    out = run_module(module, *args)
    for column in columns:
        assert column in out
