"""What the hardware allows, decided once, before the training arguments are built.

``TrainingArguments.__post_init__`` derives state from its flags (``mixed_precision`` from ``bf16``/``fp16``)
and the Trainer hands that derived state to Accelerate, so a choice set on parsed arguments afterwards
changes the log, not the training. Every ``auto`` (precision, attention, fused LM head) and every fallback
(Liger kernels, 8-bit Adam, vLLM rollouts) is therefore settled here on the raw parsed values, and only then are the
dataclasses built (``utils.train.args.parse_args``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
ATTENTION_CHOICES = ("auto", "flash_attention_2", "flex_attention", "sdpa", "eager")
# Accelerate's names for our precisions (what `accelerate launch` exports as ACCELERATE_MIXED_PRECISION).
ACCELERATE_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}


@dataclass(frozen=True)
class Hardware:
    """The facts every decision below depends on."""

    cuda: bool = False
    bf16: bool = False  # the GPU computes in bfloat16 (Ampere or newer)
    capability: tuple[int, int] = (0, 0)
    triton: bool = False

    @property
    def description(self) -> str:
        return f"CUDA GPU (compute capability {self.capability[0]}.{self.capability[1]})" if self.cuda else "CPU"


def detect_hardware(use_cpu: bool = False) -> Hardware:
    """The machine as training will use it (``use_cpu`` hides any GPU, as the Trainer does)."""
    if use_cpu or not torch.cuda.is_available():
        return Hardware()
    from transformers.utils import is_triton_available

    return Hardware(
        cuda=True,
        bf16=torch.cuda.is_bf16_supported(including_emulation=False),
        capability=torch.cuda.get_device_capability(),
        triton=is_triton_available(),
    )


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def select_precision(requested: str, hardware: Hardware) -> str:
    """``auto`` -> bf16 on Ampere or newer, fp16 on older GPUs (T4/V100), fp32 on CPU; explicit values are
    checked against the hardware so that a recipe cannot silently train in another precision."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        return ("bf16" if hardware.bf16 else "fp16") if hardware.cuda else "fp32"
    if requested == "bf16" and hardware.cuda and not hardware.bf16:
        raise ValueError(
            f"precision bf16 needs an Ampere or newer GPU; this {hardware.description} computes in fp16: "
            "use --precision fp16 (or auto)"
        )
    return requested


def flash_attn_usable(hardware: Hardware) -> bool:
    """FlashAttention-2 needs the package, CUDA and an Ampere-or-newer GPU (not T4/V100)."""
    return hardware.cuda and hardware.capability[0] >= 8 and installed("flash_attn")


def select_attn_implementation(requested: str, hardware: Hardware) -> tuple[str, str]:
    """``(implementation, why)``: ``auto`` -> flash_attention_2 where usable, else sdpa. Explicit values are kept.

    Every implementation sees the same packed layout (restarting position ids, no mask): FA2 splits sequences
    with its varlen kernel, flex_attention and sdpa/eager get a document mask that transformers builds from the
    position ids."""
    if requested not in ATTENTION_CHOICES:
        raise ValueError(f"attn_implementation must be one of {', '.join(ATTENTION_CHOICES)}, got {requested!r}")
    if requested != "auto":
        if requested == "flash_attention_2" and not flash_attn_usable(hardware):
            raise ValueError("flash_attention_2 needs flash-attn and an Ampere or newer GPU: use auto or sdpa")
        return requested, "requested"
    if flash_attn_usable(hardware):
        return "flash_attention_2", "flash-attn on an Ampere or newer GPU"
    if not hardware.cuda:
        return "sdpa", "no CUDA GPU"
    if not installed("flash_attn"):
        return "sdpa", "flash-attn is not installed: requirements/flash_attn.txt, or try flex_attention"
    return "sdpa", "FlashAttention-2 needs an Ampere or newer GPU"


def fused_lm_head_usable(requested: str, hardware: Hardware) -> tuple[bool, str]:
    """``auto`` -> on where its Triton kernel runs (a CUDA GPU). Elsewhere the chunked-torch fallback is exact
    but about 2x slower per step than plain logits (measured on CPU), so auto leaves it off."""
    if requested not in ("auto", "true", "false"):
        raise ValueError(f"fused_lm_head must be auto, true or false, got {requested!r}")
    if requested != "auto":
        return requested == "true", "requested"
    usable = hardware.cuda and hardware.triton
    return usable, "CUDA GPU with Triton" if usable else "no CUDA GPU with Triton: plain logits are faster"


def four_bit_problem(hardware: Hardware) -> str | None:
    """Why QLoRA's 4-bit base cannot load here (None when it can): bitsandbytes' 4-bit kernels are CUDA kernels."""
    if not hardware.cuda:
        return "no CUDA GPU (bitsandbytes' 4-bit kernels run on CUDA only)"
    return None if installed("bitsandbytes") else "bitsandbytes is not installed (pip install -r requirements/gpu.txt)"


def vllm_usable(hardware: Hardware) -> tuple[bool, str]:
    """GRPO's rollouts through vLLM need a CUDA GPU and vllm (requirements/vllm.txt); ``why`` says what is missing."""
    if not hardware.cuda:
        return False, "no CUDA GPU (vLLM generates on GPUs only)"
    if not installed("vllm"):
        return False, "vllm is not installed (requirements/vllm.txt)"
    return True, "vllm on a CUDA GPU"


@dataclass
class Settled:
    """Values decided for the training arguments, and one line per decision for the log."""

    values: dict
    notes: list[tuple[int, str]]  # (logging level, message)


def settle_hardware(ns, hardware: Hardware, world_size: int) -> Settled:
    """Every hardware choice of a stage, from the raw parsed values ``ns`` (an argparse namespace) and the machine:
    attention, the fused LM head (stages that have the flag), precision, Liger kernels, the 8-bit optimizer, vLLM
    rollouts (GRPO), the process-group backend, and whether a 4-bit base (QLoRA) can load. Pure: it returns the values
    to set and the log lines; nothing is changed here.

    ``bf16``/``fp16`` are the Trainer's own flags, accepted as another way to ask for a precision. The loss goes
    through the fused LM head (always in TRL's SFT/DPO trainers), so Liger's own fused cross-entropy must stay off.
    """
    notes: list[tuple[int, str]] = []
    values: dict = {}
    values["attn_implementation"], why = select_attn_implementation(ns.attn_implementation, hardware)
    notes.append((logging.INFO, f"Attention implementation: {values['attn_implementation']} ({why})"))
    fused = True  # TRL's SFT and DPO trainers always score through the fused LM head
    if hasattr(ns, "fused_lm_head"):
        fused, why = fused_lm_head_usable(ns.fused_lm_head, hardware)
        values["fused_lm_head"] = str(fused).lower()
        notes.append((logging.INFO, f"Fused LM head: {'on' if fused else 'off'} ({why})"))

    if ns.bf16 and ns.fp16:
        raise ValueError("bf16 and fp16 are both true: choose one (or use --precision)")
    flag = "bf16" if ns.bf16 else "fp16" if ns.fp16 else None
    if flag and ns.precision not in ("auto", flag):
        raise ValueError(f"--{flag} true contradicts --precision {ns.precision}")
    requested = flag or ns.precision
    if requested in ("bf16", "fp16") and not hardware.cuda:
        notes.append((logging.WARNING, f"{requested} was requested but there is no GPU: training in fp32"))
        chosen = "fp32"
    else:
        chosen = select_precision(requested, hardware)
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher and launcher != ACCELERATE_PRECISION[chosen]:
        notes.append(
            (
                logging.WARNING,
                f"the launcher asked for mixed_precision={launcher}; the recipe's precision ({chosen}) is used",
            )
        )
    notes.append((logging.INFO, f"Precision: {chosen} ({hardware.description})"))
    values.update(precision=chosen, bf16=chosen == "bf16", fp16=chosen == "fp16")

    if ns.use_liger_kernel:
        if not hardware.cuda:
            notes.append(
                (logging.INFO, "use_liger_kernel: no CUDA GPU (Liger's kernels are Triton), continuing without them")
            )
            values["use_liger_kernel"] = False
        elif not installed("liger_kernel"):
            notes.append(
                (logging.INFO, "use_liger_kernel: liger-kernel is not installed, continuing without fused kernels")
            )
            values["use_liger_kernel"] = False
        elif fused:
            # Only the layer kernels (RMSNorm, RoPE, SwiGLU): Liger's fused cross-entropy would replace the
            # forward that carries the fused LM head (TRL's SFT/DPO trainers refuse it for the same reason).
            config = dict(ns.liger_kernel_config or {})
            if config.get("fused_linear_cross_entropy"):
                notes.append(
                    (logging.WARNING, "liger fused_linear_cross_entropy: off, the fused LM head computes the loss")
                )
            values["liger_kernel_config"] = {**config, "fused_linear_cross_entropy": False}
    optim = str(getattr(ns.optim, "value", ns.optim))
    if "bnb" in optim and not installed("bitsandbytes"):
        if hardware.cuda:
            # On a GPU the 8-bit state is what makes the recipe fit: fp32 Adam needs 4x its memory (a T4 recipe
            # would run out of memory after minutes of loading), so stop now and say how to get it.
            raise ValueError(
                f"optim {optim} needs bitsandbytes, which is not installed: pip install -r "
                "requirements/gpu.txt (bash run.sh setup does it on a CUDA machine), or choose another "
                "--optim and the memory it needs"
            )
        notes.append(
            (
                logging.WARNING,
                f"optim {optim}: bitsandbytes is not installed and there is no GPU, using "
                "adamw_torch (4x the optimizer memory)",
            )
        )
        values["optim"] = "adamw_torch"
    if getattr(ns, "load_in_4bit", False) and four_bit_problem(hardware):
        raise ValueError(
            f"--load_in_4bit (QLoRA) cannot run here: {four_bit_problem(hardware)}. Train LoRA adapters over the "
            f"base in {values['precision']} instead: --load_in_4bit false"
        )
    if getattr(ns, "use_vllm", False):
        usable, why = vllm_usable(hardware)
        if not usable:
            notes.append((logging.INFO, f"use_vllm: {why}, rollouts with transformers' generate"))
            values["use_vllm"] = False
    if world_size > 1 and not hardware.cuda and not ns.ddp_backend:
        # A CPU-only multi-process launch (DeepSpeed on CPU, as CI runs it) needs gloo named before the
        # training arguments are built: otherwise every process believes it is alone.
        values["ddp_backend"] = "gloo"
    return Settled(values, notes)


def export_launcher_precision(precision: str) -> None:
    """Write the settled precision where TrainingArguments reads the launcher's (``ACCELERATE_MIXED_PRECISION``):
    with bf16 and fp16 both false (fp32) it would otherwise take ``accelerate launch``'s mixed precision."""
    if os.environ.get("ACCELERATE_MIXED_PRECISION"):
        os.environ["ACCELERATE_MIXED_PRECISION"] = ACCELERATE_PRECISION[precision]


def torch_dtype_for(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
