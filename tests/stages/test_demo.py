"""The demo pipeline end to end, shortened through the same overrides a user has (--max_steps)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from demo import demo_dpo, demo_pt, demo_sft, run_all
from tests.helpers import ROOT, TINY_SHAPE


def test_demo_pipeline(tmp_path, monkeypatch, capsys):
    summary = run_all.run(str(tmp_path / "demo"), max_steps=30, prompts=2, logging_steps=5, work_dir=str(tmp_path))
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file() and any((tmp_path / "cache").iterdir())
    out = capsys.readouterr().out
    host = socket.gethostname()
    for stage in ("pt", "sft", "dpo"):
        # Nothing in the folder a user would share names the machine (TensorBoard's files do: they live next to it).
        assert not [p for p in (tmp_path / "demo" / stage).rglob("*") if host in p.name]
        assert list((tmp_path / "demo" / "runs").glob(f"{stage}-*/events.out.tfevents.*"))
        values = summary["losses"][stage]
        assert len(values) >= 2 and values[-1] < values[0], (stage, values)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "demo" / stage)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "demo" / stage)
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": "你好"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        assert model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    rows = [json.loads(x) for x in (tmp_path / "demo" / "eval" / "generations.jsonl").read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["raw"] * 2 + ["chat"] * 4
    assert "PT loss: first" in out and "Demo finished in" in out and "| perplexity |" in out
    assert (tmp_path / "demo" / "dpo" / "preference_report.md").is_file()


def test_t4_recipes_chain_on_cpu_with_their_fallbacks(tmp_path, small_tokenizer_dir, caplog, monkeypatch):
    """The T4 recipe set runs PT -> SFT -> DPO as written (seq 128, precomputed DPO reference), shrunk to a tiny
    model with the small tokenizer here (test_args and test_hardware cover the recipes' 1B shape and Qwen
    tokenizer); on a CPU its fp16 and 8-bit AdamW fall back with one log line each."""
    import utils.train.hardware

    # A CPU without bitsandbytes, also on a machine that has a GPU or the package.
    monkeypatch.setattr(utils.train.hardware, "installed", lambda package: package != "bitsandbytes")
    root, steps = tmp_path / "t4", ["--max_steps", "3", "--logging_steps", "1", "--use_cpu", "true"]
    caplog.set_level(logging.INFO)
    small = ["--tokenizer_name_or_path", str(small_tokenizer_dir), "--vocab_size", "1024", *TINY_SHAPE]
    pt = demo_pt.run(["--output_dir", str(root / "pt"), "--cache_dir", str(tmp_path / "cache"), *small, *steps], "t4")
    assert pt.args.max_steps == 3 and pt.args.per_device_train_batch_size == 4 and pt.args.activation_checkpointing
    sft = demo_sft.run(
        [
            "--model_name_or_path",
            str(root / "pt"),
            "--output_dir",
            str(root / "sft"),
            "--cache_dir",
            str(tmp_path / "cache"),
            *steps,
        ],
        "t4",
    )
    assert sft.args.max_length == 128 and sft.args.activation_checkpointing
    dpo = demo_dpo.run(["--model_name_or_path", str(root / "sft"), "--output_dir", str(root / "dpo"), *steps], "t4")
    assert dpo.ref_model is None and "ref_chosen_logps" in dpo.train_dataset.column_names  # precomputed
    for trainer in (pt, sft, dpo):
        assert not trainer.args.fp16 and trainer.args.optim == "adamw_torch"
        assert [h["loss"] for h in trainer.state.log_history if "loss" in h]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("fp16 was requested but there is no GPU" in m for m in messages) == 3
    assert sum("bitsandbytes is not installed" in m for m in messages) == 3


def test_upstreams_quick_start_runs_as_written_with_a_bare_python(tmp_path, small_tokenizer_dir):
    """``python demo/demo_pt.py`` from the repository root, with an interpreter that has none of the project's packages
    (the system's python3 on a fresh machine): the script enters the project's environment (``run.sh setup``,
    instant once made) and runs there; the first log line says which recipes and why."""
    bare = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if bare is None or subprocess.run([bare, "-c", "import transformers"], capture_output=True).returncode == 0:
        pytest.skip("no python3 without the project's packages on this machine")
    out = tmp_path / "pt"
    flags = [
        "--recipes",
        "cpu",
        "--max_steps",
        "2",
        "--logging_steps",
        "1",
        "--output_dir",
        str(out),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--tokenizer_name_or_path",
        str(small_tokenizer_dir),
        "--vocab_size",
        "1024",
        *TINY_SHAPE,
        "--report_to",
        "none",
        "--holdout",
        "0",
        "--eval_strategy",
        "no",
    ]
    env = {**os.environ, "VENV": sys.prefix}
    result = subprocess.run(
        [bare, "demo/demo_pt.py", *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "lacks torch" in result.stdout and "using the project's environment" in result.stdout
    logged = result.stderr.splitlines()
    assert "Demo recipes: cpu (asked for with --recipes)" in next(line for line in logged if "INFO" in line)
    assert AutoModelForCausalLM.from_pretrained(out).num_parameters() > 0
    # The SFT and DPO scripts import and parse the same way (a bad flag is refused by their own parser).
    for script in ("demo/demo_sft.py", "demo/demo_dpo.py"):
        bad = subprocess.run(
            [sys.executable, script, "--recipes", "cpu", "--no_such_flag", "1"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert bad.returncode != 0 and "unknown argument(s): --no_such_flag" in bad.stderr, bad.stderr[-2000:]


def test_the_demo_chooses_its_recipes_from_the_machine():
    """t4 only on a CUDA GPU with the memory for it and bitsandbytes for its 8-bit Adam; cpu otherwise; --recipes
    decides when given."""
    from demo.common import T4_RECIPES_GIB, choose_recipes, pop_recipes_flag

    assert choose_recipes("auto", free_gib=None) == ("cpu", "no CUDA GPU")
    assert choose_recipes("auto", free_gib=T4_RECIPES_GIB - 1, bitsandbytes=True)[0] == "cpu"
    assert "requirements/gpu.txt" in choose_recipes("auto", free_gib=40.0, bitsandbytes=False)[1]
    assert choose_recipes("auto", free_gib=15.5, bitsandbytes=True)[0] == "t4"
    assert choose_recipes("cpu", free_gib=80.0, bitsandbytes=True) == ("cpu", "asked for with --recipes")
    with pytest.raises(ValueError, match="--recipes must be auto or one of"):
        choose_recipes("a100")
    assert pop_recipes_flag(["--max_steps", "3", "--recipes=t4"]) == ("t4", ["--max_steps", "3"])
    assert pop_recipes_flag(["--max_steps", "3"]) == ("auto", ["--max_steps", "3"])


@pytest.mark.parametrize("stage", ["pt", "sft", "dpo"])
def test_the_t4_threshold_covers_the_memory_estimate(stage):
    """The free memory the demo asks of a GPU before it picks the t4 recipes covers each stage's estimated peak
    (benchmarks/memory.py on fake tensors, gradient accumulation included) plus 1.5 GiB of CUDA context."""
    from benchmarks.memory import estimate, recipe_setup
    from demo.common import T4_RECIPES_GIB

    setup = recipe_setup(stage, f"configs/{stage}_t4_demo.yaml", "1b")
    assert estimate(setup)["peak"] + 1.5 <= T4_RECIPES_GIB
