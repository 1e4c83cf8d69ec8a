"""The demo pipeline end to end, shortened through the same overrides a user has (--max_steps)."""

from __future__ import annotations

import json
import logging
import socket

from transformers import AutoModelForCausalLM, AutoTokenizer

from demo import demo_dpo, demo_pt, demo_sft, run_all
from tests.helpers import TINY_SHAPE


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
