"""Recipes: YAML and CLI flags through one parser; CLI wins; unknown keys fail loudly."""

from __future__ import annotations

import sys

import pytest
from transformers import TrainingArguments
from trl import SFTConfig

from mini_qwen_pt import PTArguments
from mini_qwen_sft import SFTArguments
from utils.train.args import parse_args


def test_yaml_then_cli_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("hidden_size: 64\nlearning_rate: 3.0e-4\noutput_dir: out\ndomains: [a, b]\n")
    script, train = parse_args((PTArguments, TrainingArguments), ["--config", str(recipe), "--hidden_size", "128"])
    assert script.hidden_size == 128 and script.domains == ["a", "b"]
    assert train.learning_rate == 3e-4 and train.output_dir == "out"


def test_yaml_booleans_reach_bool_and_choice_fields(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("fused_lm_head: false\nbf16: false\nactivation_checkpointing: true\n")
    script, train = parse_args((PTArguments, TrainingArguments), ["--config", str(recipe)])
    assert script.fused_lm_head == "false" and train.bf16 is False and train.activation_checkpointing is True


def test_unknown_yaml_key_fails(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("hidden_sise: 64\n")
    with pytest.raises(SystemExit, match="hidden_sise"):
        parse_args((PTArguments, TrainingArguments), ["--config", str(recipe)])


def test_unknown_flag_fails():
    with pytest.raises(SystemExit):
        parse_args((PTArguments, TrainingArguments), ["--hidden_sise", "64"])


def test_trl_config_does_not_force_bf16_on_cpu():
    _, config = parse_args((SFTArguments, SFTConfig), ["--output_dir", "x"])
    assert config.bf16 is False


def test_shipped_recipes_parse(monkeypatch):
    from trl import DPOConfig

    from mini_qwen_dpo import DPOArguments

    for recipe, types in [
        ("configs/pt_full.yaml", (PTArguments, TrainingArguments)),
        ("configs/pt_demo.yaml", (PTArguments, TrainingArguments)),
        ("configs/pt_t4_demo.yaml", (PTArguments, TrainingArguments)),
        ("configs/pt_24gb.yaml", (PTArguments, TrainingArguments)),
        ("configs/sft_full.yaml", (SFTArguments, SFTConfig)),
        ("configs/sft_demo.yaml", (SFTArguments, SFTConfig)),
        ("configs/sft_t4_demo.yaml", (SFTArguments, SFTConfig)),
        ("configs/dpo_full.yaml", (DPOArguments, DPOConfig)),
        ("configs/dpo_demo.yaml", (DPOArguments, DPOConfig)),
        ("configs/dpo_t4_demo.yaml", (DPOArguments, DPOConfig)),
    ]:
        # DPO's full recipe starts from a recorded SFT epoch, which does not exist here.
        extra = ["--sft_epoch", "0"] if "dpo" in recipe else []
        monkeypatch.setattr(sys, "argv", ["prog", "--config", recipe, *extra])
        parsed = parse_args(types)
        assert parsed[1].output_dir.startswith("results/")
    script, train = parse_args((PTArguments, TrainingArguments), ["--config", "configs/pt_full.yaml"])
    assert (script.hidden_size, script.num_hidden_layers, script.block_size) == (1024, 48, 1024)
    assert (train.per_device_train_batch_size, train.gradient_accumulation_steps) == (12, 16)
    assert train.learning_rate == 1e-4 and train.lr_scheduler_type.value == "cosine"


def test_every_auto_is_settled_before_the_arguments_are_built():
    """What TrainingArguments derive in __post_init__ (and hand to Accelerate) must see the final choices."""
    script, train = parse_args((PTArguments, TrainingArguments), ["--config", "configs/pt_full.yaml"])
    assert script.attn_implementation != "auto" and script.fused_lm_head in ("true", "false")
    assert script.precision in ("bf16", "fp16", "fp32")
    assert train.mixed_precision == {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[script.precision]
    # Rotation waits for each checkpoint's completion marker: the Trainer's own rotation is off.
    assert train.save_total_limit is None and script.keep_checkpoints == 3
    assert train.logging_nan_inf_filter is False  # the divergence guard sees raw losses
    assert any("Precision:" in message for _, message in script.settled_notes)
    _, sft = parse_args((SFTArguments, SFTConfig), ["--output_dir", "x"])
    assert sft.dataset_kwargs == {"skip_prepare_dataset": True} and sft.remove_unused_columns is False


def test_one_layout_word_for_every_stage_and_the_old_sft_name_still_works(tmp_path):
    """PT and SFT share ``layout`` and its values; SFT's former ``packing_mode`` (recipe or flag) is read as
    ``layout`` for one more release, with a deprecation line in the log."""
    pt, _ = parse_args((PTArguments, TrainingArguments), ["--layout", "one_per_row"])
    sft, _ = parse_args((SFTArguments, SFTConfig), ["--layout", "cross_document"])
    assert (pt.layout, sft.layout) == ("one_per_row", "cross_document")
    recipe = tmp_path / "old.yaml"
    recipe.write_text("packing_mode: padded\n")
    old, _ = parse_args((SFTArguments, SFTConfig), ["--config", str(recipe)])
    assert old.layout == "one_per_row"
    assert any(
        "--packing_mode is deprecated" in line and "--layout one_per_row" in line for _, line in old.settled_notes
    )
    flag, _ = parse_args((SFTArguments, SFTConfig), ["--packing_mode=isolated"])
    assert flag.layout == "isolated"


def test_trl_bf16_default_is_not_a_choice_but_an_explicit_one_is(tmp_path):
    """TRL's configs default to bf16=True; on a CPU the stage trains in fp32 unless bf16 is asked for, which is then
    refused as a precision this machine cannot train in (fp32 with a warning)."""
    sft, train = parse_args((SFTArguments, SFTConfig), ["--output_dir", str(tmp_path), "--use_cpu", "true"])
    assert sft.precision == "fp32" and train.bf16 is False
    sft, train = parse_args(
        (SFTArguments, SFTConfig), ["--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "true"]
    )
    assert any("bf16 was requested but there is no GPU" in line for _, line in sft.settled_notes)
