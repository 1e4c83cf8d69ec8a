"""LoRA and QLoRA through peft and TRL: small adapters trained on a frozen base, then merged into one ordinary
checkpoint that every tool reads as it reads a fully trained one.

``AdapterArguments`` is mixed into a stage's arguments (SFT, DPO; any TRL stage can take it) with TRL's own flag
names (``--use_peft``, ``--lora_r``, ``--lora_alpha``, ``--lora_dropout``, ``--lora_target_modules``,
``--load_in_4bit``). ``peft_config(args)`` turns them into the ``LoraConfig`` a TRL trainer takes as
``peft_config``; the trainer wraps the model itself (``peft.get_peft_model``), so the adapters, their fp32 upcast
and gradient checkpointing are TRL's and peft's code, not ours. ``load_base_model`` loads what they train on.

What adapters change, and why:

* The base is frozen, so it needs no fp32 master copy, no gradients and no optimizer state: it is loaded in the
  compute precision (bf16/fp16 on a GPU, fp32 on a CPU), or in 4 bits with ``--load_in_4bit`` (QLoRA: bitsandbytes'
  NF4 kernels, CUDA only). peft keeps the adapters in fp32; TRL puts them in bf16 over a 4-bit base, as the QLoRA
  paper does. ``benchmarks/memory.py --use_peft`` accounts for all of it.
* DPO needs a reference model. With adapters TRL computes the reference log-probs from the same model with the
  adapters switched off (``trl.trainer.utils.use_adapter(model, None)``): the frozen base is the reference and no
  second copy is loaded (``tests/utils/train/test_adapters.py`` checks both).
* A checkpoint holds the adapters, their optimizer state and the trainer state only (megabytes, not gigabytes);
  ``--resume auto`` loads the adapters back into the same frozen base.
* The final save (``save_merged``) writes the adapters to ``<output_dir>/adapter`` and merges them into the base
  loaded again in fp32 from its folder (never into the 4-bit copy: merging into rounded weights would round the
  update too). The merged folder is a full checkpoint: eval, serve, web, export and bench use it unchanged.
  ``python -m tools.merge`` does the same for any adapter folder, e.g. a checkpoint of a run that was stopped.
"""

from __future__ import annotations

import json
import logging
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils import ADAPTER_DIR, ADAPTER_WEIGHT_FILE
from utils.generation import default_generation_config
from utils.modeling import load_causal_lm
from utils.train.hardware import torch_dtype_for

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
QUANT_TYPES = ("nf4", "fp4")


@dataclass
class AdapterArguments:
    """LoRA / QLoRA, with TRL's flag names (``trl.ModelConfig``)."""

    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train LoRA adapters on a frozen base instead of every weight (one GPU of 16-24 GB for the 1B); "
            "the final save merges them into a full checkpoint."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank: the width of each adapter's low-rank update."})
    lora_alpha: int = field(
        default=32, metadata={"help": "LoRA scale numerator: the update is multiplied by lora_alpha / lora_r."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on each adapter's input (0 <= p < 1)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={
            "help": "Modules that get adapters: all-linear (every projection of attention and MLP, not the LM head), "
            "or names such as q_proj k_proj v_proj o_proj gate_proj up_proj down_proj."
        },
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={
            "help": "QLoRA: hold the frozen base in 4 bits (bitsandbytes, CUDA only; needs --use_peft true). "
            "The merged model is still full precision: the adapters are merged into the base loaded again."
        },
    )
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit data type: nf4 (QLoRA's) or fp4.", "choices": list(QUANT_TYPES)}
    )
    use_bnb_nested_quant: bool = field(
        default=False,
        metadata={"help": "QLoRA's double quantization: the 4-bit blocks' scales in 8 bits too (~0.4 bit/weight)."},
    )


def check_adapter_values(ns: Namespace) -> None:
    """Refuse adapter settings that would fail (or silently do nothing) once the model is loaded."""
    if ns.load_in_4bit and not ns.use_peft:
        raise ValueError("--load_in_4bit true (QLoRA) trains adapters on a 4-bit base: add --use_peft true")
    if not ns.use_peft:
        return
    if ns.lora_r < 1:
        raise ValueError(f"lora_r must be at least 1, got {ns.lora_r}")
    if ns.lora_alpha <= 0:
        raise ValueError(f"lora_alpha must be positive, got {ns.lora_alpha}")
    if not 0 <= ns.lora_dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {ns.lora_dropout}")
    if not ns.lora_target_modules:
        raise ValueError("lora_target_modules is empty: name modules, or all-linear")


def check_not_adapters(path: str | Path) -> None:
    """Refuse to start a stage from a folder that holds adapters only (a checkpoint of a LoRA run): it has no model
    to load, and its merged model is one command away."""
    folder = Path(path)
    if (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
        raise ValueError(
            f"{folder} holds LoRA adapters, not a model: merge them first (bash run.sh merge {folder}) and start "
            f"from the merged folder ({folder}-merged)"
        )


def peft_config(args):
    """The ``peft.LoraConfig`` for a TRL trainer's ``peft_config``, or None without ``--use_peft``. ``args`` is
    any object with ``AdapterArguments``' fields (a stage's parsed arguments)."""
    if not args.use_peft:
        return None
    from peft import LoraConfig

    targets = list(args.lora_target_modules)
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        # peft's shorthand is a plain string; a list is matched name by name
        target_modules=targets[0] if targets == ["all-linear"] else targets,
        bias="none",
    )


def quantization_config(args, compute_dtype: torch.dtype):
    """bitsandbytes' 4-bit settings for ``--load_in_4bit`` (None without it). The frozen weights are stored in 4
    bits and expanded to ``compute_dtype`` layer by layer in each forward and backward."""
    if not args.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=args.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,  # what FSDP/ZeRO-3 need to shard it with the other weights
    )


def load_base_model(path: str, args):
    """The model a stage trains: fp32 master weights for full training; with ``--use_peft`` the frozen base in the
    compute precision (``args.precision``, settled before this runs), or in 4 bits on this process's GPU."""
    if not args.use_peft:
        return load_causal_lm(path, args.attn_implementation)
    dtype = torch_dtype_for(args.precision)
    quantization = quantization_config(args, dtype)
    if quantization is None:
        logger.info("LoRA: frozen base in %s, adapters in fp32", args.precision)
        return load_causal_lm(path, args.attn_implementation, dtype=dtype)
    from accelerate import PartialState

    logger.info("QLoRA: frozen base in 4 bits (%s), computing in %s", args.bnb_4bit_quant_type, args.precision)
    # bitsandbytes places the 4-bit weights when loading: each process on its own GPU.
    device_map = {"": PartialState().local_process_index}
    return load_causal_lm(
        path, args.attn_implementation, dtype=dtype, quantization_config=quantization, device_map=device_map
    )


def is_adapter_model(model) -> bool:
    from accelerate.utils import is_peft_model

    return is_peft_model(model)


def base_model(model):
    """The transformers model inside a peft wrapper (the model itself without one)."""
    return model.get_base_model() if is_adapter_model(model) else model


def adapter_base_path(adapter_dir: str | Path) -> str:
    """The base folder an adapter folder was trained on, as peft recorded it (``base_model_name_or_path``)."""
    config_file = Path(adapter_dir) / ADAPTER_CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no {ADAPTER_CONFIG}: not a LoRA adapter folder")
    base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{config_file} names no base model: pass it with --base_model_name_or_path")
    return base


def merge_adapter(adapter_dir: str | Path, output_dir: str | Path, base: str | None = None, tokenizer=None) -> Path:
    """Merge the adapters in ``adapter_dir`` into a full-precision copy of their base and save a full checkpoint
    in ``output_dir``: fp32 weights, the tokenizer (``tokenizer``, else the base's), the sampling defaults, made
    portable (``utils.train.portable``). ``base`` defaults to the folder the adapters were trained on."""
    from peft import PeftModel

    from utils.tokenizer import load_tokenizer
    from utils.train.portable import make_portable

    if not (Path(adapter_dir) / ADAPTER_WEIGHT_FILE).is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no {ADAPTER_WEIGHT_FILE}: not a LoRA adapter folder")
    base = base or adapter_base_path(adapter_dir)
    if not Path(base).is_dir():
        raise FileNotFoundError(
            f"The base model {base} of {adapter_dir} is not a folder here: pass it with --base_model_name_or_path"
        )
    model = PeftModel.from_pretrained(load_causal_lm(base, "sdpa"), str(adapter_dir))
    merged = model.merge_and_unload()
    tokenizer = tokenizer or load_tokenizer(base)
    merged.generation_config = default_generation_config(tokenizer)
    output_dir = Path(output_dir)
    merged.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    make_portable(output_dir)
    logger.info("Merged the adapters of %s into %s: a full checkpoint in %s", adapter_dir, base, output_dir)
    return output_dir


def save_merged(trainer, tokenizer, output_dir: str) -> None:
    """The final save of an adapter run: adapters to ``<output_dir>/adapter`` (every process takes part, as in any
    save), then, on the main process, the merged full checkpoint in ``output_dir`` itself."""
    adapter_dir = Path(output_dir) / ADAPTER_DIR
    trainer.save_model(str(adapter_dir))
    if trainer.is_world_process_zero():
        merge_adapter(adapter_dir, output_dir, tokenizer=tokenizer)
