"""Trainer callbacks: completion markers and rotation, time-based saves, graceful stop on SIGTERM/SIGINT,
the divergence guard, and the real-token share in the log history.

All of them use the Trainer's public callback events: ``on_save`` runs right after a checkpoint's files are
written, which is when its completion marker goes in and older checkpoints may go.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from utils.run_info import RUN_INFO_FILE
from utils.train.checkpointing import mark_complete, rotate
from utils.train.portable import make_portable

logger = logging.getLogger(__name__)

EXIT_SIGNALLED = 143  # 128 + SIGTERM: what schedulers expect from a job that stopped on request


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class CheckpointCallback(TrainerCallback):
    """After every save: wait for all processes, copy in the run's run_info.json (so a resume can tell whether it
    continues the same run), make the folder portable (``utils.train.portable``), write the completion marker, then
    rotate to ``keep`` complete checkpoints."""

    def __init__(self, keep: int | None) -> None:
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        _barrier()  # every rank has written its shards
        if args.should_save and path.is_dir():
            info = Path(args.output_dir) / RUN_INFO_FILE
            if info.is_file():
                shutil.copy2(info, path / RUN_INFO_FILE)
            make_portable(path)
            mark_complete(path, state.global_step)
            best = {Path(state.best_model_checkpoint)} if state.best_model_checkpoint else set()
            rotate(args.output_dir, self.keep, keep=best)
        _barrier()  # no rank resumes work (or exits) while the marker is being written


class TimedCheckpointCallback(TrainerCallback):
    """Save every ``minutes`` of training as well as by steps, so a crash loses at most that much."""

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - self.last >= self.seconds:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()


class GracefulStopCallback(TrainerCallback):
    """First SIGTERM/SIGINT: finish the optimizer step, save a checkpoint, stop. Second: exit at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.stopped_at: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            os._exit(128 + signum)
        self.signal = signum
        logger.warning(
            "Received %s: finishing this step, saving a checkpoint, then exiting (again to exit now)",
            signal.Signals(signum).name,
        )

    def on_step_end(self, args, state, control, **kwargs):
        stop = torch.tensor([float(self.signal is not None)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process must stop at the same step, or the others wait forever in the next collective.
            stop = stop.to(args.device)
            torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
        if stop.item() > 0:
            self.signal = self.signal or signal.SIGTERM
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def restore(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL if sig == signal.SIGTERM else signal.default_int_handler)


class NonFiniteLossCallback(TrainerCallback):
    """Stop at the first NaN/inf training loss without saving the broken weights.

    The Trainer's ``logging_nan_inf_filter`` would replace a NaN loss by the running mean before it is logged;
    the stages settle it to false before the arguments are built (``utils.train.stage_args``)."""

    def __init__(self) -> None:
        self.bad_step: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if args.logging_nan_inf_filter:
            raise ValueError("logging_nan_inf_filter must be false for the divergence guard to see NaN losses")

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.bad_step = state.global_step
            control.should_training_stop = True
            control.should_save = False
        return control


class RealTokenShareCallback(TrainerCallback):
    """Records ``real_token_share`` (real / computed tokens since the last log) in the log history.

    The Trainer has already copied ``logs`` into the history when callbacks see it, so the share is
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


class ReferenceCurveCallback(TrainerCallback):
    """Every logged loss next to a reference run's at the same point (tokens or pairs seen, ``utils.reference``):
    one log line, a ``reference_loss`` entry in the log history, and one warning, once, when the run is clearly
    off: more than ``tolerance`` above the reference after warmup, or the loss rising for ``rising`` logs in a row."""

    def __init__(self, reference, per_step: float, tolerance: float = 0.10, rising: int = 10) -> None:
        self.reference, self.per_step = reference, per_step
        self.tolerance, self.rising = tolerance, rising
        self.losses: list[float] = []
        self.said_outside = self.warned = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is None or not state.is_world_process_zero or not math.isfinite(loss):
            return
        seen = state.global_step * self.per_step
        expected = self.reference.loss_at(seen)
        unit, name = self.reference.unit, self.reference.label
        if expected is None:
            if not self.said_outside:
                self.said_outside = True
                logger.info(
                    "step %d: loss %.4f at %s %s; %s covers %s to %s %s, no comparison here",
                    state.global_step,
                    loss,
                    f"{seen:,.0f}",
                    unit,
                    name,
                    f"{self.reference.seen[0]:,.0f}",
                    f"{self.reference.seen[-1]:,.0f}",
                    unit,
                )
        else:
            state.log_history.append({"reference_loss": round(expected, 4), "step": state.global_step})
            logger.info(
                "step %d: loss %.4f at %s %s; %s had %.4f at the same point",
                state.global_step,
                loss,
                f"{seen:,.0f}",
                unit,
                name,
                expected,
            )
        self.losses.append(loss)
        warmed_up = state.global_step > args.get_warmup_steps(state.max_steps)
        if self.warned:
            return
        if expected is not None and warmed_up and loss > expected * (1 + self.tolerance):
            self.warned = True
            logger.warning(
                "The loss (%.4f) is %.0f%% above %s at the same point (%.4f), after warmup: check the "
                "learning rate, the batch and the data before spending more compute",
                loss,
                100 * (loss / expected - 1),
                name,
                expected,
            )
        recent = self.losses[-(self.rising + 1) :]
        if len(recent) > self.rising and all(b > a for a, b in zip(recent, recent[1:])):
            self.warned = True
            logger.warning(
                "The loss rose at each of the last %d logs (%.4f -> %.4f): the run may be diverging",
                self.rising,
                recent[0],
                recent[-1],
            )
