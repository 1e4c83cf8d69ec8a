"""One place that builds models: the Qwen2.5 base config plus shape overrides, and the hardware choice.

The base is ``models/Qwen2.5-0.5B-Instruct/config.json`` (kept as data). The widened 1B model of the
full recipe and the tiny demo/test shapes are overrides on it. Overrides go into the constructor:
``Qwen2Config`` derives per-layer fields (``layer_types``) when it is built, so setting
``num_hidden_layers`` on a loaded config leaves them at the old length and model construction fails
(see GUIDE.md §5).
"""

from __future__ import annotations

import importlib.util
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


def fused_lm_head_enabled(requested: str = "auto") -> bool:
    """``auto`` -> on where its Triton kernel runs (a CUDA GPU). Elsewhere the chunked-torch fallback is
    exact but about 2x slower per step than plain logits (measured on CPU), so auto leaves it off."""
    if requested not in ("auto", "true", "false"):
        raise ValueError(f"fused_lm_head must be auto, true or false, got {requested!r}")
    if requested != "auto":
        return requested == "true"
    from transformers.utils import is_triton_available

    usable = torch.cuda.is_available() and is_triton_available()
    logger.info("Fused LM head: %s", "on" if usable else "off (no CUDA GPU with Triton: plain logits are faster)")
    return usable


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


def flash_attn_usable() -> bool:
    """FlashAttention-2 needs the package, CUDA and an Ampere-or-newer GPU (not T4/V100)."""
    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability()
    return major >= 8


def select_attn_implementation(requested: str | None = "auto") -> str:
    """``auto`` -> flash_attention_2 where usable, else sdpa. Any explicit value is kept."""
    if requested and requested != "auto":
        return requested
    if flash_attn_usable():
        choice, why = "flash_attention_2", ""
    elif not torch.cuda.is_available():
        choice, why = "sdpa", " (no CUDA GPU)"
    elif importlib.util.find_spec("flash_attn") is None:
        choice, why = "sdpa", " (flash-attn is not installed: requirements-gpu.txt, or try flex_attention)"
    else:
        choice, why = "sdpa", " (FlashAttention-2 needs an Ampere or newer GPU)"
    logger.info("Attention implementation: %s%s", choice, why)
    return choice


def select_precision(requested: str = "auto") -> str:
    """``auto`` -> bf16 on GPUs that support it, fp16 on older GPUs (T4/V100), fp32 on CPU."""
    if requested != "auto":
        if requested not in ("bf16", "fp16", "fp32"):
            raise ValueError(f"precision must be auto, bf16, fp16 or fp32, got {requested!r}")
        return requested
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def torch_dtype_for(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_causal_lm(path: str, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32):
    """A trained checkpoint (safetensors); remote code is never run.

    Training keeps fp32 master weights: mixed precision comes from the trainer's bf16/fp16 autocast.
    """
    if not Path(path).is_dir():
        raise FileNotFoundError(f"Model checkpoint not found: {path} (run the previous stage first)")
    return AutoModelForCausalLM.from_pretrained(
        path, attn_implementation=attn_implementation, dtype=dtype, trust_remote_code=False
    )
