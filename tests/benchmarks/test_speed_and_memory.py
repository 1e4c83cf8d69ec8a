"""Benchmarks are not tests of speed; these smoke runs check that each prints a complete, sane table."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from benchmarks import memory, train_speed
from tests.helpers import ROOT
from utils.modeling import build_model, count_parameters


def run_module(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_train_speed_smoke(tmp_path):
    out = tmp_path / "speed.json"
    rows = train_speed.main(
        ["--stage", "all", "--shape", "tiny", "--steps", "2", "--warmup", "1", "--seq_len", "512", "--json", str(out)]
    )
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


@pytest.mark.skipif(torch.cuda.is_available(), reason="ours+flex runs on a GPU")
def test_train_speed_reports_a_failing_configuration_and_keeps_the_others(capsys):
    rows = train_speed.main(
        [
            "--stage",
            "pt",
            "--shape",
            "tiny",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--seq_len",
            "128",
            "--configs",
            "ours+flex",
            "ours",
        ]
    )
    assert rows[0]["error"].startswith("ValueError: ours+flex needs a CUDA GPU") and rows[1]["tokens_per_s"] > 0
    assert "ours+flex        failed: ValueError" in capsys.readouterr().out


@pytest.mark.parametrize(
    "module, args, columns",
    [
        ("benchmarks.preprocess_pt", ["--data_dir", "mini_data/pt", "--repeat", "1"], ["MB/s", "speed-up"]),
        ("benchmarks.sft_tokens", ["--data_dir", "mini_data/sft"], ["real share", "upstream: last pair"]),
        ("benchmarks.curate_speed", ["--mb", "0.05", "0.2", "--files", "1"], ["marginal MB/s", "PT tokenization"]),
    ],
)
def test_data_benchmarks_smoke(module, args, columns):
    out = run_module(module, *args)
    for column in columns:
        assert column in out


def tiny_setup(**overrides) -> memory.Setup:
    values = dict(
        stage="pt",
        shape=memory.shape_of("tiny"),
        seq_len=128,
        batch_size=4,
        precision="bf16",
        activation_checkpointing=False,
        optim="adamw_torch",
    )
    return memory.Setup(**{**values, **overrides})


def test_memory_accounting_counts_weights_grads_and_optimizer_exactly():
    """Fake tensors allocate nothing, yet the tracked bytes are the real ones: 4 bytes per fp32 parameter,
    two fp32 Adam moments, and bitsandbytes' 8-bit layout (1 byte per moment + an fp32 scale per 256)."""
    with torch.device("meta"):
        model = build_model(memory.shape_of("tiny"), attn_implementation="sdpa")
    params = count_parameters(model)
    adam = memory.estimate(tiny_setup())
    assert adam["parameters"] * 2**30 == pytest.approx(4 * params)
    assert adam["optimizer state"] * 2**30 == pytest.approx(8 * params, rel=1e-3)  # + a few step counters
    bnb = memory.estimate(tiny_setup(optim="adamw_bnb_8bit"))
    embedding = model.get_input_embeddings().weight  # kept in 32 bits by the Trainer (tied to the LM head here)
    expected = sum(
        8 * p.numel() if p.numel() < 4096 or p is embedding else 2 * p.numel() + 8 * -(-p.numel() // 256)
        for p in model.parameters()
    )
    assert bnb["other"] * 2**30 == expected and bnb["optimizer state"] == 0
    assert bnb["peak"] < adam["peak"]


def test_memory_levers_move_the_peak_the_right_way():
    deep = memory.ModelShapeArguments(**{**memory.SHAPES["tiny"], "num_hidden_layers": 8})
    base = memory.estimate(tiny_setup(shape=deep))
    checkpointed = memory.estimate(tiny_setup(shape=deep, activation_checkpointing=True))
    assert checkpointed["activations"] < base["activations"] / 3
    dpo = tiny_setup(stage="dpo", fused_lm_head=False)
    live = memory.estimate(memory.Setup(**{**dpo.__dict__, "live_reference": True}))
    assert live["parameters"] == pytest.approx(2 * memory.estimate(dpo)["parameters"])


def test_gradient_accumulation_keeps_the_gradients_resident():
    """With accumulation the first micro-batch's gradients (4 bytes per fp32 parameter) are alive through the next
    micro-batch's forward and backward, so the peak holds them on top of one step's activations; the recipes' figures
    (pt_t4_demo x4, dpo_t4_demo x2, pt_24gb x96) count them."""
    with torch.device("meta"):
        params = count_parameters(build_model(memory.shape_of("tiny"), attn_implementation="sdpa"))
    one = memory.estimate(tiny_setup())
    four = memory.estimate(tiny_setup(accumulation=4))
    assert four["gradients"] * 2**30 == pytest.approx(4 * params, rel=1e-3)
    assert four["peak"] - one["peak"] == pytest.approx(four["gradients"] - one["gradients"], rel=0.05)
    assert four["peak"] > one["peak"]
    assert memory.recipe_setup("pt", "configs/pt_t4_demo.yaml", "1b").accumulation == 4


def test_memory_reads_a_recipe_with_the_stage_defaults(capsys):
    row = memory.main(["--config", "configs/pt_demo.yaml"])
    out = capsys.readouterr().out
    assert "PT configs/pt_demo.yaml" in out and "estimated peak" in out and row["measured"] is None
    assert 0 < row["activations"] < row["peak"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, --measure measures")
def test_memory_measure_needs_a_gpu():
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        memory.main(["--shape", "tiny", "--seq_len", "64", "--measure"])


def test_memory_grpo_rollout_keeps_its_key_value_cache():
    """GRPO's rollout holds the key/value cache of every reply at full length (bf16 under autocast) before the
    update: once the rollout outweighs the update (here from a few hundred replies), the peak grows by at least the
    cache's bytes as the rollout grows."""
    shape = memory.SHAPES["tiny"]
    grpo = tiny_setup(stage="grpo")
    peaks = {
        rows: memory.estimate(memory.Setup(**{**grpo.__dict__, "rollout_rows": rows}))["peak"]
        for rows in (0, 512, 1024)
    }
    head_dim = shape["hidden_size"] // shape["num_attention_heads"]
    cache_per_row = shape["num_hidden_layers"] * 2 * shape["num_key_value_heads"] * head_dim * grpo.seq_len * 2
    assert peaks[0] < peaks[512] < peaks[1024]
    assert (peaks[1024] - peaks[512]) * 2**30 >= 512 * cache_per_row


def test_memory_reads_a_grpo_recipe(capsys):
    row = memory.main(["--config", "configs/grpo_demo.yaml", "--shape", "tiny"])
    out = capsys.readouterr().out
    assert "GRPO configs/grpo_demo.yaml" in out and "a rollout of 64 replies generated at once" in out
    assert "micro-batch 16 x 176 tokens" in out  # 128 prompt + 48 reply tokens
    assert row["peak"] > 0


def test_grpo_speed_smoke(capsys):
    from benchmarks import grpo_speed

    (row,) = grpo_speed.main(["--rollouts", "32", "--steps", "2", "--max_completion_length", "4"])
    assert row["rollout"] == 32 and row["completions_per_s"] > 0 and row["trained_tokens_per_s"] > 0
    assert row["mean_reply_tokens"] == 4  # a random model never stops: every reply is as long as allowed
    assert "completions/s" in capsys.readouterr().out
