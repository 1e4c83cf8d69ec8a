"""Preemption, crashes and full disks lose at most the work since the last save, never a good checkpoint."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import signal
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
from trl import DPOConfig, SFTConfig

import mini_qwen_dpo
import mini_qwen_pt
import mini_qwen_sft
from tests.helpers import MINI_DATA, ROOT, TINY_SHAPE
from utils.train.args import parse_args
from utils.train.checkpointing import (
    COMPLETE_MARKER,
    checkpoint_problem,
    find_resume_checkpoint,
    mark_complete,
    rotate,
)

Stage = namedtuple("Stage", "script module types")
PT = Stage("mini_qwen_pt.py", mini_qwen_pt, (mini_qwen_pt.PTArguments, TrainingArguments))
SFT = Stage("mini_qwen_sft.py", mini_qwen_sft, (mini_qwen_sft.SFTArguments, SFTConfig))
DPO = Stage("mini_qwen_dpo.py", mini_qwen_dpo, (mini_qwen_dpo.DPOArguments, DPOConfig))
COMMON = ["--report_to", "none", "--logging_steps", "1", "--save_strategy", "no", "--seed", "7"]
# LoRA with dropout: the resumed run must restore the adapters, their optimizer state and the RNG.
LORA_RESUME = ["--use_peft", "true", "--lora_r", "4", "--lora_dropout", "0.1"]


def pt_argv(tmp_path, tokenizer_dir, out="pt", steps="12") -> list[str]:
    return [
        "--data_dir",
        str(MINI_DATA / "pt"),
        "--tokenizer_name_or_path",
        str(tokenizer_dir),
        *TINY_SHAPE,
        "--vocab_size",
        "1024",
        "--block_size",
        "128",
        "--cache_dir",
        str(tmp_path / "cache"),
        "--output_dir",
        str(tmp_path / out),
        "--max_steps",
        steps,
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "3e-3",
        "--num_proc",
        "1",
        *COMMON,
    ]


def sft_argv(tmp_path, model_dir, out="sft", steps="12") -> list[str]:
    return [
        "--model_name_or_path",
        str(model_dir),
        "--data_dir",
        str(MINI_DATA / "sft"),
        "--output_dir",
        str(tmp_path / out),
        "--cache_dir",
        str(tmp_path / "cache_sft"),
        "--max_length",
        "128",
        "--max_steps",
        steps,
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "3e-3",
        "--activation_checkpointing",
        "false",
        *COMMON,
    ]


def dpo_argv(tmp_path, model_dir, out="dpo", steps="10") -> list[str]:
    return [
        "--model_name_or_path",
        str(model_dir),
        "--data_dir",
        str(MINI_DATA / "dpo"),
        "--output_dir",
        str(tmp_path / out),
        "--max_length",
        "160",
        "--max_prompt_length",
        "64",
        "--holdout",
        "0",
        "--max_steps",
        steps,
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "1e-3",
        "--activation_checkpointing",
        "false",
        *COMMON,
    ]


def run(stage: Stage, argv: list[str]):
    return stage.module.main(*parse_args(stage.types, argv))


def losses_after(run_dir: Path, step: int) -> list[float]:
    state = json.loads((run_dir / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h and h["step"] > step]


def sigterm_midway(stage: Stage, argv: list[str], after_losses: int = 3) -> tuple[int, str]:
    """Run a stage in a child process, SIGTERM it once it has logged a few losses; return (code, output)."""
    child = subprocess.Popen(
        [sys.executable, str(ROOT / stage.script), *argv],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seen, output = 0, []
    for line in child.stdout:
        output.append(line)
        seen += line.count("'loss'")
        if seen >= after_losses:
            child.send_signal(signal.SIGTERM)
            break
    output.append(child.stdout.read())
    return child.wait(timeout=300), "".join(output)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, small_tokenizer_dir):
    """A tiny PT checkpoint and an SFT checkpoint made from it, for the later stages."""
    tmp = tmp_path_factory.mktemp("ft_models")
    run(PT, pt_argv(tmp, small_tokenizer_dir, steps="10"))
    run(SFT, sft_argv(tmp, tmp / "pt", steps="10"))
    return tmp


@pytest.mark.parametrize("stage_name", ["pt", "sft", "dpo", "sft_lora", "dpo_lora"])
def test_sigterm_saves_and_resume_matches_uninterrupted(tmp_path, small_tokenizer_dir, tiny_models, stage_name):
    stage, make = {
        "pt": (PT, lambda out: pt_argv(tmp_path, small_tokenizer_dir, out)),
        "sft": (SFT, lambda out: sft_argv(tmp_path, tiny_models / "pt", out)),
        "dpo": (DPO, lambda out: dpo_argv(tmp_path, tiny_models / "sft", out)),
        "sft_lora": (SFT, lambda out: sft_argv(tmp_path, tiny_models / "pt", out) + LORA_RESUME),
        "dpo_lora": (DPO, lambda out: dpo_argv(tmp_path, tiny_models / "sft", out) + LORA_RESUME),
    }[stage_name]
    code, output = sigterm_midway(stage, make("stopped"))
    assert code == 143, output[-3000:]
    assert "Received SIGTERM" in output and "Resume with --resume auto" in output
    saved = find_resume_checkpoint(tmp_path / "stopped")
    assert saved is not None and (saved / COMPLETE_MARKER).is_file()
    step = int(saved.name.split("-")[1])
    assert 3 <= step < int(make("x")[make("x").index("--max_steps") + 1])
    assert not (tmp_path / "stopped" / "model.safetensors").exists()  # no final model: the run is not over
    if stage_name.endswith("_lora"):  # the checkpoint holds the adapters only
        assert (saved / "adapter_model.safetensors").is_file() and not (saved / "model.safetensors").exists()

    run(stage, [*make("stopped"), "--resume", "auto"])
    run(stage, make("straight"))
    resumed, straight = losses_after(tmp_path / "stopped", step), losses_after(tmp_path / "straight", step)
    assert len(resumed) == len(straight) > 0
    assert resumed == pytest.approx(straight, rel=1e-4, abs=1e-6)


def two_checkpoint_argv(cache_root: Path, out: Path, tokenizer_dir) -> list[str]:
    return pt_argv(cache_root, tokenizer_dir, steps="8") + [
        "--save_strategy",
        "steps",
        "--save_steps",
        "4",
        "--output_dir",
        str(out),
    ]


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory, small_tokenizer_dir):
    """A finished 8-step PT run with complete checkpoints at steps 4 and 8, trained once per module."""
    root = tmp_path_factory.mktemp("saved_run")
    run(PT, two_checkpoint_argv(root, root / "pt", small_tokenizer_dir))
    return root


@pytest.fixture()
def two_checkpoints(tmp_path, saved_run, small_tokenizer_dir):
    """A private copy of ``saved_run`` and the arguments that made it (pointing at the copy)."""
    shutil.copytree(saved_run / "pt", tmp_path / "pt")
    return tmp_path / "pt", two_checkpoint_argv(saved_run, tmp_path / "pt", small_tokenizer_dir)


def test_half_written_checkpoint_is_skipped_with_a_warning(two_checkpoints, caplog):
    out, argv = two_checkpoints
    newest = out / "checkpoint-8"
    (newest / COMPLETE_MARKER).unlink()  # as if SIGKILL hit during the save
    (newest / "model.safetensors").write_bytes(b"half")
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(out) == out / "checkpoint-4"
    assert "Skipping checkpoint" in caplog.text and "checkpoint-8" in caplog.text and "incomplete" in caplog.text
    # A marker with a replaced trainer_state.json is not trusted either, nor one of the same size that is broken.
    state = out / "checkpoint-4" / "trainer_state.json"
    state.write_text("{not json")
    assert "trainer_state.json has 9 bytes" in checkpoint_problem(out / "checkpoint-4")
    state.write_text(
        "{"
        + "x" * (json.loads((out / "checkpoint-4" / COMPLETE_MARKER).read_text())["files"]["trainer_state.json"] - 1)
    )
    assert "unreadable trainer_state.json" in checkpoint_problem(out / "checkpoint-4")


def test_resume_auto_uses_previous_complete_checkpoint(two_checkpoints, caplog):
    out, argv = two_checkpoints
    (out / "checkpoint-8" / COMPLETE_MARKER).unlink(missing_ok=True)
    with caplog.at_level(logging.INFO):
        trainer = run(PT, [*argv, "--resume", "auto"])
    assert "Resuming from" in caplog.text and "checkpoint-4" in caplog.text
    assert trainer.state.global_step == 8


def test_disk_full_during_save_keeps_the_previous_checkpoint(tmp_path, small_tokenizer_dir, monkeypatch):
    real = Trainer._save_rng_state

    def full_disk(self, output_dir):
        if self.state.global_step == 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", full_disk)
    argv = pt_argv(tmp_path, small_tokenizer_dir, steps="8") + ["--save_strategy", "steps", "--save_steps", "4"]
    with pytest.raises(RuntimeError, match=r"Disk full while saving checkpoint-8 .*checkpoint-4 is intact"):
        run(PT, argv)
    assert find_resume_checkpoint(tmp_path / "pt") == tmp_path / "pt" / "checkpoint-4"
    AutoModelForCausalLM.from_pretrained(tmp_path / "pt" / "checkpoint-4")


def test_rotation_never_deletes_the_newest_complete_checkpoint(tmp_path):
    for step, complete in [(2, True), (4, True), (6, False)]:
        path = tmp_path / f"checkpoint-{step}"
        path.mkdir()
        (path / "trainer_state.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"x")
        if complete:
            mark_complete(path, step)
    rotate(tmp_path, limit=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]


def test_time_based_checkpoints(tmp_path, small_tokenizer_dir):
    run(PT, pt_argv(tmp_path, small_tokenizer_dir, steps="3") + ["--save_every_minutes", "1e-9"])
    assert sorted(p.name for p in (tmp_path / "pt").glob("checkpoint-*")) == [f"checkpoint-{i}" for i in (1, 2, 3)]


def test_output_dir_of_a_different_run_is_protected(tmp_path, small_tokenizer_dir):
    argv = pt_argv(tmp_path, small_tokenizer_dir, steps="2")
    run(PT, argv)
    run(PT, argv)  # the same run again is fine
    with pytest.raises(SystemExit, match="already holds a pt run with other learning_rate"):
        run(PT, [*argv, "--learning_rate", "1e-3"])
    run(PT, [*argv, "--learning_rate", "1e-3", "--overwrite_output_dir", "true"])


def test_low_disk_space_warns(tmp_path, small_tokenizer_dir, monkeypatch, caplog):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with caplog.at_level(logging.WARNING):
        run(PT, pt_argv(tmp_path, small_tokenizer_dir, steps="1"))
    assert "GB free in" in caplog.text and "two must fit" in caplog.text


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt"])
def test_a_truncated_file_falls_back_to_the_previous_checkpoint(two_checkpoints, caplog, name):
    out, argv = two_checkpoints
    file = out / "checkpoint-8" / name
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # complete marker, broken file
    with caplog.at_level(logging.WARNING):
        trainer = run(PT, [*argv, "--resume", "auto"])
    assert f"Skipping checkpoint {out / 'checkpoint-8'}: {name} has" in caplog.text and "truncated" in caplog.text
    assert trainer.state.global_step == 8 and checkpoint_problem(out / "checkpoint-8") is None  # saved again


def test_resume_refuses_other_settings_unless_accepted(two_checkpoints, caplog):
    out, argv = two_checkpoints
    with pytest.raises(SystemExit, match=r"other settings: block_size: 128 -> 64; learning_rate: 0.003 -> 0.001"):
        run(PT, [*argv, "--resume", "auto", "--block_size", "64", "--learning_rate", "1e-3"])
    with caplog.at_level(logging.WARNING):
        trainer = run(
            PT,
            [
                *argv,
                "--resume",
                "auto",
                "--learning_rate",
                "1e-3",
                "--resume_with_changes",
                "true",
                "--max_steps",
                "10",
            ],
        )
    assert "Resuming with a changed setting (accepted): learning_rate: 0.003 -> 0.001" in caplog.text
    assert trainer.state.global_step == 10


def test_overwrite_removes_the_other_runs_checkpoints(two_checkpoints):
    """Otherwise rotation would delete this run's checkpoint (the other run's have higher steps) and
    --resume auto would later continue the other run."""
    out, argv = two_checkpoints
    ours = [a if a != "3e-3" else "1e-3" for a in argv] + [
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--keep_checkpoints",
        "1",
    ]
    run(PT, [*ours, "--overwrite_output_dir", "true"])
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-4"]
    info = json.loads((out / "checkpoint-4" / "run_info.json").read_text())
    assert info["arguments"]["TrainingArguments"]["learning_rate"] == 1e-3
    assert find_resume_checkpoint(out) == out / "checkpoint-4"


def test_a_run_that_failed_before_training_does_not_lock_its_folder(tmp_path, small_tokenizer_dir):
    argv = pt_argv(tmp_path, small_tokenizer_dir, steps="2")
    (tmp_path / "pt").mkdir()
    (tmp_path / "pt" / "run_info.json").write_text(json.dumps({"stage": "pt", "arguments": {"A": {"block_size": 9}}}))
    trainer = run(PT, [*argv, "--resume", "auto"])  # no checkpoint: a fresh start, not a refusal
    assert trainer.state.global_step == 2


def test_leftovers_of_an_interrupted_save_are_removed(two_checkpoints):
    out, argv = two_checkpoints
    (out / "checkpoint-8" / COMPLETE_MARKER).unlink()  # killed during the save of step 8
    (out / "checkpoint-8" / "model.safetensors.tmp3k2j").write_bytes(b"partial")
    run(PT, [*argv, "--resume", "auto"])
    assert not list(out.glob("checkpoint-8/*.tmp*")) and checkpoint_problem(out / "checkpoint-8") is None
