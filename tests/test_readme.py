"""Every shell command the READMEs give a user, run as a user runs it: from the root of a copy of the repository, in
order, through run.sh (which makes its own environment; here the tests' one is shared through VENV). A command that
cannot run here (it needs a GPU, the network or days) is listed with its reason; a command that is neither run nor
listed fails the test, so a README cannot promise what nothing checks.

Long commands run a shortened variant with the same entry point (fewer steps, the demo's checkpoints where the README
names the full run's, the experiments' ``ci`` scale); servers are started, asked for their health and stopped.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers import ROOT

READMES = ("README.md", "README_en.md")
SKIP, RUN, SERVE = "skip", "run", "serve"
# README command (comments stripped) -> (what the test does, the variant it runs or why it does not run).
# Order matters: later commands use what earlier ones wrote (the demo's checkpoints first).
COMMANDS: dict[str, tuple[str, str]] = {
    "bash run.sh demo": (RUN, "bash run.sh demo --max_steps 20 --logging_steps 5"),
    "bash run.sh test": (SKIP, "the test suite itself (CI runs it through .ci/run)"),
    "python demo/demo_pt.py": (
        RUN,
        "{bare_python} demo/demo_pt.py --recipes cpu --max_steps 3 --logging_steps 1 --output_dir results/quick/pt "
        "--report_to none",
    ),
    "bash run.sh plan all --num_gpus 6 --gpu h800": (RUN, "bash run.sh plan all --num_gpus 6 --gpu h800 --no_memory"),
    "bash run.sh gpu-check": (RUN, "GPU_CHECK_DIR=results/gpu_check bash run.sh gpu-check --dry_run"),
    "bash run.sh demo --with_grpo": (
        RUN,
        "bash run.sh demo --with_grpo --max_steps 6 --logging_steps 2 --output_root results/demo_grpo",
    ),
    "bash prepare.sh --stage grpo": (SKIP, "downloads GSM8K and GSM8K_zh from the Hugging Face Hub (network)"),
    "NUM_GPUS=6 bash run.sh sft --reasoning_data_dir data/grpo": (SKIP, "needs 6 GPUs, the downloaded data and PT"),
    "NUM_GPUS=6 bash run.sh grpo": (SKIP, "needs 6 GPUs and the full run's DPO checkpoint"),
    "bash run.sh eval --model_name_or_path results/grpo --enable_thinking true": (
        RUN,
        "echo /quit | bash run.sh eval --model_name_or_path results/demo_grpo/grpo --enable_thinking true",
    ),
    "bash run.sh bench --model_name_or_path results/dpo results/grpo --tasks gsm8k gsm8k_zh --enable_thinking true "
    "--num_fewshot 0 --max_gen_toks 512": (
        RUN,
        "bash run.sh bench --model_name_or_path results/demo_grpo/dpo results/demo_grpo/grpo --tasks gsm8k gsm8k_zh "
        "--enable_thinking true --num_fewshot 0 --max_gen_toks 16 --data_dir mini_data/bench --limit 2 "
        "--output_dir results/demo_grpo/bench",
    ),
    ".venv/bin/python -m tools.make_math_problems --output_dir /tmp/problems": (
        RUN,
        "$VENV/bin/python -m tools.make_math_problems --output_dir results/problems",
    ),
    "bash prepare.sh --help": (RUN, ""),
    "bash prepare.sh": (SKIP, "downloads about 53 GB from ModelScope (network)"),
    "bash run.sh pt": (SKIP, "the full recipe: a 1B model on 16B tokens, days on GPUs"),
    "NUM_GPUS=6 bash run.sh pt": (SKIP, "needs 6 GPUs and the downloaded data"),
    "NUM_GPUS=6 bash run.sh sft": (SKIP, "needs 6 GPUs, the downloaded data and a PT run"),
    "NUM_GPUS=6 bash run.sh dpo": (SKIP, "needs 6 GPUs, the downloaded data and an SFT run"),
    "bash run.sh curate": (SKIP, "curates the downloaded corpus in data/pt; the bundled-data command below runs it"),
    "bash run.sh pt --data_dir data/curated/pt": (SKIP, "the full recipe on the curated corpus (GPUs, days)"),
    "CONFIG=configs/curate_sft.yaml bash run.sh curate": (SKIP, "curates the downloaded SFT data in data/sft"),
    "bash run.sh curate --input_dir mini_data/pt --bench_dir mini_data/bench --output_dir results/curate/mini_pt "
    "--work_dir results/curate/mini_pt_work": (RUN, ""),
    ".venv/bin/python -m pip install -r requirements/tracking.txt": (
        RUN,
        "$VENV/bin/python -m pip install -q -r requirements/tracking.txt",
    ),
    "bash run.sh sft --report_to tensorboard,swanlab": (
        RUN,
        "CONFIG=configs/sft_demo.yaml bash run.sh sft --model_name_or_path results/demo/pt --output_dir "
        "results/track/sft --max_steps 2 --report_to tensorboard,swanlab --tracking_mode offline",
    ),
    "CONFIG=configs/sft_lora_24gb.yaml bash run.sh sft": (SKIP, "needs a 24 GB GPU and the full SFT data"),
    "CONFIG=configs/dpo_lora_24gb.yaml bash run.sh dpo": (SKIP, "needs a 24 GB GPU and the full DPO data"),
    "CONFIG=configs/sft_lora_16gb.yaml bash run.sh sft --load_in_4bit true": (
        SKIP,
        "QLoRA needs a CUDA GPU with bitsandbytes",
    ),
    "bash run.sh merge results/sft_lora/checkpoint-500": (
        RUN,
        "CONFIG=configs/sft_demo.yaml bash run.sh sft --model_name_or_path results/demo/pt --output_dir "
        "results/demo/sft_lora --use_peft true --max_steps 3 --save_strategy steps --save_steps 3 && "
        "bash run.sh merge results/demo/sft_lora/checkpoint-3",
    ),
    ".venv/bin/python -m benchmarks.memory --config configs/sft_lora_16gb.yaml --shape 1b": (
        RUN,
        "$VENV/bin/python -m benchmarks.memory --config configs/sft_lora_16gb.yaml --shape 1b",
    ),
    "bash run.sh eval --model_name_or_path results/dpo": (
        RUN,
        "echo /quit | bash run.sh eval --model_name_or_path results/demo/dpo",
    ),
    ".venv/bin/python -c \"from transformers import pipeline; print(pipeline('text-generation', 'results/dpo')"
    "([{'role': 'user', 'content': '你好'}]))\"": (
        RUN,
        "$VENV/bin/python -c \"from transformers import pipeline; print(pipeline('text-generation', "
        "'results/demo/dpo')([{'role': 'user', 'content': '你好'}], max_new_tokens=8))\"",
    ),
    "bash run.sh serve --model_name_or_path results/dpo": (
        SERVE,
        "bash run.sh serve --model_name_or_path results/demo/dpo --port {port} || /health",
    ),
    "bash run.sh web --model_name_or_path results/dpo": (
        SERVE,
        "bash run.sh web --model_name_or_path results/demo/dpo --port {port2} --web_port {port} || /",
    ),
    "bash run.sh export --gguf results/dpo": (RUN, "bash run.sh export --gguf results/demo/dpo"),
    "ollama create mini-qwen -f results/dpo/gguf/Modelfile && ollama run mini-qwen": (
        SKIP,
        "needs Ollama, which is not installed here (the export's round trip is tested through transformers)",
    ),
    "bash run.sh eval --model_name_or_path results/sft": (
        RUN,
        "echo /quit | bash run.sh eval --model_name_or_path results/demo/sft",
    ),
    "bash run.sh eval --model_name_or_path results/pt results/sft results/dpo --prompts mini_data/eval_prompts.jsonl "
    "--eval_data data/pt/news_media --eval_chat_data data/sft/Gen --eval_holdout 0.001 --output_dir results/eval": (
        RUN,
        "bash run.sh eval --model_name_or_path results/demo/pt results/demo/sft results/demo/dpo --prompts "
        "mini_data/eval_prompts.jsonl --eval_data mini_data/pt --eval_chat_data mini_data/sft --eval_holdout 0.1 "
        "--max_new_tokens 16 --output_dir results/eval",
    ),
    "bash prepare.sh --stage bench": (SKIP, "downloads the benchmarks from the Hugging Face Hub (network)"),
    "bash run.sh bench --model_name_or_path results/pt results/sft results/dpo": (
        SKIP,
        "needs the downloaded benchmarks and the full run's checkpoints; the next command runs it on the fixtures",
    ),
    "bash run.sh bench --model_name_or_path results/demo/pt results/demo/sft results/demo/dpo --data_dir "
    "mini_data/bench --output_dir results/demo/bench": (RUN, ""),
    "bash run.sh experiment packing": (RUN, "bash run.sh experiment packing --scale ci"),
    "bash run.sh experiment bilingual": (
        SKIP,
        "the same run.sh mode as packing; tests/stages/test_experiments.py runs this study at the ci scale",
    ),
    "bash run.sh experiment scaling": (
        SKIP,
        "the same run.sh mode as packing; tests/stages/test_experiments.py runs this study at the ci scale",
    ),
    "bash run.sh experiment sft_epochs": (
        SKIP,
        "the same run.sh mode as packing; tests/stages/test_experiments.py runs this study at the ci scale",
    ),
    "bash run.sh experiment dpo_lr": (
        SKIP,
        "the same run.sh mode as packing; tests/stages/test_experiments.py runs this study at the ci scale",
    ),
    "bash run.sh plot results/a results/b --x tokens --output runs.png": (
        RUN,
        "bash run.sh plot results/demo/pt results/quick/pt --x tokens --output runs.png",
    ),
}


def readme_commands(name: str) -> list[str]:
    """The commands of the README's ```bash blocks: continuation lines joined, comments and blank lines dropped."""
    text = (ROOT / name).read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def test_both_readmes_give_the_same_commands_in_the_same_sections():
    """README.md (Chinese) and README_en.md (English): the same headings' levels in the same order, the same
    commands (comments are translated)."""
    levels = [[len(h) for h in re.findall(r"^(#+) ", (ROOT / n).read_text(encoding="utf-8"), re.M)] for n in READMES]
    assert levels[0] == levels[1] and len(levels[0]) >= 8
    assert readme_commands(READMES[0]) == readme_commands(READMES[1])


def test_every_readme_command_is_run_or_says_why_not():
    commands = readme_commands("README_en.md")
    unlisted = [c for c in commands if c not in COMMANDS]
    assert unlisted == [], "README commands the test neither runs nor lists with a reason (add them to COMMANDS)"
    stale = [c for c in COMMANDS if c not in commands]
    assert stale == [], "COMMANDS lists commands the README no longer has"
    assert all(reason for kind, reason in COMMANDS.values() if kind == SKIP)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def user_copy(tmp_path_factory):
    """A copy of the repository as a clone has it (tracked and untracked files git does not ignore), in which the
    commands run; the environment is the tests' own (VENV), as `bash run.sh` would have made it."""
    copy = tmp_path_factory.mktemp("user") / "mini_qwen"
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


def bare_python() -> str:
    """A Python without the project's packages, as on a fresh machine (upstream's quick start runs `python`)."""
    for candidate in ("python", "python3"):
        path = shutil.which(candidate, path="/usr/local/bin:/usr/bin:/bin")
        if path and subprocess.run([path, "-c", "import torch"], capture_output=True).returncode != 0:
            return path
    return "python3"


@pytest.mark.parametrize("command", [c for c, (kind, _) in COMMANDS.items() if kind != SKIP])
def test_readme_command_works(command, user_copy):
    kind, variant = COMMANDS[command]
    env = {**os.environ, "VENV": sys.prefix, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONPATH", None)
    if kind == RUN:
        line = (variant or command).replace("{bare_python}", bare_python())
        result = subprocess.run(
            ["bash", "-c", line], cwd=user_copy, env=env, capture_output=True, text=True, timeout=1200
        )
        assert result.returncode == 0, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        return
    line, path = variant.split(" || ")
    port, port2 = free_port(), free_port()
    server = subprocess.Popen(
        ["bash", "-c", line.format(port=port, port2=port2)],
        cwd=user_copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline, status = time.monotonic() + 600, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                    status = response.status
                    break
            except OSError:
                time.sleep(1)
        assert status == 200, f"{line}: not ready ({server.poll()})"
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            output = server.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            output = server.communicate()[0]
    assert "Traceback" not in output, output[-3000:]
