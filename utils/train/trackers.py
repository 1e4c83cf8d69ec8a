"""How each tracker library is driven: its environment variables, whether it can go online (a login and an
answering server), its live run's URL or folder, its config, its end; and SwanLab's own Trainer callback in place of
transformers' (see ``utils.train.tracking``, which decides what to ask of them)."""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from utils.run_info import portable_path

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
