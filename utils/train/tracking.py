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
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import socket
import string
from argparse import Namespace
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from transformers import TrainerCallback

from utils.run_info import portable_path, read_run_info, record_in_run_info
from utils.train.hardware import installed

logger = logging.getLogger(__name__)

TRACKERS = ("swanlab", "wandb")
MODES = ("auto", "online", "offline")
RUN_INFO_KEY = "tracking"
# How each tracker is told where, how and which run (read by transformers' callbacks and the libraries).
ENV = {
    "wandb": {
        "mode": "WANDB_MODE",
        "dir": "WANDB_DIR",
        "id": "WANDB_RUN_ID",
        "resume": "WANDB_RESUME",
        "key": "WANDB_API_KEY",
    },
    "swanlab": {
        "mode": "SWANLAB_MODE",
        "dir": "SWANLAB_LOG_DIR",
        "id": "SWANLAB_RUN_ID",
        "resume": "SWANLAB_RUN_RESUME",
        "key": "SWANLAB_API_KEY",
    },
}
# Each tracker's folder under the runs folder (wandb makes its own wandb/ inside the folder it is given).
SUBDIR = {"wandb": ".", "swanlab": "swanlog"}
DEFAULT_HOSTS = {"wandb": "https://api.wandb.ai", "swanlab": "https://api.swanlab.cn"}
HOST_ENV = {"wandb": "WANDB_BASE_URL", "swanlab": "SWANLAB_API_HOST"}
REACH_TIMEOUT_S = 3.0
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
    line gives one string), a tracker that is not installed refused (rather than failing after the data is
    loaded), and the run named after its output folder unless ``--run_name`` says otherwise."""
    names = report_names(ns.report_to)
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


def has_login(tracker: str) -> bool:
    """Whether the tracker could log in without asking: its API key variable, or the login it saved (.netrc)."""
    if os.environ.get(ENV[tracker]["key"]):
        return True
    host = urlparse(api_host(tracker)).hostname
    if tracker == "wandb":
        files = [Path(os.environ.get("NETRC", Path.home() / ".netrc"))]
    else:
        root = Path(os.environ.get("SWANLAB_ROOT") or os.environ.get("SWANLAB_SAVE_DIR") or Path.home() / ".swanlab")
        files = [Path.cwd() / ".swanlab" / ".netrc", root / ".netrc"]
    for file in files:
        try:
            hosts = netrc.netrc(file).hosts
        except (OSError, netrc.NetrcParseError):
            continue
        if tracker == "swanlab" and hosts or host in hosts:  # swanlab keeps its own file, one host
            return True
    return False


def api_host(tracker: str) -> str:
    return os.environ.get(HOST_ENV[tracker]) or DEFAULT_HOSTS[tracker]


def reachable(url: str, timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the server of ``url`` opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def choose_mode(tracker: str, requested: str) -> tuple[str, str]:
    """``(online|offline, why)`` for ``--tracking_mode`` (see the module docstring)."""
    if requested != "auto":
        return requested, "requested"
    by_hand = os.environ.get(ENV[tracker]["mode"])
    if by_hand in ("online", "offline"):
        return by_hand, f"{ENV[tracker]['mode']} is set"
    if not has_login(tracker):
        return "offline", f"no {tracker} login ({ENV[tracker]['key']} or `{tracker} login`)"
    if not reachable(api_host(tracker)):
        return "offline", f"{api_host(tracker)} does not answer"
    return "online", f"logged in and {api_host(tracker)} answers"


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


def use_swanlab_callback(trainer, project: str, run_name: str, log_dir: str, mode: str) -> None:
    """SwanLab's own Trainer callback instead of transformers' (see the module docstring); the run id and resume
    come from the environment (``SWANLAB_RUN_ID``, ``SWANLAB_RUN_RESUME``)."""
    from swanlab.integration.transformers import SwanLabCallback
    from transformers.integrations import SwanLabCallback as TransformersSwanLabCallback

    trainer.remove_callback(TransformersSwanLabCallback)
    trainer.add_callback(SwanLabCallback(project=project, experiment_name=run_name, log_dir=log_dir, mode=mode))


def tracker_run_location(tracker: str) -> dict:
    """The live run's URL (online) or local folder (offline), as the tracker library reports it."""
    if tracker == "wandb":
        import wandb

        run = wandb.run
        if run is None:
            return {}
        return {"url": run.url} if run.url else {"folder": portable_path(str(Path(run.dir).parent.resolve()))}
    import swanlab

    if not swanlab.has_run():
        return {}
    run = swanlab.get_run()
    return {"url": run.url} if run.mode == "online" else {"folder": portable_path(str(Path(run.dir).resolve()))}


def push_run_info(tracker: str, info: dict) -> None:
    """The run record into the tracker run's config, so the run can be reproduced from the tracker alone."""
    if tracker == "wandb":
        import wandb

        wandb.config.update({"run_info": info}, allow_val_change=True)
    else:
        import swanlab

        swanlab.config.update({"run_info": info})


def finish_run(tracker: str) -> None:
    """Close the tracker's run: its files complete (an offline run can be synced), and a next stage run in the same
    process (the demo runs PT, SFT and DPO in one) starts its own run instead of writing into this one."""
    if tracker == "wandb":
        import wandb

        if wandb.run is not None:
            wandb.finish()
    else:
        import swanlab

        if swanlab.has_run():
            swanlab.finish()


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
