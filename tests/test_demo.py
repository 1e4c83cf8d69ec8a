"""The demo pipeline end to end, shortened through the same overrides a user has (--max_steps)."""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from demo import run_all


def test_demo_pipeline(tmp_path, monkeypatch, capsys):
    # The demo tokenizer is trained once into models/mini-tokenizer (reused, like a user's second run).
    summary = run_all.run(str(tmp_path / "demo"), max_steps=30, prompts=2, logging_steps=5)
    out = capsys.readouterr().out
    for stage in ("pt", "sft", "dpo"):
        values = summary["losses"][stage]
        assert len(values) >= 2 and values[-1] < values[0], (stage, values)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "demo" / stage)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "demo" / stage)
        ids = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]  # fmt: skip
        assert model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    rows = [json.loads(x) for x in (tmp_path / "demo" / "eval" / "generations.jsonl").read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["raw"] * 2 + ["chat"] * 4
    assert "PT loss: first" in out and "Demo finished in" in out and "| perplexity |" in out
    assert (tmp_path / "demo" / "dpo" / "preference_report.md").is_file()
