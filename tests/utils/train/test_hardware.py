"""Hardware decisions are taken before the arguments are built, and the engine holds what was decided.

Machines are faked where the decision is taken (a ``Hardware`` value), never in the engine, so these tests
hold on a CPU box and on a GPU box alike."""

from __future__ import annotations

import logging
import os
from argparse import Namespace

import pytest

from benchmarks.engine_probe import HARDWARE, faked, probe
from utils.train.hardware import (
    Hardware,
    export_launcher_precision,
    fused_lm_head_usable,
    select_attn_implementation,
    select_precision,
    settle_hardware,
)

CPU, T4, A100 = HARDWARE["cpu"], HARDWARE["t4"], HARDWARE["a100"]


def test_precision_choice_per_machine():
    assert [select_precision("auto", hw) for hw in (CPU, T4, A100)] == ["fp32", "fp16", "bf16"]
    assert select_precision("fp16", A100) == "fp16"
    with pytest.raises(ValueError, match="bf16 needs an Ampere or newer GPU"):
        select_precision("bf16", T4)
    with pytest.raises(ValueError, match="precision must be one of"):
        select_precision("int8", CPU)


def test_attention_choice_says_why(monkeypatch):
    import utils.train.hardware as hardware

    monkeypatch.setattr(hardware, "installed", lambda name: False)
    assert select_attn_implementation("auto", CPU) == ("sdpa", "no CUDA GPU")
    assert select_attn_implementation("auto", A100)[1].startswith("flash-attn is not installed")
    monkeypatch.setattr(hardware, "installed", lambda name: name == "flash_attn")
    assert select_attn_implementation("auto", T4) == ("sdpa", "FlashAttention-2 needs an Ampere or newer GPU")
    assert select_attn_implementation("auto", Hardware(cuda=True, bf16=True, capability=(9, 0)))[0] == (
        "flash_attention_2"
    )
    assert select_attn_implementation("eager", A100) == ("eager", "requested")
    with pytest.raises(ValueError, match="flash_attention_2 needs flash-attn"):
        select_attn_implementation("flash_attention_2", T4)


def test_fused_lm_head_only_where_its_kernel_runs():
    assert fused_lm_head_usable("auto", CPU)[0] is False
    assert fused_lm_head_usable("auto", A100)[0] is True
    assert fused_lm_head_usable("true", CPU) == (True, "requested")


def raw_values(**overrides) -> Namespace:
    """What the parser hands to settle_hardware before any decision: a recipe's raw values."""
    values = dict(
        attn_implementation="auto",
        precision="auto",
        bf16=False,
        fp16=False,
        use_liger_kernel=False,
        liger_kernel_config=None,
        optim="adamw_torch",
        ddp_backend=None,
    )
    return Namespace(**{**values, **overrides})


def test_fallbacks_are_settled_with_one_line_each(monkeypatch):
    import utils.train.hardware as hardware

    monkeypatch.setattr(hardware, "installed", lambda name: False)
    settled = settle_hardware(raw_values(use_liger_kernel=True, optim="adamw_bnb_8bit", fused_lm_head="false"), CPU, 1)
    assert settled.values == {
        "attn_implementation": "sdpa",
        "fused_lm_head": "false",
        "precision": "fp32",
        "bf16": False,
        "fp16": False,
        "use_liger_kernel": False,
        "optim": "adamw_torch",
    }
    messages = [m for _, m in settled.notes]
    assert sum("no CUDA GPU (Liger" in m for m in messages) == 1 and sum("bitsandbytes" in m for m in messages) == 1
    # With a GPU and liger-kernel: its layer kernels, never its own fused cross-entropy, which would replace the
    # forward that carries the fused LM head (always on in TRL's trainers: a namespace without fused_lm_head).
    monkeypatch.setattr(hardware, "installed", lambda name: name == "liger_kernel")
    settled = settle_hardware(
        raw_values(use_liger_kernel=True, liger_kernel_config={"fused_linear_cross_entropy": True}), A100, 1
    )
    assert settled.values["liger_kernel_config"] == {"fused_linear_cross_entropy": False}
    assert "use_liger_kernel" not in settled.values
    assert any(level == logging.WARNING and "fused_linear_cross_entropy" in m for level, m in settled.notes)
    # A mixed precision asked for without a GPU trains in fp32, and says so.
    assert settle_hardware(raw_values(precision="bf16"), CPU, 1).values["precision"] == "fp32"
    with pytest.raises(ValueError, match="contradicts"):
        settle_hardware(raw_values(precision="fp16", bf16=True), A100, 1)
    # Several processes without a GPU (DeepSpeed on CPU) need gloo; with a GPU the launcher's default stays.
    assert settle_hardware(raw_values(), CPU, 2).values["ddp_backend"] == "gloo"
    assert "ddp_backend" not in settle_hardware(raw_values(), A100, 2).values


def test_settling_changes_nothing_outside_the_arguments(monkeypatch):
    """settle_hardware is pure; the launcher's precision variable is written only by export_launcher_precision."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    settled = settle_hardware(raw_values(), CPU, 1)
    assert settled.values["precision"] == "fp32" and os.environ["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert any("launcher asked for mixed_precision=bf16" in m for _, m in settled.notes)
    export_launcher_precision("fp32")
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no"


RECIPES = [
    ("pt", "configs/pt_full.yaml", "a100", "bf16"),
    ("pt", "configs/pt_24gb.yaml", "a100", "bf16"),
    ("pt", "configs/pt_t4_demo.yaml", "t4", "fp16"),
    ("pt", "configs/pt_demo.yaml", "cpu", "no"),
    ("pt", "configs/pt_full.yaml", "cpu", "no"),
    ("sft", "configs/sft_full.yaml", "a100", "bf16"),
    ("sft", "configs/sft_t4_demo.yaml", "t4", "fp16"),
    ("sft", "configs/sft_demo.yaml", "cpu", "no"),
    ("dpo", "configs/dpo_full.yaml", "a100", "bf16"),
    ("dpo", "configs/dpo_t4_demo.yaml", "t4", "fp16"),
    ("dpo", "configs/dpo_demo.yaml", "cpu", "no"),
]


@pytest.mark.parametrize("stage, recipe, hardware, expected", RECIPES, ids=[f"{r[1][8:-5]}-{r[2]}" for r in RECIPES])
def test_the_engine_trains_in_the_precision_of_the_recipe(tmp_path, stage, recipe, hardware, expected):
    """One optimizer step of each shipped recipe's arguments: the Accelerator's mixed precision, and the dtype
    a linear layer computes in. CPU autocast covers bf16; fp16 autocast exists only on CUDA, so there the
    forward stays fp32 and the Accelerator's setting is what a GPU engine would use."""
    with faked(hardware) as engine_flags:
        facts = probe(stage, recipe, str(tmp_path / "run"), engine_flags)
    assert facts["mixed_precision"] == expected
    assert facts["precision"] == {"no": "fp32"}.get(expected, expected)
    assert facts["forward_dtype"] == ("torch.bfloat16" if expected == "bf16" else "torch.float32")


def test_a_recipe_that_needs_8bit_adam_refuses_a_gpu_without_bitsandbytes(monkeypatch):
    """On a GPU, fp32 Adam in place of the 8-bit one needs 4x its memory (the T4 recipes would run out of it after
    loading): refused with the install command. On a CPU, where memory is not the limit, it falls back with a line."""
    import utils.train.hardware as hardware

    monkeypatch.setattr(hardware, "installed", lambda name: False)
    with pytest.raises(ValueError, match=r"needs bitsandbytes.*pip install -r requirements/gpu.txt"):
        settle_hardware(raw_values(optim="adamw_bnb_8bit"), T4, 1)
    assert settle_hardware(raw_values(optim="adamw_bnb_8bit"), CPU, 1).values["optim"] == "adamw_torch"
