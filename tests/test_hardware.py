"""Hardware decisions are taken before the arguments are built, and the engine holds what was decided.

Machines are faked where the decision is taken (a ``Hardware`` value), never in the engine, so these tests
hold on a CPU box and on a GPU box alike."""

from __future__ import annotations

import logging

import pytest
from engine_probe import HARDWARE, faked, probe

from utils.hardware import (
    Hardware,
    fused_lm_head_usable,
    select_attn_implementation,
    select_precision,
    settle_training,
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
    import utils.hardware as hardware

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


def test_fallbacks_are_settled_with_one_line_each(monkeypatch):
    import utils.hardware as hardware

    monkeypatch.setattr(hardware, "installed", lambda name: False)
    settled = settle_training(CPU, "auto", False, False, True, None, "adamw_bnb_8bit", fused_lm_head=False)
    assert settled.values == {"bf16": False, "fp16": False, "use_liger_kernel": False, "optim": "adamw_torch"}
    messages = [m for _, m in settled.notes]
    assert sum("no CUDA GPU" in m for m in messages) == 1 and sum("bitsandbytes" in m for m in messages) == 1
    # With a GPU and liger-kernel: its layer kernels, never its own fused cross-entropy, which would replace the
    # forward that carries the fused LM head.
    monkeypatch.setattr(hardware, "installed", lambda name: name == "liger_kernel")
    settled = settle_training(A100, "auto", False, False, True, {"fused_linear_cross_entropy": True}, "adamw_torch",
                              fused_lm_head=True)  # fmt: skip
    assert settled.values["liger_kernel_config"] == {"fused_linear_cross_entropy": False}
    assert "use_liger_kernel" not in settled.values
    assert any(level == logging.WARNING and "fused_linear_cross_entropy" in m for level, m in settled.notes)
    # A mixed precision asked for without a GPU trains in fp32, and says so.
    assert settle_training(CPU, "bf16", False, False, False, None, "adamw_torch", True).precision == "fp32"
    with pytest.raises(ValueError, match="contradicts"):
        settle_training(A100, "fp16", True, False, False, None, "adamw_torch", True)


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
