"""Model shapes: the base config as data, the widened 1B model, validation before allocation."""

from __future__ import annotations

import pytest
import torch

from utils.modeling import ModelShapeArguments, build_config, build_model, check_block_size, count_parameters

FULL = dict(hidden_size=1024, num_hidden_layers=48, num_attention_heads=16, num_key_value_heads=4)


def test_base_config_is_qwen25_05b():
    config = build_config(ModelShapeArguments())
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (896, 24, 14)
    assert (config.num_key_value_heads, config.intermediate_size, config.vocab_size) == (2, 4864, 151936)
    assert config.tie_word_embeddings and config.max_position_embeddings == 32768
    assert config.rms_norm_eps == 1e-6 and config.rope_parameters["rope_theta"] == 1e6


def test_widened_1b_has_exact_parameter_count():
    with torch.device("meta"):
        model = build_model(ModelShapeArguments(**FULL))
    assert count_parameters(model) == 998_810_624
    assert len(model.model.layers) == 48 and len(model.config.layer_types) == 48


@pytest.mark.parametrize(
    "overrides, field_name",
    [
        (dict(hidden_size=1000), "hidden_size=1000"),
        (dict(num_attention_heads=16, num_key_value_heads=3, hidden_size=1024), "num_key_value_heads=3"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
        (dict(hidden_size=36, num_attention_heads=12, num_key_value_heads=4), "head dim"),
    ],
)
def test_invalid_shapes_fail_before_allocation(overrides, field_name, monkeypatch):
    from transformers import AutoModelForCausalLM

    def must_not_allocate(*args, **kwargs):
        raise AssertionError("weights were allocated")

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", must_not_allocate)
    with pytest.raises(ValueError, match=field_name):
        build_model(ModelShapeArguments(**overrides))


def test_block_size_beyond_the_rope_table_is_refused():
    check_block_size(ModelShapeArguments(), 32768)
    with pytest.raises(ValueError, match="block_size=40000 must be between 2 and max_position_embeddings=32768"):
        check_block_size(ModelShapeArguments(), 40000)
    with pytest.raises(ValueError, match="max_position_embeddings=512"):
        check_block_size(ModelShapeArguments(max_position_embeddings=512), 1024)
