"""LoRA and QLoRA (``utils.train.adapters``) through the real SFT and DPO mains on a tiny model: only the adapters
train, the merged model computes what the adapter model computes, DPO's reference is the frozen base itself, and
QLoRA is refused without CUDA (its training test runs on a CUDA machine with bitsandbytes)."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from trl import DPOConfig, SFTConfig

import mini_qwen_dpo
import mini_qwen_sft
from tests.helpers.lora_runs import LORA
from tests.utils.train.test_fault_tolerance import SFT, run, sft_argv
from tools import merge
from utils.modeling import count_parameters, load_causal_lm, use_fused_lm_head
from utils.train.adapters import adapter_base_path, peft_config
from utils.train.args import parse_args
from utils.train.hardware import detect_hardware, four_bit_problem, installed

pytest_plugins = ["tests.helpers.lora_runs"]

SFT_TYPES = (mini_qwen_sft.SFTArguments, SFTConfig)
BASE_ARGV = ["--output_dir", "unused", "--report_to", "none"]
PROMPT = torch.tensor([[5, 17, 42, 99, 311, 7, 64, 128, 900, 3]])


def logits(model, ids: torch.Tensor = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def test_flags_become_trls_lora_config():
    flags = [
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--lora_dropout",
        "0.1",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
    ]
    args, _ = parse_args(SFT_TYPES, [*BASE_ARGV, "--use_peft", "true", *flags])
    config = peft_config(args)
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (8, 16, 0.1, "none")
    assert sorted(config.target_modules) == ["q_proj", "v_proj"] and config.task_type == "CAUSAL_LM"
    default, _ = parse_args(SFT_TYPES, [*BASE_ARGV, "--use_peft", "true"])
    assert peft_config(default).target_modules == "all-linear"  # peft's shorthand: every projection, no LM head
    assert peft_config(parse_args(SFT_TYPES, BASE_ARGV)[0]) is None


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--use_peft", "true", "--lora_r", "0"], "lora_r must be at least 1"),
        (["--use_peft", "true", "--lora_dropout", "1"], "lora_dropout must be in [0, 1)"),
        (["--load_in_4bit", "true"], "add --use_peft true"),
    ],
)
def test_bad_adapter_settings_fail_before_loading(flags, message):
    with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace(")", r"\)")):
        parse_args(SFT_TYPES, [*BASE_ARGV, *flags])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: QLoRA is allowed here")
def test_qlora_is_refused_without_cuda_with_the_reason():
    with pytest.raises(SystemExit, match="no CUDA GPU.*--load_in_4bit false"):
        parse_args(SFT_TYPES, [*BASE_ARGV, "--use_peft", "true", "--load_in_4bit", "true"])


def test_sft_trains_only_the_adapters(lora_runs):
    trainer, sft = lora_runs["sft_trainer"], lora_runs["sft"]
    base = load_causal_lm(str(lora_runs["pt"])).state_dict()
    trained = trainer.model.get_base_model().state_dict()
    frozen = {name.replace(".base_layer", ""): value for name, value in trained.items() if "lora_" not in name}
    assert frozen.keys() == base.keys()
    assert [name for name in base if not torch.equal(base[name], frozen[name].cpu())] == []
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in name or "lora_B" in name for name in trainable)
    # 2 layers x 7 projections x (A, B): every one moved between the checkpoints of steps 3 and 6
    early, late = (load_file(sft / f"checkpoint-{step}" / "adapter_model.safetensors") for step in (3, 6))
    assert len(late) == 28 and [name for name in late if torch.equal(early[name], late[name])] == []
    assert all(late[name].abs().sum() > 0 for name in late if "lora_B" in name)  # they start at zero
    # a checkpoint holds the adapters, not the model
    assert not (sft / "checkpoint-6" / "model.safetensors").exists()


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_merged_model_computes_what_the_adapter_model_computes(lora_runs, stage):
    folder = lora_runs[stage]
    base_dir = adapter_base_path(folder / "adapter")
    assert base_dir == str(lora_runs["pt" if stage == "sft" else "sft"])
    adapted = PeftModel.from_pretrained(load_causal_lm(base_dir), str(folder / "adapter"))
    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert count_parameters(merged) == count_parameters(load_causal_lm(base_dir))  # no adapter left in it
    expected, got, before = logits(adapted), logits(merged), logits(load_causal_lm(base_dir))
    assert (got - expected).abs().max() < 1e-5
    assert (expected - before).abs().max() > 1e-3  # the adapters do change the model
    config = json.loads((folder / "config.json").read_text())
    assert config["use_cache"] is True and config["rope_theta"] == 1e6  # made portable
    assert json.loads((folder / "generation_config.json").read_text())["do_sample"] is True


def test_dpo_reference_is_the_frozen_base_without_a_second_copy(lora_runs):
    trainer = lora_runs["dpo_trainer"]
    assert trainer.ref_model is None and list(trainer.model.peft_config) == ["default"]
    adapter = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    base = load_causal_lm(str(lora_runs["sft"]))
    assert count_parameters(trainer.model) == count_parameters(base) + adapter
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    # Every TrainingArguments built by a later test resets accelerate's shared state, and TRL reads the device
    # from it: set it up again as this session's trainer had it (the CPU)
    Accelerator(cpu=True)
    reference = trainer.compute_ref_log_probs(trainer.model, batch)  # TRL's path: the adapters switched off
    from_base = trainer.compute_ref_log_probs(use_fused_lm_head(base).eval(), batch)
    trained = trainer.compute_ref_log_probs(use_fused_lm_head(load_causal_lm(str(lora_runs["dpo"]))).eval(), batch)
    for ref, expected in zip(reference, from_base):
        assert torch.allclose(ref, expected, atol=1e-5, rtol=0)
    assert (trained[0] - reference[0]).abs().max() > 1e-3  # the trained policy is not the reference


def test_a_stage_refuses_to_start_from_adapters_and_says_how_to_merge(lora_runs):
    checkpoint = lora_runs["sft"] / "checkpoint-3"
    with pytest.raises(SystemExit, match="holds LoRA adapters, not a model: merge them first .bash run.sh merge"):
        parse_args(SFT_TYPES, [*BASE_ARGV, "--model_name_or_path", str(checkpoint)])
    with pytest.raises(SystemExit, match="bash run.sh merge"):
        parse_args((mini_qwen_dpo.DPOArguments, DPOConfig), [*BASE_ARGV, "--model_name_or_path", str(checkpoint)])


def test_merge_tool_turns_a_checkpoint_into_a_full_model(lora_runs, tmp_path, capsys):
    checkpoint = lora_runs["sft"] / "checkpoint-3"
    out = merge.main([str(checkpoint), "--output_dir", str(tmp_path / "merged")])
    assert f"Merged model: {out}" in capsys.readouterr().out
    adapted = PeftModel.from_pretrained(load_causal_lm(str(lora_runs["pt"])), str(checkpoint))
    assert (logits(AutoModelForCausalLM.from_pretrained(out)) - logits(adapted)).abs().max() < 1e-5
    with pytest.raises(SystemExit, match="already holds a model"):
        merge.main([str(checkpoint), "--output_dir", str(out)])
    with pytest.raises(SystemExit, match="not a LoRA adapter folder"):
        merge.main([str(lora_runs["pt"]), "--output_dir", str(tmp_path / "other")])


@pytest.mark.skipif(
    four_bit_problem(detect_hardware()) is not None,
    reason=f"QLoRA needs CUDA and bitsandbytes: {four_bit_problem(detect_hardware())}",
)
def test_qlora_sft_trains_adapters_on_a_4bit_base_and_merges_in_full_precision(lora_runs, tmp_path):
    assert installed("bitsandbytes")
    argv = (
        sft_argv(tmp_path, lora_runs["pt"], steps="4") + LORA + ["--load_in_4bit", "true", "--learning_rate", "1e-2"]
    )
    trainer = run(SFT, argv)
    base = trainer.model.get_base_model()
    assert getattr(base, "is_loaded_in_4bit", False)
    trainable = [p for p in trainer.model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.bfloat16 for p in trainable)  # TRL's QLoRA choice
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    adapted = PeftModel.from_pretrained(load_causal_lm(str(lora_runs["pt"])), str(tmp_path / "sft" / "adapter"))
    assert (logits(merged) - logits(adapted)).abs().max() < 1e-4


def test_dpo_accepts_the_adapter_flags():
    args, _ = parse_args((mini_qwen_dpo.DPOArguments, DPOConfig), [*BASE_ARGV, "--use_peft", "true"])
    assert peft_config(args).r == 16
