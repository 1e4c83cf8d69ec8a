"""The merged folder of a LoRA run is one artefact for every tool: transformers 4.x reads it like 5.x, it converts
to GGUF and back with the same greedy ids, and the server answers from it. The folders are the SFT-LoRA and
DPO-LoRA runs of ``tests.helpers.lora_runs``; the checks are the existing interop tests' own helpers."""

from __future__ import annotations

import pytest

from tests.helpers.chat_checkpoint import start_server
from tests.tools.test_export import read
from tests.tools.test_serve import post
from tests.utils.train.test_portable import CHAT, SAME, TEXTS, max_diff, read_folder, read_with_transformers4
from tools import export
from tools.compat import transformers4_dir
from tools.gguf_converter import SCRIPT, converter_dir

pytest_plugins = ["tests.helpers.lora_runs"]
STAGES = ["sft", "dpo"]


@pytest.mark.skipif(
    not (transformers4_dir() / "transformers").is_dir(),
    reason=f"transformers 4.x side folder {transformers4_dir()} is missing: run `bash run.sh test`",
)
def test_transformers4_reads_the_merged_models_like_transformers5(lora_runs):
    prompt = list(range(3, 200))
    jobs = [{"folder": str(lora_runs[stage]), "texts": TEXTS, "chat": CHAT, "prompt": prompt} for stage in STAGES]
    for job, v4 in zip(jobs, read_with_transformers4(jobs)):
        v5 = read_folder(**job)
        assert v4["tokenizer_class"] == "Qwen2TokenizerFast"
        for key in ("ids", "chat_text", "chat_ids", "decoded", "greedy"):
            assert v4[key] == v5[key], (job["folder"], key)
        assert max_diff(v4["logits"], v5["logits"]) < SAME


@pytest.mark.skipif(
    not (converter_dir() / SCRIPT).is_file(),
    reason=f"llama.cpp's converter is missing from {converter_dir()}: run `bash run.sh test`",
)
@pytest.mark.parametrize("stage", STAGES)
def test_merged_model_round_trips_through_gguf(lora_runs, stage, tmp_path):
    plan = export.plan_export(lora_runs[stage], ["f32"], out_dir=tmp_path)
    export.export_gguf(plan)
    files = plan.ggufs
    original, back = read(lora_runs[stage]), read(tmp_path, files["f32"].name)
    assert back["ids"] == original["ids"] and back["prompt"] == original["prompt"]
    # f32 keeps the weights exactly. (Greedy ids are not compared: the GGUF does not carry the folder's repetition
    # penalty, and the barely trained model's near-flat logits let it change the choice.)
    assert (back["logits"] - original["logits"]).abs().max() < 1e-4


def test_the_server_answers_from_the_merged_model(lora_runs, tmp_path):
    pytest.importorskip("uvicorn", reason="requirements/serve.txt is not installed")
    server, base_url = start_server(lora_runs["dpo"], tmp_path / "serve.log", "--served_model_name", "lora")
    try:
        body = {"model": "lora", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "seed": 0}
        status, answer = post(base_url, body)
    finally:
        server.stop()
    assert status == 200, answer
    assert answer["model"] == "lora" and answer["choices"][0]["message"]["role"] == "assistant"
    assert 1 <= answer["usage"]["completion_tokens"] <= 5
