"""A checkpoint folder checked file by file before anything loads it: each problem is one line naming the file.

Used by the server (``tools.serve``: a broken folder must not start a server that fails every request) and by the
GGUF export (``tools.export``: a folder whose config does not fit its weights must not become a GGUF file).

* ``check_files`` reads JSON files and safetensors headers only (no torch, no transformers, so a wrong path fails
  in a second): ``config.json`` is a transformers config that asks for no code of its own (``auto_map``);
  ``tokenizer.json``, ``tokenizer_config.json`` and ``generation_config.json`` are JSON objects; every weight file
  is as long as its header says (a copy cut short fails here, not as an mmap error deep in a loader).
* ``check_weights_fit_config`` builds the model that ``config.json`` describes on the meta device (no memory, no
  weights read) and compares every parameter's name and shape with the safetensors headers: a config of another
  architecture, or a ``vocab_size`` that is not the embedding's row count, is named before anything is converted
  or served.
* ``check_tokenizer_fits_config``: every id of ``tokenizer.json`` has a row in the embedding (``vocab_size``).
* ``special_token`` names the token behind an id, or says that the id is not one of the tokenizer's own tokens.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from utils.run_info import read_run_info

SAFETENSORS_INDEX = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit


class CheckpointError(ValueError):
    """The folder cannot be used; the message names the file and the problem."""


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one line: its type and message, whitespace collapsed, cut at ``limit`` characters."""
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class CheckpointFiles:
    path: Path  # absolute
    config: dict
    tokenizer_config: dict  # {} when there is no tokenizer_config.json
    generation_config: dict  # {} when there is no generation_config.json
    tokenizer_json: dict | None  # None when the tokenizer has no tokenizer.json
    weights: dict[str, tuple[tuple[int, ...], Path]]  # tensor name -> (shape, the file that holds it)
    stage: str | None  # pt / sft / dpo for checkpoints trained here (run_info.json), None for others

    @property
    def weight_files(self) -> list[Path]:
        return sorted({file for _, file in self.weights.values()})


def read_json_object(file: Path) -> dict:
    """The JSON object in ``file``, or ``CheckpointError`` naming the file (unreadable, not JSON, not an object)."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise CheckpointError(f"{file}: cannot be read ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{file}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{file}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; cut short?)"
        ) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{file}: not a JSON object")
    return value


def safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header, after checking that the file holds all the data the header
    describes (a truncated copy is named here)."""
    size = file.stat().st_size
    with file.open("rb") as stream:
        head = stream.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if length is None or length > min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{file}: not a safetensors file, or cut short ({size} bytes)")
        try:
            header = json.loads(stream.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{file}: the safetensors header is not valid JSON (cut short?)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: the safetensors header is not a JSON object")
    shapes, end = {}, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shapes[name] = tuple(int(n) for n in info["shape"])
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            raise CheckpointError(f"{file}: the safetensors header entry for {name!r} is malformed") from None
    if 8 + length + end > size:
        raise CheckpointError(f"{file}: cut short: {size} bytes, but its header describes {8 + length + end}")
    return shapes


def _weights(path: Path) -> dict[str, tuple[tuple[int, ...], Path]]:
    index = path / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise CheckpointError(f"{index}: no 'weight_map' of tensor names to file names")
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            if Path(shard).name != shard or not (path / shard).is_file():
                raise CheckpointError(f"{index}: names a shard that is not in the folder: {shard}")
        weights = {
            name: (shape, path / shard) for shard in shards for name, shape in safetensors_shapes(path / shard).items()
        }
        absent = sorted(set(weight_map) - set(weights))
        if absent:
            raise CheckpointError(f"{index}: lists tensors its shards do not hold: {', '.join(absent[:3])}")
        return weights
    files = sorted(path.glob("*.safetensors"))
    if not files:
        bins = sorted(p.name for p in path.glob("pytorch_model*.bin"))
        hint = f" ({bins[0]} is a pickle, which is not loaded here)" if bins else ""
        raise CheckpointError(f"{path}: no weights (model.safetensors){hint}")
    return {name: (shape, file) for file in files for name, shape in safetensors_shapes(file).items()}


def check_files(folder: str | Path) -> CheckpointFiles:
    """The checkpoint in ``folder`` with its JSON files and weight headers read, or ``CheckpointError``."""
    path = Path(folder)
    if not path.exists():
        raise CheckpointError(f"{path}: no such folder")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder (pass the checkpoint folder, not a file in it)")
    config_file = path / "config.json"
    if not config_file.is_file():
        inside = sorted(p.name for p in path.iterdir() if (p / "config.json").is_file())
        hint = f"; these sub-folders are checkpoints: {', '.join(inside[:5])}" if inside else ""
        raise CheckpointError(f"{path}: not a checkpoint, no config.json{hint}")
    config = read_json_object(config_file)
    if not isinstance(config.get("model_type"), str):
        raise CheckpointError(f"{config_file}: no model_type, not a transformers model config")
    tokenizer_config_file = path / "tokenizer_config.json"
    tokenizer_config = read_json_object(tokenizer_config_file) if tokenizer_config_file.is_file() else {}
    for file, content in ((config_file, config), (tokenizer_config_file, tokenizer_config)):
        if content.get("auto_map"):
            raise CheckpointError(
                f"{file}: 'auto_map' asks to run the checkpoint's own Python code, which is never "
                "done here (trust_remote_code is off)"
            )
    tokenizer_file = path / "tokenizer.json"
    tokenizer_json = read_json_object(tokenizer_file) if tokenizer_file.is_file() else None
    if tokenizer_json is None and not tokenizer_config:
        raise CheckpointError(f"{path}: no tokenizer (tokenizer.json or tokenizer_config.json)")
    generation_file = path / "generation_config.json"
    generation = read_json_object(generation_file) if generation_file.is_file() else {}
    stage = (read_run_info(path) or {}).get("stage")
    return CheckpointFiles(path.resolve(), config, tokenizer_config, generation, tokenizer_json, _weights(path), stage)


def check_weights_fit_config(files: CheckpointFiles) -> None:
    """``CheckpointError`` unless every parameter of the model ``config.json`` describes is in the weights with
    its shape, and the weights hold nothing that model does not have. Imports transformers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config_file = files.path / "config.json"
    model_type = files.config["model_type"]
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise CheckpointError(
            f"{config_file}: model_type '{model_type}' is not a causal language model that transformers knows"
        )
    try:
        config = AutoConfig.from_pretrained(files.path, trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as err:  # whatever a config makes transformers raise (its validators have their own types)
        raise CheckpointError(f"{config_file}: not a valid {model_type} config ({one_line(err)})") from None
    expected = {name: tuple(p.shape) for name, p in model.named_parameters()}  # tied weights appear once
    known = set(model.state_dict())  # tied weights under every name
    missing = sorted(set(expected) - set(files.weights))
    unexpected = sorted(set(files.weights) - known)
    wrong = [
        f"{name} is {list(files.weights[name][0])}, the config makes it {list(shape)}"
        for name, shape in expected.items()
        if name in files.weights and files.weights[name][0] != shape
    ]
    problems = (
        [f"{len(missing)} weights missing ({', '.join(missing[:2])}{', ...' if len(missing) > 2 else ''})"]
        if missing
        else []
    )
    problems += (
        [
            f"{len(unexpected)} weights the {model_type} model does not have ({', '.join(unexpected[:2])}"
            f"{', ...' if len(unexpected) > 2 else ''})"
        ]
        if unexpected
        else []
    )
    problems += wrong[:3]
    if problems:
        weight_files = ", ".join(file.name for file in files.weight_files)
        raise CheckpointError(f"{config_file} does not fit {weight_files}: {'; '.join(problems)}")


def check_tokenizer_fits_config(files: CheckpointFiles) -> None:
    """``CheckpointError`` when ``tokenizer.json`` has ids the model's embedding has no row for."""
    tokenizer = files.tokenizer_json or {}
    vocab = (tokenizer.get("model") or {}).get("vocab")
    ids = [i for i in (vocab.values() if isinstance(vocab, dict) else []) if isinstance(i, int)]
    ids += [
        t.get("id")
        for t in tokenizer.get("added_tokens") or []
        if isinstance(t, dict) and isinstance(t.get("id"), int)
    ]
    vocab_size = files.config.get("vocab_size")
    if ids and isinstance(vocab_size, int) and max(ids) >= vocab_size:
        raise CheckpointError(
            f"{files.path / 'tokenizer.json'} has token ids up to {max(ids)}, past {files.path / 'config.json'} "
            f"vocab_size {vocab_size} (the embedding has no row for them)"
        )


def special_token(files: CheckpointFiles, token_id, source: str) -> str:
    """The text of the tokenizer's own (added) token ``token_id``, which ``source`` names; ``CheckpointError``
    when there is none."""
    added = {
        t.get("id"): t.get("content")
        for t in (files.tokenizer_json or {}).get("added_tokens") or []
        if isinstance(t, dict)
    }
    if not isinstance(token_id, int) or isinstance(token_id, bool) or not isinstance(added.get(token_id), str):
        raise CheckpointError(
            f"{files.path / source}: eos_token_id {token_id!r} is not one of the tokenizer's special "
            f"tokens (tokenizer.json added_tokens: {sorted(added)[:8]})"
        )
    return added[token_id]
