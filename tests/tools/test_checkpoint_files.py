"""tools.checkpoint_files: each broken checkpoint is one error line naming the file and the problem.

The checkpoint is the serving tests' tiny chat model (``tests.helpers.chat_checkpoint``), copied and broken one
file at a time.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tools.checkpoint_files import CheckpointError, check_files, check_weights_fit_config, special_token

pytest_plugins = ["tests.helpers.chat_checkpoint"]


@pytest.fixture
def broken(chat_checkpoint, tmp_path):
    return shutil.copytree(chat_checkpoint, tmp_path / "broken")


def edit_json(path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def refusal(function, *args) -> str:
    with pytest.raises(CheckpointError) as err:
        function(*args)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_an_intact_checkpoint_is_read(chat_checkpoint):
    files = check_files(chat_checkpoint)
    assert (files.stage, files.config["model_type"], files.path) == ("sft", "qwen2", chat_checkpoint.resolve())
    assert files.weights["model.embed_tokens.weight"] == ((1024, 128), chat_checkpoint.resolve() / "model.safetensors")
    check_weights_fit_config(files)
    assert special_token(files, 2, "config.json") == "<|im_end|>"


@pytest.mark.parametrize(
    "remove, message",
    [
        ("config.json", "not a checkpoint, no config.json"),
        ("model.safetensors", "no weights (model.safetensors)"),
        ("tokenizer.json tokenizer_config.json", "no tokenizer (tokenizer.json or tokenizer_config.json)"),
    ],
)
def test_a_missing_file_is_named(broken, remove, message):
    for name in remove.split():
        (broken / name).unlink()
    assert refusal(check_files, broken).endswith(message)


def test_a_pickle_is_not_taken_for_weights(broken):
    (broken / "model.safetensors").rename(broken / "pytorch_model.bin")
    assert refusal(check_files, broken).endswith("(pytorch_model.bin is a pickle, which is not loaded here)")


def test_a_run_folder_names_the_checkpoints_inside(chat_checkpoint, tmp_path):
    shutil.copytree(chat_checkpoint, tmp_path / "checkpoint-100")
    assert refusal(check_files, tmp_path).endswith("these sub-folders are checkpoints: checkpoint-100")


def test_truncated_weights_are_named_with_their_sizes(broken):
    weights = broken / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[: size // 2])
    assert refusal(check_files, broken) == (
        f"{weights}: cut short: {size // 2} bytes, but its header describes {size}"
    )
    weights.write_bytes(b"\x00\x01")
    assert refusal(check_files, broken) == f"{weights}: not a safetensors file, or cut short (2 bytes)"


@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", "generation_config.json", "tokenizer_config.json"])
def test_a_json_file_that_is_not_json_is_named(broken, name):
    path = broken / name
    path.write_text(path.read_text()[:40])
    assert refusal(check_files, broken).startswith(f"{path}: not valid JSON (")


@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json"])
def test_remote_code_is_refused(broken, name):
    edit_json(broken / name, auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel"})
    assert refusal(check_files, broken) == (
        f"{broken / name}: 'auto_map' asks to run the checkpoint's own Python code, which is never done here "
        "(trust_remote_code is off)"
    )


def test_a_config_of_another_architecture_is_named(broken):
    edit_json(broken / "config.json", model_type="llama", architectures=["LlamaForCausalLM"])
    message = refusal(check_weights_fit_config, check_files(broken))
    assert message.startswith(f"{broken / 'config.json'} does not fit model.safetensors: ")
    assert "weights the llama model does not have (model.layers.0.self_attn.k_proj.bias" in message
    edit_json(broken / "config.json", model_type="vit")
    assert refusal(check_weights_fit_config, check_files(broken)) == (
        f"{broken / 'config.json'}: model_type 'vit' is not a causal language model that transformers knows"
    )


def test_a_vocab_size_that_is_not_the_embeddings_is_named(broken):
    edit_json(broken / "config.json", vocab_size=5000)
    assert refusal(check_weights_fit_config, check_files(broken)) == (
        f"{broken / 'config.json'} does not fit model.safetensors: model.embed_tokens.weight is [1024, 128], "
        "the config makes it [5000, 128]"
    )


def test_a_config_that_transformers_refuses_is_named(broken):
    edit_json(broken / "config.json", num_hidden_layers=6)  # layer_types still lists 4
    assert refusal(check_weights_fit_config, check_files(broken)) == (
        f"{broken / 'config.json'}: not a valid qwen2 config (StrictDataclassClassValidationError: Class validation "
        "error for validator 'validate_layer_type': ValueError: `num_hidden_layers` (6) must be equal to the number "
        "of `layer_types` (4))"
    )


def test_an_eos_that_is_not_a_special_token_is_named(chat_checkpoint):
    files = check_files(chat_checkpoint)
    assert refusal(special_token, files, 1000, "generation_config.json") == (
        f"{chat_checkpoint.resolve() / 'generation_config.json'}: eos_token_id 1000 is not one of the tokenizer's "
        "special tokens (tokenizer.json added_tokens: [0, 1, 2, 3, 4, 5, 6, 7])"
    )
