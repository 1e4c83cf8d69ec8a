"""The arguments every training stage shares, and how their ``auto`` values are settled before the
``TrainingArguments`` are built (see ``utils.train.args.parse_args`` and ``utils.train.hardware``).

A stage's argument class subclasses ``StageArguments``; ``TRAINING_OVERRIDES`` lists training arguments the
stage always sets (e.g. SFT's rows are already tokenized), and ``validate`` adds the stage's own checks.
"""

from __future__ import annotations

import json
import math
import os
from argparse import Namespace
from dataclasses import dataclass, field
from typing import ClassVar

from utils.reference import load_reference
from utils.train.hardware import (
    ATTENTION_CHOICES,
    PRECISIONS,
    detect_hardware,
    export_launcher_precision,
    settle_hardware,
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
        },
    )
    reference_curve: str | None = field(
        default=None,
        metadata={
            "help": "Compare the loss with a reference run at the same point (tokens or pairs seen): upstream_pt, "
            "upstream_dpo (upstream mini_qwen's logs, mini_data/reference) or a CSV with tokens/pairs and loss "
            "columns. Logged at every logging step, drawn in training_curves.png, with a warning when clearly off."
        },
    )
    settled_notes: list = field(default_factory=list, init=False, repr=False)

    TRAINING_OVERRIDES: ClassVar[dict] = {}

    @classmethod
    def validate(cls, ns: Namespace) -> None:
        """Stage-specific checks on the raw values (raise ValueError naming the setting)."""

    @classmethod
    def parser_defaults(cls) -> dict:
        """Defaults replaced in the parser: TRL's configs default to ``bf16=True``, which is not a choice the user
        made. Precision is the stage's ``precision`` argument; an explicit bf16/fp16 (recipe or flag) still shows."""
        return {"bf16": False, "fp16": False}

    @classmethod
    def settle(cls, ns: Namespace) -> list[tuple[int, str]]:
        """Check the raw parsed values, let ``utils.train.hardware`` decide every hardware choice, set them; return
        the log lines."""
        check_training_values(ns)
        cls.validate(ns)
        hardware = detect_hardware(ns.use_cpu)
        settled = settle_hardware(ns, hardware, world_size=int(os.environ.get("WORLD_SIZE", 1)))
        for key, value in settled.values.items():
            setattr(ns, key, value)
        export_launcher_precision(ns.precision)
        # The divergence guard must see the raw losses; the default filter replaces a NaN by the running mean.
        ns.logging_nan_inf_filter = False
        if ns.save_total_limit is not None:
            if ns.keep_checkpoints not in (None, ns.save_total_limit):
                raise ValueError(f"save_total_limit={ns.save_total_limit} contradicts keep_checkpoints")
            ns.keep_checkpoints, ns.save_total_limit = ns.save_total_limit, None
        for key, value in cls.TRAINING_OVERRIDES.items():
            setattr(ns, key, value)
        return settled.notes


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
    if ns.reference_curve:
        load_reference(ns.reference_curve)  # a name or file that cannot be read fails now, not after the first log
    if getattr(ns, "trust_remote_code", False) or model_kwargs.get("trust_remote_code"):
        raise ValueError("trust_remote_code is refused: mini_qwen never runs code that comes with a checkpoint")


def check_holdout(ns: Namespace) -> None:
    """A held-out share (PT documents, SFT conversations) is a share, and evaluating needs one."""
    if not 0 <= ns.holdout < 1:
        raise ValueError(f"holdout is a share of the data in [0, 1), got {ns.holdout}")
    if str(getattr(ns.eval_strategy, "value", ns.eval_strategy)) != "no" and not ns.holdout:
        raise ValueError(
            "eval_strategy asks for evaluations but holdout is 0: nothing is held out to evaluate on; "
            "set holdout (e.g. 0.01) or eval_strategy no"
        )
