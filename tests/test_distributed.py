"""Scale-out on the real engines: `accelerate launch` with DeepSpeed ZeRO-2/3, 2 CPU processes.

Each stage runs unchanged under the launcher; its checkpoint must load with plain from_pretrained in a
fresh process (no DeepSpeed) and generate.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import MINI_DATA, ROOT, TINY_SHAPE

ZERO2 = ROOT / "configs" / "accelerate" / "cpu_zero2.yaml"
ZERO3 = ROOT / "configs" / "accelerate" / "cpu_zero3.yaml"
COMMON = ["--report_to", "none", "--logging_steps", "1", "--save_strategy", "no"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, config, *args: str, processes: int = 2) -> None:
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd = [*accelerate, "--config_file", str(config), "--num_processes", str(processes),
           "--main_process_port", str(free_port()), str(ROOT / script), *args]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"{script} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")


def history(run_dir) -> list[dict]:
    return json.loads((run_dir / "trainer_state.json").read_text())["log_history"]


def check_run(run_dir, falling: bool = True) -> None:
    losses = [h["loss"] for h in history(run_dir) if "loss" in h]
    assert losses and all(math.isfinite(v) for v in losses)
    if falling:
        assert losses[-1] < losses[0]
    code = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]);"
        "ids = t('hello', return_tensors='pt')['input_ids'];"
        "out = m.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False);"
        "assert out.shape[1] == ids.shape[1] + 4; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def pt_args(tmp_path, tokenizer_dir, out: str, *extra: str) -> list[str]:
    return [
        "--data_dir", str(MINI_DATA / "pt"), "--tokenizer_name_or_path", str(tokenizer_dir), *TINY_SHAPE,
        "--vocab_size", "1024", "--block_size", "64", "--cache_dir", str(tmp_path / "cache"),
        "--output_dir", str(tmp_path / out), "--per_device_train_batch_size", "4", "--learning_rate", "5e-3",
        "--num_proc", "1", *COMMON, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def pt_zero2(tmp_path_factory, small_tokenizer_dir):
    tmp = tmp_path_factory.mktemp("ds_pt")
    launch("mini_qwen_pt.py", ZERO2, *pt_args(tmp, small_tokenizer_dir, "pt", "--max_steps", "10"))
    return tmp


def test_pt_zero2(pt_zero2):
    check_run(pt_zero2 / "pt")
    info = json.loads((pt_zero2 / "pt" / "run_info.json").read_text())
    assert info["global_batch_size"] == 4 * 1 * 2


def test_pt_zero3(tmp_path, small_tokenizer_dir):
    launch("mini_qwen_pt.py", ZERO3, *pt_args(tmp_path, small_tokenizer_dir, "pt", "--max_steps", "10"))
    check_run(tmp_path / "pt")


def test_two_processes_equal_one_with_double_accumulation(tmp_path, small_tokenizer_dir):
    epoch = ["--num_train_epochs", "1", "--max_steps", "-1"]
    launch("mini_qwen_pt.py", ZERO2, *pt_args(tmp_path, small_tokenizer_dir, "two", *epoch))
    launch("mini_qwen_pt.py", ZERO2, *pt_args(tmp_path, small_tokenizer_dir, "one", *epoch,
           "--gradient_accumulation_steps", "2"), processes=1)  # fmt: skip
    two, one = (json.loads((tmp_path / d / "run_info.json").read_text()) for d in ("two", "one"))
    assert two["global_batch_size"] == one["global_batch_size"] == 8
    steps = [json.loads((tmp_path / d / "trainer_state.json").read_text())["max_steps"] for d in ("two", "one")]
    assert steps[0] == steps[1] > 0


def test_resume_under_deepspeed(tmp_path, small_tokenizer_dir):
    save = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4"]
    launch("mini_qwen_pt.py", ZERO2, *pt_args(tmp_path, small_tokenizer_dir, "a", *save))
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "checkpoint-4", tmp_path / "b" / "checkpoint-4")
    launch("mini_qwen_pt.py", ZERO2, *pt_args(tmp_path, small_tokenizer_dir, "b", *save,
           "--resume_from_checkpoint", "auto"))  # fmt: skip
    full = [h["loss"] for h in history(tmp_path / "a") if "loss" in h and h["step"] > 4]
    resumed = [h["loss"] for h in history(tmp_path / "b") if "loss" in h and h["step"] > 4]
    assert len(resumed) == 4 and resumed == pytest.approx(full, rel=1e-4)


def test_sft_and_dpo_zero2(tmp_path, pt_zero2):
    launch("mini_qwen_sft.py", ZERO2, "--model_name_or_path", str(pt_zero2 / "pt"), "--data_dir",
           str(MINI_DATA / "sft"), "--output_dir", str(tmp_path / "sft"), "--cache_dir", str(tmp_path / "cache"),
           "--max_length", "256", "--max_steps", "6", "--per_device_train_batch_size", "2", "--learning_rate", "5e-3",
           "--activation_checkpointing", "false", *COMMON)  # fmt: skip
    check_run(tmp_path / "sft")
    # DPO: TRL builds the reference from the same path and prepares it for DeepSpeed itself.
    launch("mini_qwen_dpo.py", ZERO2, "--model_name_or_path", str(tmp_path / "sft"), "--data_dir",
           str(MINI_DATA / "dpo"), "--output_dir", str(tmp_path / "dpo"), "--max_length", "192",
           "--max_prompt_length", "64", "--holdout", "4", "--max_steps", "4", "--per_device_train_batch_size", "2",
           "--learning_rate", "1e-3", "--activation_checkpointing", "false", *COMMON)  # fmt: skip
    check_run(tmp_path / "dpo", falling=False)
    assert any("rewards/accuracies" in h for h in history(tmp_path / "dpo"))
    assert (tmp_path / "dpo" / "preference_report.json").is_file()
