"""Following runs in SwanLab or Weights & Biases, online or offline, as one run across restarts.

``--report_to wandb`` and ``--report_to swanlab`` (alone or beside TensorBoard, which the recipes use:
``--report_to tensorboard,swanlab``) log through each tracker's Trainer callback: transformers' ``WandbCallback``, and
SwanLab's own ``swanlab.integration.transformers.SwanLabCallback`` in place of transformers' (which calls
``swanlab.get_run()`` expecting None, while swanlab 0.10 raises when no run is active; and swanlab 0.10 fails to
parse the ``SWANLAB_PROJECT`` variable that transformers' callback reads). ``start_tracking`` tells them, for each
stage run:

* **Online or offline.** ``--tracking_mode auto`` goes online only when the tracker has credentials (its API key
  variable, or the login ``wandb login`` / ``swanlab login`` saved) and its server answers; otherwise the run is
  written offline, and ``wandb sync DIR`` / ``swanlab sync DIR`` uploads it later. ``WANDB_MODE`` / ``SWANLAB_MODE``
  set by hand are respected. ``online`` and ``offline`` force the choice.
* **Where.** Beside TensorBoard's logs, next to the output folder, never in it (a published model folder should not
  carry host names): ``results/runs/wandb/`` and ``results/runs/swanlog/`` for ``results/<name>``.
* **Which run.** A fresh start gets a new run id and the output folder's name as run name (``--run_name`` to
  choose); ``--resume auto`` continues the same tracker run, with the id and name that ``run_info.json`` recorded.
* **The link.** ``run_info.json`` records the tracker, run id, name, mode and the run's URL or local folder
  (``tracking``); the tracker's run gets the whole run record (resolved arguments, versions, commit, data summary)
  in its config, under ``run_info`` (``TrackerLinkCallback``).

How each library is driven (its variables, login, live run, config, end) is in ``utils.train.trackers``.
"""

from __future__ import annotations

import logging
import os
import secrets
import string
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from utils.run_info import portable_path, read_run_info, record_in_run_info
from utils.train.hardware import installed
from utils.train.trackers import (
    ENV,
    SUBDIR,
    choose_mode,
    finish_run,
    push_run_info,
    tracker_run_location,
    use_swanlab_callback,
)

logger = logging.getLogger(__name__)

TRACKERS = ("swanlab", "wandb")
MODES = ("auto", "online", "offline")
RUN_INFO_KEY = "tracking"
ID_ALPHABET = string.ascii_lowercase + string.digits


@dataclass
class TrackingArguments:
    """Where ``--report_to swanlab`` / ``wandb`` runs go (TensorBoard needs none of it)."""

    tracking_project: str = field(
        default="mini_qwen", metadata={"help": "SwanLab / W&B project the runs are filed under."}
    )
    tracking_mode: str = field(
        default="auto",
        metadata={
            "help": "auto: online when the tracker has a login and its server answers, else offline (sync later "
            "with `wandb sync` / `swanlab sync`); online; offline.",
            "choices": list(MODES),
        },
    )


def report_names(report_to) -> list[str]:
    """``--report_to`` as a list: one name, several separated by commas (``tensorboard,swanlab``), or a list."""
    if isinstance(report_to, str):
        return [name.strip() for name in report_to.split(",") if name.strip()]
    return list(report_to or [])


def requested_trackers(report_to) -> list[str]:
    """The trackers of ``TRACKERS`` that ``--report_to`` names."""
    return [name for name in TRACKERS if name in report_names(report_to)]


def settle_tracking(ns: Namespace) -> None:
    """Before the arguments are built: several integrations split into the list the Trainer takes (the command
    line gives one string; ``all`` is expanded as the Trainer would), a tracker that is not installed refused
    (rather than failing after the data is loaded), and the run named after its output folder unless ``--run_name``
    says otherwise."""
    names = report_names(ns.report_to)
    if names == ["all"]:  # every installed integration: named here, so that the trackers among them are set up
        from transformers.integrations import get_available_reporting_integrations

        names = get_available_reporting_integrations()
    if len(names) > 1:
        ns.report_to = names
    trackers = requested_trackers(names)
    missing = [name for name in trackers if not installed(name)]
    if missing:
        raise ValueError(
            f"--report_to {' '.join(missing)}: not installed. pip install -r requirements/tracking.txt "
            "(or report to tensorboard)"
        )
    if trackers and not ns.run_name:
        ns.run_name = Path(ns.output_dir).name


def new_run_id() -> str:
    """Eight lowercase letters and digits: what both trackers accept as a run id."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(8))


def start_tracking(trainer, script_args, resume: str | None) -> dict:
    """Point the trackers that ``--report_to`` names at their folder, mode, project and run, give ``trainer`` their
    callbacks, and return the record for ``run_info.json`` (empty without trackers). With ``resume`` the run id and
    name recorded by the run being resumed are kept, so the tracker continues that run instead of starting another."""
    args = trainer.args
    trackers = requested_trackers(args.report_to)
    if not trackers:
        return {}
    previous = ((read_run_info(args.output_dir) or {}).get(RUN_INFO_KEY) or {}) if resume else {}
    run_id = previous.get("run_id") or new_run_id()
    if previous.get("run_name") and previous["run_name"] != args.run_name:
        logger.info(
            "Tracking: continuing run %r (not %r), as the resumed run named it", previous["run_name"], args.run_name
        )
    # Read by the callbacks when training begins, not derived by TrainingArguments: setting it here takes effect.
    args.run_name = previous.get("run_name") or args.run_name
    runs_dir = Path(args.output_dir).parent / "runs"
    record = {"run_id": run_id, "run_name": args.run_name, "project": script_args.tracking_project}
    for tracker in trackers:
        mode, why = choose_mode(tracker, script_args.tracking_mode)
        folder = runs_dir / SUBDIR[tracker]
        folder.mkdir(parents=True, exist_ok=True)
        env = ENV[tracker]
        os.environ.update({env["mode"]: mode, env["dir"]: str(folder), env["id"]: run_id, env["resume"]: "allow"})
        if tracker == "wandb":
            os.environ["WANDB_PROJECT"] = script_args.tracking_project
        else:
            use_swanlab_callback(trainer, script_args.tracking_project, args.run_name, str(folder), mode)
        record[tracker] = {"mode": mode, "dir": portable_path(str(folder.resolve()))}
        logger.info("Tracking: %s %s (%s), run %s %r, in %s", tracker, mode, why, run_id, args.run_name, folder)
    trainer.add_callback(TrackerLinkCallback(record))
    return record


class TrackerLinkCallback(TrainerCallback):
    """When training begins (after transformers' tracker callbacks started their runs): the run record into each
    tracker's config, and each tracker run's URL or folder into ``run_info.json``. When it ends (after their last
    log): the runs closed."""

    def __init__(self, record: dict) -> None:
        self.record = record

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        info = read_run_info(args.output_dir) or {}
        for tracker in requested_trackers(args.report_to):
            push_run_info(tracker, info)
            entry = {**self.record.get(tracker, {}), **tracker_run_location(tracker)}
            record_in_run_info(args.output_dir, RUN_INFO_KEY, tracker, entry)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            for tracker in requested_trackers(args.report_to):
                finish_run(tracker)
