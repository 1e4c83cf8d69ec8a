"""benchmarks.serve_load on the serving tests' tiny chat model: a complete report, every hostile request refused."""

from __future__ import annotations

import json

import pytest

from benchmarks import serve_load

pytest_plugins = ["tests.helpers.chat_checkpoint"]
pytest.importorskip("uvicorn", reason="requirements/serve.txt is not installed")


def test_serve_load_smoke(chat_checkpoint, tmp_path, capsys):
    out = tmp_path / "load.json"
    argv = ["--model_name_or_path", str(chat_checkpoint), "--starts", "1", "--requests", "12", "--clients", "4"]
    figures = serve_load.main([*argv, "--max_tokens", "4", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(figures))
    assert figures["normal_alone"]["statuses"] == {200: 12} and figures["normal_with_hostile"]["statuses"] == {200: 7}
    assert {kind: row["statuses"] for kind, row in figures["hostile"].items()} == {
        "prompt of 40,000 words": {400: 1},
        "40,001 one-letter turns": {413: 1},
        "40,000-character stop": {400: 1},
        "JSON nested 100,000 deep": {400: 1},
        "text/plain from a web page": {403: 1},
    }
    assert figures["slow_loris_dropped_after_s"] < 30  # the default 10 s read timeout, not the 60 s the client tries
    assert len(figures["cold_start_s"]) == 1 and figures["cold_start_s"][0] > 0
    assert 0 < figures["memory_mb"]["before"] <= figures["memory_mb"]["peak"]
    printed = capsys.readouterr().out
    assert "cold start" in printed and "normal, with the hostile ones" in printed and "slow-loris" in printed
