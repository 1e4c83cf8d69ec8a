"""What every stage does around its trainer: logging, resume, the run record, training with its safety nets,
and saving a model that other tools read exactly."""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from pathlib import Path

import transformers
from transformers import PreTrainedTokenizerBase, Trainer, TrainingArguments

from utils import REPO_ROOT
from utils.generation import SAMPLE_PROMPTS, build_generation_config, default_generation_config, generate
from utils.modeling import count_parameters, use_fused_lm_head
from utils.plotting import plot_loss
from utils.reference import load_reference
from utils.run_info import flat_arguments, write_run_info
from utils.train.adapters import base_model, is_adapter_model, save_merged
from utils.train.callbacks import (
    EXIT_SIGNALLED,
    CheckpointCallback,
    GracefulStopCallback,
    NonFiniteLossCallback,
    ReferenceCurveCallback,
    TimedCheckpointCallback,
)
from utils.train.checkpointing import (
    changed_settings,
    check_disk_space,
    check_output_dir,
    check_pickles,
    checkpoint_problem,
    clear_previous_run,
    find_resume_checkpoint,
    remove_incomplete,
)
from utils.train.portable import make_portable
from utils.train.processes import finish
from utils.train.tracking import start_tracking

logger = logging.getLogger(__name__)
# Every module logs under its own name (``logging.getLogger(__name__)``): these are the project's top-level names,
# the stage scripts included (``__main__`` when run as a script, their module name when a demo imports them).
PROJECT_LOGGERS = (
    "__main__",
    "utils",
    "tools",
    "demo",
    "experiments",
    "benchmarks",
    *(path.stem for path in REPO_ROOT.glob("mini_qwen_*.py")),
)


def setup_logging(args: TrainingArguments, notes: list[tuple[int, str]] = ()) -> None:
    """INFO on the main process, warnings only on the others, so multi-GPU logs stay readable; then the lines
    of what was settled before the arguments were built (precision, attention, fallbacks).

    TensorBoard writes next to the output folder, not into it (``results/runs/<name>-<time>`` for
    ``results/<name>``): its folder and file names carry the host name, which a published model should not."""
    out = Path(args.output_dir)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out.parent / "runs" / f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    level = logging.INFO if args.process_index == 0 else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # Our loggers get the level, not the root: a host that configured logging (a notebook, pytest) keeps its own.
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    # transformers at INFO prints every config it loads; our own logger says what matters.
    transformers.utils.logging.set_verbosity(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    for note_level, message in notes:
        logger.log(note_level, message)


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


class FusedLMHeadTrainer(Trainer):
    """The HF Trainer with its loss from the fused LM head (``use_fused_lm_head``), as TRL's trainers do."""

    def __init__(self, model=None, args=None, **kwargs) -> None:
        if (args is not None and args.label_smoothing_factor) or kwargs.get("compute_loss_func"):
            raise ValueError(
                "The fused LM head computes plain cross-entropy: use --fused_lm_head false for "
                "label smoothing or a custom loss"
            )
        super().__init__(model=use_fused_lm_head(model), args=args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(model, {**inputs, "fused_lm_head": True}, return_outputs, num_items_in_batch)


def resolve_resume(script_args, args: TrainingArguments, arguments: dict) -> str | None:
    """``auto`` -> the newest intact checkpoint in output_dir (or a fresh start); a path is checked. Either way
    the checkpoint's pickles are checked, and a run whose settings differ is refused unless accepted."""
    requested = script_args.resume or args.resume_from_checkpoint
    if requested in (None, "", "false", "False", "no"):
        return None
    if requested in ("auto", "true", "True"):
        path = find_resume_checkpoint(args.output_dir)
        if path is None:
            logger.info("No complete checkpoint in %s: starting fresh", args.output_dir)
            return None
    else:
        path = Path(requested)
        problem = checkpoint_problem(path) if path.is_dir() else "no such directory"
        if problem:
            raise SystemExit(f"Cannot resume from {requested}: {problem}")
    check_pickles(path)
    changes = changed_settings(path, args.output_dir, arguments)
    if changes and not script_args.resume_with_changes:
        raise SystemExit(
            f"{path} was written by a run with other settings: {'; '.join(changes)}. Resume with the "
            "same settings, or accept the changes with --resume_with_changes true."
        )
    for change in changes:
        logger.warning("Resuming with a changed setting (accepted): %s", change)
    logger.info("Resuming from %s", path)
    return str(path)


def train_and_save(
    trainer, tokenizer, stage: str, script_args, seen_per_step: dict | None = None, **run_facts
) -> None:
    """Check the output dir and disk, record the run, train (resuming if asked; saving on SIGTERM and
    every ``save_every_minutes``), stop on divergence, save the final model.

    ``seen_per_step``: what one optimizer step trains on, ``{"tokens": n}`` or ``{"pairs": n}``, for the comparison
    with a ``reference_curve``."""
    args = trainer.args
    arguments = flat_arguments(script_args, args)
    if script_args.overwrite_output_dir and trainer.is_world_process_zero():
        clear_previous_run(args.output_dir)
    trainer.accelerator.wait_for_everyone()
    resume = resolve_resume(script_args, args, arguments)
    tracking = start_tracking(trainer, script_args, resume)  # before run_info.json is rewritten: a resume reads it
    if tracking:
        run_facts["tracking"] = tracking
    if trainer.is_world_process_zero():
        check_output_dir(args.output_dir, stage, arguments, bool(resume))
        remove_incomplete(args.output_dir)
        check_disk_space(args.output_dir, count_parameters(trainer.model), args.save_only_model)
        carry = ("epoch_checkpoints",) if resume else ()
        write_run_info(args.output_dir, stage, script_args, args, carry_over=carry, **run_facts)
    trainer.accelerator.wait_for_everyone()
    # Checkpoints carry the sampling defaults too, so any of them is ready to chat with.
    base_model(trainer.model).generation_config = default_generation_config(tokenizer)
    guard, stopper = NonFiniteLossCallback(), GracefulStopCallback()
    for callback in (guard, stopper, CheckpointCallback(script_args.keep_checkpoints)):
        trainer.add_callback(callback)
    if script_args.save_every_minutes:
        trainer.add_callback(TimedCheckpointCallback(script_args.save_every_minutes))
    if script_args.reference_curve:
        reference = load_reference(script_args.reference_curve)
        per_step = (seen_per_step or {}).get(reference.unit)
        if per_step is None:
            raise SystemExit(
                f"reference_curve {script_args.reference_curve} counts {reference.unit}; a {stage} run "
                f"counts {', '.join(seen_per_step or {}) or 'neither'}: choose another reference"
            )
        trainer.add_callback(ReferenceCurveCallback(reference, per_step))
    try:
        trainer.train(resume_from_checkpoint=resume)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        previous = find_resume_checkpoint(args.output_dir)
        raise RuntimeError(
            f"Disk full while saving checkpoint-{trainer.state.global_step} in {args.output_dir}: "
            f"{err}. The previous checkpoint {previous or '(none)'} is intact. Free space, then "
            "resume with --resume auto."
        ) from err
    finally:
        stopper.restore()
    if guard.bad_step is not None:
        last = find_resume_checkpoint(args.output_dir)
        raise RuntimeError(
            f"Training loss became NaN/inf at step {guard.bad_step}; stopped without saving. Last "
            f"good checkpoint: {last or 'none'}. Lower the learning rate or check the data, then "
            f"resume with --resume {last or 'auto'}."
        )
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
    log_samples(trainer, tokenizer, chat=stage != "pt", thinking=getattr(script_args, "enable_thinking", False))


def save_final(trainer, tokenizer: PreTrainedTokenizerBase, output_dir: str) -> None:
    """Model (safetensors), tokenizer with chat template, generation config, state and curves, in files that
    transformers 4.x and 5.x, llama.cpp's converter and servers read the same way (``utils.train.portable``).
    A LoRA run saves the same: its adapters merged into full weights (``utils.train.adapters.save_merged``)."""
    if is_adapter_model(trainer.model):
        save_merged(trainer, tokenizer, output_dir)
    else:
        trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        make_portable(output_dir)
        trainer.save_state()
        try:
            plot_loss(output_dir)
        except ValueError as err:
            logger.warning("No curves plotted: %s", err)
        logger.info("Saved the final model to %s", output_dir)


def log_samples(trainer, tokenizer, chat: bool, max_new_tokens: int = 32, thinking: bool = False) -> None:
    """A few short answers from the trained model in the log (main process, not under DeepSpeed,
    where the weights are partitioned: use mini_qwen_eval.py on the saved checkpoint there); with ``thinking``,
    the chat template's thinking switch on."""
    if not trainer.is_world_process_zero() or trainer.is_deepspeed_enabled:
        return
    model = trainer.model
    was_training = model.training
    model.eval()
    config = build_generation_config(model, max_new_tokens=max_new_tokens)
    for prompt in SAMPLE_PROMPTS["chat" if chat else "raw"]:
        query = [{"role": "user", "content": prompt}] if chat else prompt
        result = generate(model, tokenizer, query, config, thinking=thinking and chat)
        logger.info("Sample %r -> %r%s", prompt, result.text, "" if result.ended_with_eos else " ...")
    model.train(was_training)
