"""SwanLab and W&B tracking (``utils.train.tracking``), offline, through a real stage: one tracker run across
``--resume auto`` (same id, same name), linked both ways with ``run_info.json``. No network is used: without a
login ``auto`` is offline, and the reachability probe is replaced where a login is faked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT
from tests.utils.train.test_fault_tolerance import PT, pt_argv, run
from utils.train import trackers, tracking
from utils.train.args import parse_args

pytest.importorskip("wandb", reason="requirements/tracking.txt is not installed")
pytest.importorskip("swanlab", reason="requirements/tracking.txt is not installed")


@pytest.fixture()
def clean_env(tmp_path, monkeypatch):
    """No tracker login or mode from this machine, and every variable the stage sets undone afterwards."""
    saved = dict(os.environ)
    for env in trackers.ENV.values():
        for name in env.values():
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no saved login (~/.netrc, ~/.swanlab)
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "home" / ".swanlab"))
    yield
    os.environ.clear()
    os.environ.update(saved)


def tracked_argv(tmp_path, tokenizer_dir, steps: str) -> list[str]:
    extra = ["--report_to", "tensorboard,wandb,swanlab", "--save_strategy", "steps", "--save_steps", "2"]
    return pt_argv(tmp_path, tokenizer_dir, steps=steps) + extra


def test_offline_runs_keep_their_id_and_name_across_resume(tmp_path, small_tokenizer_dir, clean_env):
    run(PT, tracked_argv(tmp_path, small_tokenizer_dir, steps="4"))
    first = json.loads((tmp_path / "pt" / "run_info.json").read_text())["tracking"]
    run(
        PT,
        tracked_argv(tmp_path, small_tokenizer_dir, steps="6") + ["--resume", "auto", "--resume_with_changes", "true"],
    )
    info = json.loads((tmp_path / "pt" / "run_info.json").read_text())
    second, run_id = info["tracking"], first["run_id"]
    assert second["run_id"] == run_id and second["run_name"] == first["run_name"] == "pt"
    assert second["wandb"]["mode"] == second["swanlab"]["mode"] == "offline"

    # Next to the output folder, with TensorBoard's logs; two starts of the same tracker run each.
    wandb_runs = sorted((tmp_path / "runs" / "wandb").glob(f"offline-run-*-{run_id}"))
    swanlab_runs = sorted((tmp_path / "runs" / "swanlog").glob(f"run-*-{run_id}"))
    assert len(wandb_runs) == len(swanlab_runs) == 2
    assert {Path(first["wandb"]["folder"]).name, Path(second["wandb"]["folder"]).name} == {p.name for p in wandb_runs}
    assert Path(second["swanlab"]["folder"]).name == swanlab_runs[1].name
    # Each start logged losses, under the run name, with the run record (its git commit) in the config.
    for folder in wandb_runs:
        data = (folder / f"run-{run_id}.wandb").read_bytes()
        assert b"train/loss" in data and b"run_info" in data and info["git_commit"].encode() in data
    for folder in swanlab_runs:
        data = (folder / f"run-{run_id}.swanlab").read_bytes()
        assert b"train/loss" in data and b"pt" in data
    config = yaml.safe_load((swanlab_runs[1] / "files" / "config.yaml").read_text())
    assert info["git_commit"] in json.dumps(config)
    assert not list((tmp_path / "pt").glob("**/wandb")) and not list((tmp_path / "pt").glob("**/swanlog"))


@pytest.mark.parametrize("tracker", tracking.TRACKERS)
def test_auto_mode_needs_a_login_and_an_answering_server(clean_env, monkeypatch, tracker):
    probes, answers = [], []
    monkeypatch.setattr(trackers, "reachable", lambda url: probes.append(url) or answers[-1])
    mode, why = trackers.choose_mode(tracker, "auto")
    assert mode == "offline" and "login" in why and probes == []  # no login: the network is not even tried
    monkeypatch.setenv(trackers.ENV[tracker]["key"], "not-a-real-key")
    answers.append(False)
    assert trackers.choose_mode(tracker, "auto") == ("offline", f"{trackers.api_host(tracker)} does not answer")
    answers.append(True)
    assert trackers.choose_mode(tracker, "auto")[0] == "online" and len(probes) == 2
    monkeypatch.setenv(trackers.ENV[tracker]["mode"], "offline")  # set by hand: respected
    assert trackers.choose_mode(tracker, "auto") == ("offline", f"{trackers.ENV[tracker]['mode']} is set")
    assert trackers.choose_mode(tracker, "online") == ("online", "requested")


def test_a_saved_login_counts(clean_env, tmp_path):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (home / ".netrc").chmod(0o600)
    assert trackers.has_login("wandb") and not trackers.has_login("swanlab")


def test_a_tracker_that_is_not_installed_is_refused_before_anything_loads(monkeypatch):
    monkeypatch.setattr(tracking, "installed", lambda name: name != "swanlab")
    with pytest.raises(SystemExit, match="--report_to swanlab: not installed. pip install -r requirements/tracking"):
        parse_args(PT.types, ["--output_dir", "out", "--report_to", "swanlab"])


def test_all_names_the_installed_trackers_so_that_they_are_set_up():
    args, training = parse_args(PT.types, ["--output_dir", "out", "--report_to", "all"])
    assert {"tensorboard", "wandb", "swanlab"} <= set(training.report_to) and training.run_name == "out"


def test_tensorboard_stays_what_the_recipes_report_to():
    recipes = [yaml.safe_load(path.read_text()) for path in sorted((ROOT / "configs").glob("*.yaml"))]
    reports = [recipe["report_to"] for recipe in recipes if "report_to" in recipe]
    assert len(reports) >= 8 and set(reports) == {"tensorboard"}
