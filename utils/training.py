"""What every stage does around its trainer: logging, precision, resume, divergence guard, saving."""

from __future__ import annotations

import importlib.util
import logging
import math
import signal
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import GenerationConfig, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from transformers.training_args import OptimizerNames

from utils.args import as_jsonable, write_run_info
from utils.checkpointing import (
    EXIT_SIGNALLED,
    GracefulStopCallback,
    TimedCheckpointCallback,
    check_disk_space,
    check_output_dir,
    checkpoint_problem,
    find_resume_checkpoint,
)
from utils.generation import SAMPLE_PROMPTS, build_generation_config, generate
from utils.modeling import count_parameters, select_precision, use_fused_lm_head
from utils.plotting import plot_loss

logger = logging.getLogger("mini_qwen")


@dataclass
class StageArguments:
    """What every stage shares: hardware choices (``auto`` decides from what is present) and run safety."""

    resume: str | None = field(
        default=None,
        metadata={"help": "auto: continue from the newest complete checkpoint in output_dir (if any); or a path."},
    )
    save_every_minutes: float | None = field(
        default=None, metadata={"help": "Also save a checkpoint every N minutes of training (on top of save_steps)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into an output_dir that holds a different run (replacing it)."}
    )
    attn_implementation: str = field(
        default="auto",
        metadata={
            "help": "auto (flash_attention_2 if usable, else sdpa with a block mask), sdpa, eager, or flex_attention "
            "(block-sparse document mask; GPU training only: PyTorch has no flex backward on CPU)."
        },
    )
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16/fp16 on GPUs, fp32 on CPU), bf16, fp16, fp32."}
    )


def setup_logging(args: TrainingArguments) -> None:
    """INFO on the main process, warnings only on the others, so multi-GPU logs stay readable."""
    level = logging.INFO if args.process_index == 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Our loggers get the level, not the root: a host that configured logging (a notebook, pytest) keeps its own.
    for name in ("mini_qwen", "utils"):
        logging.getLogger(name).setLevel(level)
    # transformers at INFO prints every config it loads; our own logger says what matters.
    transformers.utils.logging.set_verbosity(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def configure_hardware(precision: str, args: TrainingArguments, fused_lm_head: bool = True) -> str:
    """Resolve ``auto`` precision to bf16/fp16/fp32 from the hardware (unless the recipe set bf16/fp16),
    and switch off speed levers whose optional package is missing, with one log line each.

    ``fused_lm_head``: the loss goes through the fused LM head (always in TRL's SFT/DPO trainers)."""
    if precision == "auto" and (args.bf16 or args.fp16):
        chosen = "bf16" if args.bf16 else "fp16"
    else:
        chosen = select_precision(precision)
    if chosen in ("bf16", "fp16") and not torch.cuda.is_available() and not args.use_cpu:
        logger.warning("%s was requested but no GPU is available: training in fp32", chosen)
        chosen = "fp32"
    args.bf16, args.fp16 = chosen == "bf16", chosen == "fp16"
    logger.info("Precision: %s", chosen)
    if args.use_liger_kernel:
        if not torch.cuda.is_available():
            logger.info("use_liger_kernel: no CUDA GPU (Liger's kernels are Triton), continuing without them")
            args.use_liger_kernel = False
        elif importlib.util.find_spec("liger_kernel") is None:
            logger.info("use_liger_kernel: liger-kernel is not installed, continuing without fused kernels")
            args.use_liger_kernel = False
        elif fused_lm_head:
            # Only the layer kernels (RMSNorm, RoPE, SwiGLU): Liger's own fused cross-entropy would replace the
            # forward that carries the fused LM head (TRL's SFT/DPO trainers refuse it for the same reason).
            config = dict(args.liger_kernel_config or {})
            if config.get("fused_linear_cross_entropy"):
                logger.warning("liger fused_linear_cross_entropy: off, the fused LM head computes the loss")
            args.liger_kernel_config = {**config, "fused_linear_cross_entropy": False}
    optim = getattr(args.optim, "value", args.optim)
    if "bnb" in optim and importlib.util.find_spec("bitsandbytes") is None:
        logger.info("optim %s: bitsandbytes is not installed, using adamw_torch (4x the optimizer memory)", optim)
        args.optim = OptimizerNames.ADAMW_TORCH
    return chosen


def resolve_resume(requested: str | None, output_dir: str) -> str | None:
    """``auto`` -> the newest complete checkpoint in output_dir, or a fresh start; a path is checked."""
    if requested in (None, "", "false", "False", "no"):
        return None
    if requested in ("auto", "true", "True"):
        last = find_resume_checkpoint(output_dir)
        logger.info("Resuming from %s", last) if last else logger.info(
            "No checkpoint in %s: starting fresh", output_dir
        )
        return str(last) if last else None
    problem = checkpoint_problem(Path(requested)) if Path(requested).is_dir() else "no such directory"
    if problem:
        raise FileNotFoundError(f"Cannot resume from {requested}: {problem}")
    return requested


def log_batch_geometry(args: TrainingArguments, tokens_per_sample: int | None = None) -> int:
    """Log and return the global batch, what the optimizer sees: per-device x accumulation x processes."""
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    extra = f" = {global_batch * tokens_per_sample:,} tokens" if tokens_per_sample else ""
    logger.info(
        "Global batch: %d per device x %d accumulation x %d processes = %d samples%s per optimizer step",
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        args.world_size,
        global_batch,
        extra,
    )
    return global_batch


class NonFiniteLossCallback(TrainerCallback):
    """Stop at the first NaN/inf training loss without saving the broken weights.

    The trainer's default ``logging_nan_inf_filter`` would replace a NaN loss by the running mean
    before it is logged, hiding the divergence, so the guard turns that filter off.
    """

    def __init__(self, args: TrainingArguments) -> None:
        args.logging_nan_inf_filter = False
        self.bad_step: int | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.bad_step = state.global_step
            control.should_training_stop = True
            control.should_save = False
        return control


class FusedLMHeadTrainer(Trainer):
    """The HF Trainer with its loss from the fused LM head (``use_fused_lm_head``), as TRL's trainers do."""

    def __init__(self, model=None, args=None, **kwargs) -> None:
        if (args is not None and args.label_smoothing_factor) or kwargs.get("compute_loss_func"):
            raise ValueError("The fused LM head computes plain cross-entropy: use --fused_lm_head false for "
                             "label smoothing or a custom loss")  # fmt: skip
        super().__init__(model=use_fused_lm_head(model), args=args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, {**inputs, "fused_lm_head": True}, return_outputs, num_items_in_batch)


def check_diverged(guard: NonFiniteLossCallback, output_dir: str) -> None:
    if guard.bad_step is not None:
        last = find_resume_checkpoint(output_dir)
        raise RuntimeError(
            f"Training loss became NaN/inf at step {guard.bad_step}; stopped without saving. "
            f"Last good checkpoint: {last or 'none'}. Lower the learning rate or check the data, "
            f"then resume with --resume {last or 'auto'}."
        )


def default_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Sampling defaults that do not loop (Qwen2.5's own settings); greedy stays one flag away.

    Stop at <|im_end|> (end of a chat turn) or <|endoftext|> (end of a document).
    """
    eos = [tokenizer.eos_token_id]
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id not in eos:
        eos.append(tokenizer.pad_token_id)
    return GenerationConfig(
        do_sample=True,
        temperature=0.7,
        top_p=0.8,
        top_k=20,
        repetition_penalty=1.1,
        max_new_tokens=512,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_final(trainer, tokenizer: PreTrainedTokenizerBase, output_dir: str) -> None:
    """Model (safetensors), tokenizer with chat template, generation config, state and curves."""
    trainer.model.generation_config = default_generation_config(tokenizer)
    trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        trainer.save_state()
        try:
            plot_loss(output_dir)
        except ValueError as err:
            logger.warning("No curves plotted: %s", err)
        logger.info("Saved the final model to %s", output_dir)


class RealTokenShareCallback(TrainerCallback):
    """Records ``real_token_share`` (real / computed tokens since the last log) in the log history.

    The trainer has already copied ``logs`` into the history when callbacks see it, so the share is
    appended as its own entry (it reaches trainer_state.json and the curves) and printed.
    """

    def __init__(self, collator) -> None:
        self.collator = collator

    def on_log(self, args, state, control, logs=None, **kwargs):
        share = self.collator.take_real_token_share()
        if share is not None and "loss" in (logs or {}):
            state.log_history.append({"real_token_share": round(share, 4), "step": state.global_step})
            if state.is_world_process_zero:
                logger.info("step %d: real-token share %.1f%%", state.global_step, 100 * share)


def finish(trainer) -> None:
    """Let every process reach the end before any exits, then close the process group.

    Without this a non-main process can exit while the main one still writes the final files, and
    the collective threads it leaves behind abort at interpreter exit (seen with ZeRO-3 on CPU).
    """
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train_and_save(trainer, guard: NonFiniteLossCallback, tokenizer, stage: str, script_args, **run_facts) -> None:
    """Check the output dir and disk, record the run, train (resuming if asked; saving on SIGTERM and
    every ``save_every_minutes``), stop on divergence, save the final model."""
    args = trainer.args
    resume = resolve_resume(script_args.resume or args.resume_from_checkpoint, args.output_dir)
    if trainer.is_world_process_zero():
        arguments = {**as_jsonable(script_args), **as_jsonable(args)}
        check_output_dir(args.output_dir, stage, arguments, bool(resume), script_args.overwrite_output_dir)
        check_disk_space(args.output_dir, count_parameters(trainer.model), args.save_only_model)
        write_run_info(args.output_dir, stage, script_args, args, **run_facts)
    stopper = GracefulStopCallback()
    trainer.add_callback(stopper)
    if script_args.save_every_minutes:
        trainer.add_callback(TimedCheckpointCallback(script_args.save_every_minutes))
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        stopper.restore()
    check_diverged(guard, args.output_dir)
    if stopper.stopped_at is not None:
        finish(trainer)
        logger.warning(
            "Stopped by %s after step %d; checkpoint saved in %s. Resume with --resume auto.",
            signal.Signals(stopper.signal).name,
            stopper.stopped_at,
            args.output_dir,
        )
        raise SystemExit(EXIT_SIGNALLED)
    save_final(trainer, tokenizer, args.output_dir)
    log_samples(trainer, tokenizer, chat=stage != "pt")


def log_samples(trainer, tokenizer, chat: bool, max_new_tokens: int = 32) -> None:
    """A few short answers from the trained model in the log (main process, not under DeepSpeed,
    where the weights are partitioned: use mini_qwen_eval.py on the saved checkpoint there)."""
    if not trainer.is_world_process_zero() or trainer.is_deepspeed_enabled:
        return
    model = trainer.model
    was_training = model.training
    model.eval()
    config = build_generation_config(model, max_new_tokens=max_new_tokens)
    for prompt in SAMPLE_PROMPTS["chat" if chat else "raw"]:
        query = [{"role": "user", "content": prompt}] if chat else prompt
        result = generate(model, tokenizer, query, config)
        logger.info("Sample %r -> %r%s", prompt, result.text, "" if result.ended_with_eos else " ...")
    model.train(was_training)
