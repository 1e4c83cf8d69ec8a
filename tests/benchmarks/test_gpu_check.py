"""The GPU check, dry-run on the CPU as the tests can: the same steps with tiny shapes, one JSON with every figure
and one table, whatever fails along the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.helpers import ROOT


def test_the_gpu_check_runs_every_step_and_writes_one_json(tmp_path):
    env = {**os.environ, "GPU_CHECK_DIR": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry_run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and report["device"] == "CPU"
    engine = report["engine"]["result"]
    # Decided as on an H100 (bf16, sdpa without flash-attn), trained on the CPU, where bf16 autocast exists.
    for stage in ("pt", "sft", "dpo"):
        assert engine[stage]["precision"] == "bf16" and engine[stage]["mixed_precision"] == "bf16"
        assert engine[stage]["forward_dtype"] == "torch.bfloat16" and engine[stage]["attention"] == "sdpa"
        rows = report["speed"][stage]["result"]
        assert [r["config"] for r in rows][:2] == ["baseline", "ours"]
        assert all(r["tokens_per_s"] > 0 for r in rows if "error" not in r)
    memory = report["memory"]["result"]
    assert memory["estimated_gib"] > 0 and memory["measured_gib"] is None
    table = (tmp_path / "gpu_check.txt").read_text()
    assert table in result.stdout and "| pt | ours |" in table and "Seconds per step" in table


def test_the_gpu_check_refuses_to_start_without_the_tokenizer(tmp_path):
    """The tokenizer folder is not in git: a machine it was not brought to is told so at once."""
    copy = tmp_path / "repo"
    (copy / "benchmarks").mkdir(parents=True)
    (copy / "benchmarks" / "gpu_check.sh").write_text((ROOT / "benchmarks" / "gpu_check.sh").read_text())
    env = {**os.environ, "GPU_CHECK_DIR": str(tmp_path / "out"), "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(copy / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "no tokenizer in models/Qwen2.5-0.5B-Instruct/" in result.stderr
