"""The arguments every training stage shares, and how their ``auto`` values are settled before the
``TrainingArguments`` are built (see ``utils.args.parse_args`` and ``utils.hardware``).

A stage's argument class subclasses ``StageArguments``; ``TRAINING_OVERRIDES`` lists training arguments the
stage always sets (e.g. SFT's rows are already tokenized), and ``validate`` adds the stage's own checks.
"""

from __future__ import annotations

import json
import logging
import math
import os
from argparse import Namespace
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from utils.hardware import (
    ATTENTION_CHOICES,
    PRECISIONS,
    detect_hardware,
    fused_lm_head_usable,
    select_attn_implementation,
    settle_training,
)


@dataclass
class StageArguments:
    """Hardware choices (``auto`` decides from what is present) and run safety."""

    resume: str | None = field(
        default=None,
        metadata={"help": "auto: continue from the newest complete checkpoint in output_dir (if any); or a path."},
    )
    resume_with_changes: bool = field(
        default=False,
        metadata={"help": "Resume even though some settings differ from the checkpoint's run (they are listed)."},
    )
    save_every_minutes: float | None = field(
        default=None, metadata={"help": "Also save a checkpoint every N minutes of training (on top of save_steps)."}
    )
    keep_checkpoints: int | None = field(
        default=None,
        metadata={
            "help": "How many complete checkpoints to keep (save_total_limit is routed here: old checkpoints are "
            "deleted only after the new one is complete). Unset: keep all."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an output_dir that holds a different run, deleting its checkpoints first."},
    )
    attn_implementation: str = field(
        default="auto",
        metadata={
            "help": "auto (flash_attention_2 if usable, else sdpa), flash_attention_2, flex_attention (block-sparse "
            "document mask; GPU training only: PyTorch has no flex backward on CPU), sdpa, eager.",
            "choices": list(ATTENTION_CHOICES),
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto (bf16 on Ampere+, fp16 on older GPUs, fp32 on CPU), bf16, fp16, fp32.",
            "choices": list(PRECISIONS),
        },  # fmt: skip
    )
    settled_notes: list = field(default_factory=list, init=False, repr=False)

    TRAINING_OVERRIDES: ClassVar[dict] = {}

    @classmethod
    def validate(cls, ns: Namespace) -> None:
        """Stage-specific checks on the raw values (raise ValueError naming the setting)."""

    @classmethod
    def settle(cls, ns: Namespace) -> list[tuple[int, str]]:
        """Decide every ``auto`` and every fallback on the raw parsed values; return the log lines."""
        check_training_values(ns)
        cls.validate(ns)
        hardware = detect_hardware(ns.use_cpu)
        notes: list[tuple[int, str]] = []
        ns.attn_implementation, why = select_attn_implementation(ns.attn_implementation, hardware)
        notes.append((logging.INFO, f"Attention implementation: {ns.attn_implementation} ({why})"))
        fused = True  # TRL's SFT and DPO trainers always score through the fused LM head
        if hasattr(ns, "fused_lm_head"):
            fused, why = fused_lm_head_usable(ns.fused_lm_head, hardware)
            ns.fused_lm_head = str(fused).lower()
            notes.append((logging.INFO, f"Fused LM head: {'on' if fused else 'off'} ({why})"))
        optim = str(getattr(ns.optim, "value", ns.optim))
        settled = settle_training(hardware, ns.precision, ns.bf16, ns.fp16, ns.use_liger_kernel,
                                  ns.liger_kernel_config, optim, fused)  # fmt: skip
        ns.precision = settled.precision
        for key, value in settled.values.items():
            setattr(ns, key, value)
        notes += settled.notes
        # The divergence guard must see the raw losses; the default filter replaces a NaN by the running mean.
        ns.logging_nan_inf_filter = False
        if ns.save_total_limit is not None:
            if ns.keep_checkpoints not in (None, ns.save_total_limit):
                raise ValueError(f"save_total_limit={ns.save_total_limit} contradicts keep_checkpoints")
            ns.keep_checkpoints, ns.save_total_limit = ns.save_total_limit, None
        cpu_engine = ns.use_cpu or not torch.cuda.is_available()
        if int(os.environ.get("WORLD_SIZE", 1)) > 1 and cpu_engine and not ns.ddp_backend:
            # A CPU-only multi-process launch (DeepSpeed on CPU, as CI runs it) needs gloo named before the
            # training arguments are built: otherwise every process believes it is alone.
            ns.ddp_backend = "gloo"
        for key, value in cls.TRAINING_OVERRIDES.items():
            setattr(ns, key, value)
        return notes


def check_training_values(ns: Namespace) -> None:
    """Refuse values that would only fail once training started (after files were written)."""
    if not (math.isfinite(ns.learning_rate) and ns.learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {ns.learning_rate}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(ns, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(ns, name)}")
    if ns.max_steps <= 0 and ns.num_train_epochs <= 0:
        raise ValueError("num_train_epochs (or max_steps) must be positive")
    if ns.save_every_minutes is not None and ns.save_every_minutes <= 0:
        raise ValueError(f"save_every_minutes must be positive, got {ns.save_every_minutes}")
    if ns.keep_checkpoints is not None and ns.keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints must be at least 1, got {ns.keep_checkpoints}")
    model_kwargs = getattr(ns, "model_init_kwargs", None) or {}
    if isinstance(model_kwargs, str):  # a JSON string on the command line
        model_kwargs = json.loads(model_kwargs)
    if getattr(ns, "trust_remote_code", False) or model_kwargs.get("trust_remote_code"):
        raise ValueError("trust_remote_code is refused: mini_qwen never runs code that comes with a checkpoint")
