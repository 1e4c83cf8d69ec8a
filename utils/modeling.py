"""One place that builds and loads models: the Qwen2.5 base config plus shape overrides.

The base is ``models/Qwen2.5-0.5B-Instruct/config.json`` (kept as data). The widened 1B model of the
full recipe and the tiny demo/test shapes are overrides on it. Overrides go into the constructor:
``Qwen2Config`` derives per-layer fields (``layer_types``) when it is built, so setting
``num_hidden_layers`` on a loaded config leaves them at the old length and model construction fails
(a trap of transformers 5: the per-layer fields are derived only in the constructor).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

logger = logging.getLogger(__name__)

SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "vocab_size",
)


@dataclass
class ModelShapeArguments:
    """Shape overrides on the base config; ``None`` keeps the base value."""

    base_config: str = field(
        default="models/Qwen2.5-0.5B-Instruct",
        metadata={"help": "Folder (or config.json) of the base Qwen2.5 config the shape overrides apply to."},
    )
    hidden_size: int | None = field(default=None, metadata={"help": "Model width (base 896; full recipe 1024)."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Depth (base 24; full recipe 48)."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Query heads (base 14; full 16)."})
    num_key_value_heads: int | None = field(default=None, metadata={"help": "KV heads, GQA (base 2; full 4)."})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width (base and full 4864)."})
    max_position_embeddings: int | None = field(default=None, metadata={"help": "RoPE table length."})
    vocab_size: int | None = field(
        default=None, metadata={"help": "Embedding rows (base 151936 = tokenizer size rounded up for speed)."}
    )

    def overrides(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in SHAPE_FIELDS if getattr(self, name) is not None}


def _read_base_config(path: str | Path) -> dict:
    file = Path(path)
    if file.is_dir():
        file = file / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"Base model config not found: {file}")
    return json.loads(file.read_text())


def validate_shape(values: dict) -> None:
    """Fail before any weight is allocated, naming the bad field."""
    for name in SHAPE_FIELDS:
        value = values.get(name)
        if value is None or int(value) <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    hidden, heads, kv = values["hidden_size"], values["num_attention_heads"], values["num_key_value_heads"]
    if hidden % heads:
        raise ValueError(f"hidden_size={hidden} must be divisible by num_attention_heads={heads}")
    if heads % kv:
        raise ValueError(f"num_attention_heads={heads} must be divisible by num_key_value_heads={kv}")
    if (hidden // heads) % 2:
        raise ValueError(f"head dim hidden_size/num_attention_heads={hidden // heads} must be even for RoPE")


def check_block_size(shape: ModelShapeArguments, block_size: int) -> None:
    """A training sequence longer than the RoPE table would run, but on positions the model cannot represent."""
    limit = shape.max_position_embeddings or _read_base_config(shape.base_config)["max_position_embeddings"]
    if not 2 <= block_size <= limit:
        raise ValueError(f"block_size={block_size} must be between 2 and max_position_embeddings={limit}")


def build_config(shape: ModelShapeArguments, **extra) -> PretrainedConfig:
    """The base config with shape overrides (and ``extra`` such as attn_implementation), validated."""
    values = _read_base_config(shape.base_config)
    values.update(shape.overrides())
    validate_shape(values)
    model_type = values.pop("model_type")
    for derived in ("layer_types", "transformers_version", "architectures", "torch_dtype", "dtype"):
        values.pop(derived, None)
    values.update(extra)
    return AutoConfig.for_model(model_type, **values)


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def build_model(shape: ModelShapeArguments, dtype: torch.dtype = torch.float32, **extra) -> PreTrainedModel:
    """A randomly initialised causal LM of the requested shape; logs its parameter count."""
    config = build_config(shape, **extra)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    logger.info(
        "Model: hidden %d, layers %d, heads %d/%d kv, mlp %d, vocab %d -> %s parameters",
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.intermediate_size,
        config.vocab_size,
        f"{count_parameters(model):,}",
    )
    return model


def use_fused_lm_head(model: PreTrainedModel) -> PreTrainedModel:
    """Let ``model(..., labels=..., fused_lm_head=True)`` return the loss from TRL's fused LM head.

    The head then projects and scores the hidden states in chunks (a Triton kernel on GPUs, chunked torch
    elsewhere), so the (tokens x 151,936) logits, 7.5 GB in fp32 for a 12 x 1024 micro-batch, and their
    gradient never exist. TRL's SFT and DPO trainers patch their models the same way; without the flag the
    forward (and ``generate``) is the original one. Patching twice is a no-op.
    """
    from trl.trainer.utils import add_fused_lm_head

    if not getattr(model, "_mini_qwen_fused_lm_head", False):
        add_fused_lm_head(model)
        model._mini_qwen_fused_lm_head = True
    return model


def load_causal_lm(path: str, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32, **kwargs):
    """A trained checkpoint (safetensors); remote code is never run. ``kwargs`` go to ``from_pretrained``
    (a 4-bit ``quantization_config`` and its ``device_map``, see ``utils.train.adapters``).

    Training keeps fp32 master weights: mixed precision comes from the trainer's bf16/fp16 autocast.
    """
    if not Path(path).is_dir():
        raise FileNotFoundError(f"Model checkpoint not found: {path} (run the previous stage first)")
    return AutoModelForCausalLM.from_pretrained(
        path, attn_implementation=attn_implementation, dtype=dtype, trust_remote_code=False, **kwargs
    )
