"""Scale-out on the real engines: `accelerate launch` with DeepSpeed ZeRO-2/3 on 2 CPU processes, and the
README's multi-node command as two machines of one process each on 127.0.0.1.

Each stage runs unchanged under the launcher; its checkpoint must load with plain from_pretrained in a fresh
process (no DeepSpeed) and generate; more processes (or machines) with the same global batch give the same
losses as one process with gradient accumulation.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import MINI_DATA, ROOT, TINY_SHAPE
from utils.train.checkpointing import mark_complete

ZERO2 = ROOT / "configs" / "accelerate" / "cpu_zero2.yaml"
ZERO3 = ROOT / "configs" / "accelerate" / "cpu_zero3.yaml"
MULTINODE = "configs/accelerate/multinode_zero2.yaml"
COMMON = ["--report_to", "none", "--logging_steps", "1", "--save_strategy", "no"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, config, *args: str, processes: int = 2, check: bool = True) -> subprocess.CompletedProcess:
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    cmd = [
        *accelerate,
        "--config_file",
        str(config),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
        str(ROOT / script),
        *args,
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed:\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}")
    return result


def history(run_dir) -> list[dict]:
    return json.loads((run_dir / "trainer_state.json").read_text())["log_history"]


def losses(run_dir) -> list[float]:
    return [h["loss"] for h in history(run_dir) if "loss" in h]


def check_run(run_dir, falling: bool = True) -> None:
    values = losses(run_dir)
    assert values and all(math.isfinite(v) for v in values)
    if falling:
        assert values[-1] < values[0]
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
        "--data_dir",
        str(MINI_DATA / "pt"),
        "--tokenizer_name_or_path",
        str(tokenizer_dir),
        *TINY_SHAPE,
        "--vocab_size",
        "1024",
        "--block_size",
        "64",
        "--cache_dir",
        str(tmp_path / "cache"),
        "--output_dir",
        str(tmp_path / out),
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "5e-3",
        "--num_proc",
        "1",
        *COMMON,
        *extra,
    ]


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


def test_more_processes_or_machines_give_the_losses_of_one_process(tmp_path, small_tokenizer_dir):
    """Same global batch (2 per device): 1 process x 2 accumulation, 2 processes on one machine, and the
    README's multi-node command run as machines 0 and 1 (one process each) on 127.0.0.1."""
    # run.sh passes a recipe (CONFIG): the same one for the direct launches.
    steps = ["--max_steps", "4", "--per_device_train_batch_size", "2", "--warmup_steps", "0"]
    recipe = ["--config", "configs/pt_demo.yaml"]
    launch(
        "mini_qwen_pt.py",
        ZERO2,
        *recipe,
        *pt_args(tmp_path, small_tokenizer_dir, "one", *steps, "--gradient_accumulation_steps", "2"),
        processes=1,
    )
    launch("mini_qwen_pt.py", ZERO2, *recipe, *pt_args(tmp_path, small_tokenizer_dir, "two", *steps))
    env = {
        **os.environ,
        "VENV": sys.prefix,
        "NUM_MACHINES": "2",
        "NUM_GPUS": "1",
        "MAIN_PROCESS_IP": "127.0.0.1",
        "MAIN_PROCESS_PORT": str(free_port()),
        "ACCELERATE_CONFIG": MULTINODE,
        "CONFIG": "configs/pt_demo.yaml",
    }
    command = ["bash", "run.sh", "pt", *pt_args(tmp_path, small_tokenizer_dir, "nodes", *steps)]
    machines = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env={**env, "MACHINE_RANK": str(rank)},
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in (0, 1)
    ]
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    one = losses(tmp_path / "one")
    assert len(one) == 4 and losses(tmp_path / "two") == pytest.approx(one, rel=1e-5)
    assert losses(tmp_path / "nodes") == pytest.approx(one, rel=1e-5)
    info = json.loads((tmp_path / "nodes" / "run_info.json").read_text())
    assert (
        info["global_batch_size"] == 4 and info["arguments"]["TrainingArguments"]["gradient_accumulation_steps"] == 1
    )


@pytest.fixture(scope="module")
def zero2_checkpoint(tmp_path_factory, small_tokenizer_dir):
    """An 8-step ZeRO-2 run that saved at steps 4 and 8."""
    tmp = tmp_path_factory.mktemp("ds_resume")
    save = ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4"]
    launch("mini_qwen_pt.py", ZERO2, *pt_args(tmp, small_tokenizer_dir, "a", *save))
    return tmp, save


def test_resume_under_deepspeed(tmp_path, small_tokenizer_dir, zero2_checkpoint):
    source, save = zero2_checkpoint
    (tmp_path / "b").mkdir()
    shutil.copytree(source / "a" / "checkpoint-4", tmp_path / "b" / "checkpoint-4")
    launch(
        "mini_qwen_pt.py",
        ZERO2,
        *pt_args(tmp_path, small_tokenizer_dir, "b", *save, "--cache_dir", str(source / "cache"), "--resume", "auto"),
    )
    full = [h["loss"] for h in history(source / "a") if "loss" in h and h["step"] > 4]
    resumed = [h["loss"] for h in history(tmp_path / "b") if "loss" in h and h["step"] > 4]
    assert len(resumed) == 4 and resumed == pytest.approx(full, rel=1e-4)


class Payload:
    """Creates a file when unpickled: what an object placed in someone else's checkpoint could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_malicious_zero_checkpoint_is_refused_on_every_rank(tmp_path, small_tokenizer_dir, zero2_checkpoint):
    source, save = zero2_checkpoint
    (tmp_path / "b").mkdir()
    checkpoint = tmp_path / "b" / "checkpoint-4"
    shutil.copytree(source / "a" / "checkpoint-4", checkpoint)
    states = checkpoint / "global_step4" / "mp_rank_00_model_states.pt"
    content = torch.load(states, weights_only=False)  # our own file, trusted here
    content["ds_version"] = Payload(str(tmp_path / "code_ran"))
    torch.save(content, states)
    mark_complete(checkpoint, 4)  # a consistent marker, as someone else's folder would bring
    result = launch(
        "mini_qwen_pt.py", ZERO2, *pt_args(tmp_path, small_tokenizer_dir, "b", *save, "--resume", "auto"), check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0 and not (tmp_path / "code_ran").exists()
    for rank in (0, 1):
        assert f"[rank{rank}]: RuntimeError: Refusing to resume from {checkpoint}" in output, output[-4000:]
    assert "mp_rank_00_model_states.pt holds more than tensors and known types" in output


def test_sft_and_dpo_zero2(tmp_path, pt_zero2):
    launch(
        "mini_qwen_sft.py",
        ZERO2,
        "--model_name_or_path",
        str(pt_zero2 / "pt"),
        "--data_dir",
        str(MINI_DATA / "sft"),
        "--output_dir",
        str(tmp_path / "sft"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--max_length",
        "256",
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "5e-3",
        "--activation_checkpointing",
        "false",
        *COMMON,
    )
    check_run(tmp_path / "sft")
    # DPO: TRL builds the reference from the same path and prepares it for DeepSpeed itself.
    launch(
        "mini_qwen_dpo.py",
        ZERO2,
        "--model_name_or_path",
        str(tmp_path / "sft"),
        "--data_dir",
        str(MINI_DATA / "dpo"),
        "--output_dir",
        str(tmp_path / "dpo"),
        "--max_length",
        "192",
        "--max_prompt_length",
        "64",
        "--holdout",
        "4",
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "1e-3",
        "--activation_checkpointing",
        "false",
        *COMMON,
    )
    check_run(tmp_path / "dpo", falling=False)
    assert any("rewards/accuracies" in h for h in history(tmp_path / "dpo"))
    assert (tmp_path / "dpo" / "preference_report.json").is_file()


@pytest.mark.parametrize(
    "stage, recipe, hardware, launcher, expected",
    [
        ("pt", "configs/pt_full.yaml", "a100", ["--config_file", str(ZERO2)], "bf16"),
        ("dpo", "configs/dpo_demo.yaml", "cpu", ["--config_file", str(ZERO2)], "no"),
        # DeepSpeed has no fp16 on CPU: the T4 recipe's two processes run on plain DDP (what accelerate launch
        # --multi_gpu starts; the engine stays on the CPU through the recipe's --use_cpu).
        (
            "sft",
            "configs/sft_t4_demo.yaml",
            "t4",
            ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no"],
            "fp16",
        ),
    ],
)
def test_two_processes_train_in_the_precision_of_the_recipe(tmp_path, stage, recipe, hardware, launcher, expected):
    """The engine probe of test_hardware, under `accelerate launch` with 2 processes."""
    out = tmp_path / "facts.json"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launcher,
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        str(ROOT / "benchmarks" / "engine_probe.py"),
        stage,
        recipe,
        hardware,
        str(out),
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    facts = json.loads(out.read_text())
    assert facts["processes"] == 2 and facts["mixed_precision"] == expected
    assert facts["forward_dtype"] == ("torch.bfloat16" if expected == "bf16" else "torch.float32")
    assert facts["deepspeed"] == ("--config_file" in launcher)


@pytest.mark.parametrize("outcome", ["fail", "succeed"])
def test_a_failure_on_the_main_process_ends_every_process(outcome):
    """After training, a step only the main process runs (DPO's held-out report) must not leave the others waiting
    in a barrier when it fails: they learn of it in one collective and end too, within seconds."""
    script = ROOT / "tests" / "helpers" / "main_process_step.py"
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "--master_port", str(free_port()), str(script), outcome],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = result.stdout
    if outcome == "fail":
        assert result.returncode != 0
        assert "rank 0: ValueError: the report broke" in out
        assert "rank 1: RuntimeError: the held-out report failed on the main process" in out
    else:
        assert result.returncode == 0, result.stderr[-2000:]
        assert "rank 0: report written" in out and "rank 1: None" in out
