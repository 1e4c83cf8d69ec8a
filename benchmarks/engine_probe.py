"""What the training engine holds for a recipe on a given (faked) machine: run as a script, also under
``accelerate launch``; imported by tests/test_hardware.py.

    python tests/engine_probe.py <stage> <recipe> <hardware> <out.json> [flags...]

``hardware`` is ``real`` (this machine, its GPU included) or a faked machine (cpu, t4, a100, h100). A faked
machine exists only where the decision is taken (``utils.train.stage_args.detect_hardware``), never in the engine:
that runs on this machine's CPU (``--use_cpu true``). Either way a tiny model trains for one optimizer step,
and the Accelerator's mixed precision and the dtype of a linear layer's output in that step are recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402
from trl import DPOConfig, SFTConfig  # noqa: E402

import utils.train.hardware  # noqa: E402
import utils.train.stage_args  # noqa: E402
from utils.data.collate import PackedCollator  # noqa: E402
from utils.modeling import ModelShapeArguments, build_model  # noqa: E402
from utils.train.args import parse_args  # noqa: E402
from utils.train.hardware import Hardware  # noqa: E402
from utils.train.processes import finish  # noqa: E402

HARDWARE = {
    "cpu": Hardware(),
    "t4": Hardware(cuda=True, bf16=False, capability=(7, 5), triton=True),
    "a100": Hardware(cuda=True, bf16=True, capability=(8, 0), triton=True),
    "h100": Hardware(cuda=True, bf16=True, capability=(9, 0), triton=True),
}
# Full recipes name flash_attention_2 nowhere, but a faked Ampere with flash-attn installed would pick it.
PROBE_FLAGS = [
    "--max_steps",
    "1",
    "--report_to",
    "none",
    "--save_strategy",
    "no",
    "--per_device_train_batch_size",
    "1",
    "--gradient_accumulation_steps",
    "1",
    "--logging_steps",
    "1",
    "--dataloader_num_workers",
    "0",
    "--attn_implementation",
    "sdpa",
    "--eval_strategy",
    "no",
]


def stage_types(stage: str):
    from mini_qwen_dpo import DPOArguments
    from mini_qwen_pt import PTArguments
    from mini_qwen_sft import SFTArguments

    return {
        "pt": (PTArguments, TrainingArguments),
        "sft": (SFTArguments, SFTConfig),
        "dpo": (DPOArguments, DPOConfig),
    }[stage]


@contextlib.contextmanager
def faked(hardware: str):
    """Decisions see ``hardware`` and no optional GPU package (flash-attn, Liger, bitsandbytes); ``real``: as is."""
    if hardware == "real":
        yield []
        return
    saved = utils.train.stage_args.detect_hardware, utils.train.hardware.installed
    utils.train.stage_args.detect_hardware = lambda use_cpu=False: HARDWARE[hardware]
    utils.train.hardware.installed = lambda package: package not in ("flash_attn", "liger_kernel", "bitsandbytes")
    try:
        yield ["--use_cpu", "true"]
    finally:
        utils.train.stage_args.detect_hardware, utils.train.hardware.installed = saved


def probe(stage: str, recipe: str, output_dir: str, extra: list[str] = ()) -> dict:
    """Parse ``recipe`` as the stage does, train one step, and say what the engine held."""
    argv = ["--config", recipe, *PROBE_FLAGS, "--output_dir", output_dir, *extra]
    if stage == "dpo":
        argv += ["--sft_epoch", "0"]  # the recipe's record of SFT epochs does not exist here
    script, args = parse_args(stage_types(stage), argv)
    torch.manual_seed(0)
    shape = ModelShapeArguments(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=128,
    )
    model = build_model(shape, attn_implementation="sdpa", bos_token_id=None, eos_token_id=2, pad_token_id=0)
    seen = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(str(o.dtype)))
    rows = [{"input_ids": list(range(3, 19)), "labels": list(range(3, 19))} for _ in range(2)]
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=PackedCollator(0))
    trainer.train()
    finish(trainer)  # every process reaches the end before any exits (DeepSpeed aborts otherwise)
    return {
        "precision": script.precision,
        "attention": script.attn_implementation,
        "mixed_precision": trainer.accelerator.mixed_precision,
        "forward_dtype": seen[0],
        "deepspeed": trainer.is_deepspeed_enabled,
        "processes": trainer.accelerator.num_processes,
        "device": str(trainer.args.device),
    }


if __name__ == "__main__":
    stage, recipe, hardware, out, *flags = sys.argv[1:]
    with faked(hardware) as engine_flags:
        facts = probe(stage, recipe, str(Path(out).parent / "run"), [*engine_flags, *flags])
    if int(os.environ.get("RANK", 0)) == 0:
        Path(out).write_text(json.dumps(facts))
