"""benchmarks.memory with adapters: the frozen base in the compute precision (or NF4), the adapters trainable in
fp32 (bf16 under QLoRA) with their AdamW state, the DPO reference without a second copy; exact bytes on the tiny
shape, and the LoRA recipes read as written."""

from __future__ import annotations

import math

import pytest
import torch
from peft import get_peft_model

from benchmarks import memory
from tests.benchmarks.test_speed_and_memory import tiny_setup
from utils.modeling import build_model, count_parameters
from utils.train.adapters import AdapterArguments, peft_config

GiB = 2**30


def adapter_counts() -> tuple[int, int, list[tuple[int, int]]]:
    """(adapter parameters, base parameters, the (out, in) shapes of the adapted projections) of the tiny shape."""
    with torch.device("meta"):
        base = build_model(memory.shape_of("tiny"), attn_implementation="sdpa")
        n_base = count_parameters(base)
        model = get_peft_model(base, peft_config(AdapterArguments(use_peft=True)))
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shapes = [(m.out_features, m.in_features) for name, m in model.named_modules() if name.endswith("base_layer")]
    return adapters, n_base, shapes


def test_lora_counts_a_bf16_frozen_base_and_fp32_adapters_exactly():
    adapters, n_base, _ = adapter_counts()
    full = memory.estimate(tiny_setup(stage="sft"))
    lora = memory.estimate(tiny_setup(stage="sft", adapters=AdapterArguments(use_peft=True)))
    assert lora["parameters"] * GiB == 4 * adapters  # only the adapters are parameters, fp32
    assert lora["optimizer state"] * GiB == pytest.approx(8 * adapters, rel=1e-2)  # two fp32 moments (+ step counts)
    shape = memory.shape_of("tiny")
    rotary = 2 * 4 * (shape.hidden_size // shape.num_attention_heads // 2)  # inv_freq and its original, fp32
    assert lora["buffers"] * GiB == 2 * n_base + rotary  # the frozen base in bf16 (biases included), and RoPE
    assert lora["peak"] < full["peak"]


def test_qlora_holds_the_projections_in_nf4_and_the_adapters_in_bf16():
    adapters, n_base, shapes = adapter_counts()
    lora = memory.estimate(tiny_setup(stage="sft", adapters=AdapterArguments(use_peft=True)))
    qlora = memory.estimate(tiny_setup(stage="sft", adapters=AdapterArguments(use_peft=True, load_in_4bit=True)))
    assert qlora["parameters"] * GiB == 2 * adapters  # TRL casts QLoRA adapters to bf16
    projections = sum(o * i for o, i in shapes)
    nf4 = sum(o * i // 2 + 4 * math.ceil(o * i / 64) for o, i in shapes)  # packed weights + fp32 absmax per 64
    assert (lora["buffers"] - qlora["buffers"]) * GiB == 2 * projections - nf4


def test_dpo_reference_of_an_adapter_run_is_no_second_copy():
    dpo = dict(stage="dpo", fused_lm_head=False, adapters=AdapterArguments(use_peft=True))
    precomputed = memory.estimate(tiny_setup(**dpo))
    live = memory.estimate(tiny_setup(**dpo, live_reference=True))
    assert live == precomputed


@pytest.mark.parametrize("recipe", ["sft_lora_16gb", "dpo_lora_24gb"])
def test_memory_reads_a_lora_recipe(recipe, capsys):
    """The recipe's adapters and levers, on the tiny shape (the 1B's figures are in the recipe's comments)."""
    setup = memory.recipe_setup(recipe.split("_")[0], f"configs/{recipe}.yaml", "tiny")
    assert (
        setup.adapters.use_peft
        and setup.adapters.lora_r == 16
        and setup.adapters.lora_target_modules == ["all-linear"]
    )
    assert setup.activation_checkpointing == recipe.endswith("16gb")
    row = memory.main(["--config", f"configs/{recipe}.yaml", "--shape", "tiny", "--load_in_4bit"])
    out = capsys.readouterr().out
    assert "LoRA r=16 on all-linear over a 4-bit nf4 base" in out and "frozen base weights" in out
    assert 0 < row["parameters"] < row["buffers"] < row["peak"]
