"""tools.serve: the OpenAI API through the real ``openai`` client, bad requests, and what it refuses to serve.

One server (``chat_checkpoint.chat_server``: a tiny model trained to answer "Hello!") serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.helpers import ROOT
from tests.helpers.chat_checkpoint import ANSWER, CHILD_ENV, open_direct
from tools.request_guard import RequestGuard
from tools.serve import CheckpointError, ServeArguments, build_app, check_checkpoint, main

pytest_plugins = ["tests.helpers.chat_checkpoint"]
openai = pytest.importorskip("openai", reason="requirements/serve.txt is not installed")

EOS = "<|im_end|>"
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def client(chat_server):
    return openai.OpenAI(base_url=chat_server[1], api_key="none", max_retries=0, timeout=60)


def post(base_url: str, path: str, body) -> tuple[int, dict | str]:
    """POST raw bytes, or a JSON value; returns the status and the answer (parsed when it is JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        base_url.removesuffix("/v1") + path, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with open_direct(request, timeout=60) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def test_transformers_serving_internals_still_fit(chat_checkpoint):
    """tools/serve.py rebuilds `transformers serve`'s app from its internals; an upgrade that moves them fails here."""
    args = ServeArguments(model_name_or_path=str(chat_checkpoint), device="cpu", served_model_name="mini")
    try:
        app, name = build_app(args, check_checkpoint(chat_checkpoint))
    except (ImportError, AttributeError, TypeError) as err:
        pytest.fail(f"transformers' serving internals changed (tools/serve.py build_app): {type(err).__name__}: {err}")
    assert isinstance(app, RequestGuard) and name == "mini"
    assert {"model", "messages", "stream", "max_tokens", "temperature", "top_p", "seed"} <= app.allowed_fields


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list().data] == ["mini"]


def test_non_streaming_answer_ends_at_im_end(client):
    response = client.chat.completions.create(model="mini", messages=HI, max_tokens=20)
    choice = response.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", ANSWER, "stop")
    assert response.model == "mini"  # not the folder's path, which transformers writes
    assert 1 <= response.usage.completion_tokens < 20


def test_prompt_goes_through_the_checkpoints_chat_template(client, chat_checkpoint):
    from transformers import AutoTokenizer

    messages = [{"role": "system", "content": "Be brief."}, *HI]
    response = client.chat.completions.create(model="mini", messages=messages, max_tokens=20)
    tokenizer = AutoTokenizer.from_pretrained(chat_checkpoint)
    expected = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert response.usage.prompt_tokens == len(expected)


def test_streaming_answer_comes_in_pieces(client):
    stream = client.chat.completions.create(model="mini", messages=HI, max_tokens=20, stream=True)
    deltas, finish = [], []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish.append(chunk.choices[0].finish_reason)
    assert len(deltas) >= 2 and "".join(deltas) == ANSWER and finish == ["stop"]
    assert not any(EOS in d for d in deltas)


def test_multi_turn_history(client):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        *HI,
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "How are you?"},
    ]
    response = client.chat.completions.create(model="mini", messages=messages, max_tokens=20)
    assert (response.choices[0].message.content, response.choices[0].finish_reason) == (ANSWER, "stop")


def test_max_tokens_cuts_a_greedy_answer(client):
    response = client.chat.completions.create(model="mini", messages=HI, max_tokens=2, temperature=0)
    assert response.choices[0].finish_reason == "length" and response.usage.completion_tokens == 2
    assert ANSWER.startswith(response.choices[0].message.content) and response.choices[0].message.content


def test_the_folder_path_is_also_a_model_name(client, chat_checkpoint):
    response = client.chat.completions.create(model=str(chat_checkpoint.resolve()), messages=HI, max_tokens=20)
    assert response.choices[0].message.content == ANSWER


def test_unknown_model_and_empty_messages_raise_the_clients_errors(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="gpt-4o", messages=HI)
    assert err.value.code == "model_not_found"
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="mini", messages=[], stream=stream)


OK = {"model": "mini", "messages": HI, "max_tokens": 10}
# name -> (body: raw bytes, or a JSON value to send, expected status)
BAD_BODIES = {
    "malformed json": (b'{"model": ', 400),
    "empty body": (b"", 400),
    "json array": ([1, 2], 400),
    "missing messages": ({"model": "mini"}, 400),
    "messages not a list": ({**OK, "messages": "Hi"}, 400),
    "message without role": ({**OK, "messages": [{"content": "Hi"}]}, 400),
    "unknown role": ({**OK, "messages": [{"role": "wizard", "content": "Hi"}]}, 400),
    "image part": ({**OK, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400),
    "max_tokens string": ({**OK, "max_tokens": "x"}, 400),
    "max_tokens zero": ({**OK, "max_tokens": 0}, 400),
    "temperature negative": ({**OK, "temperature": -1}, 400),
    "top_p zero": ({**OK, "top_p": 0}, 400),
    "n=2": ({**OK, "n": 2}, 400),
    "unknown field": ({**OK, "foo": 1}, 400),
    "generation_config": ({**OK, "generation_config": "{}"}, 400),
    "chat_template_kwargs": ({**OK, "chat_template_kwargs": "x"}, 400),
    "logit_bias": ({**OK, "logit_bias": {"99999": 5}}, 400),
    "tools not a list": ({**OK, "tools": "x"}, 400),
    "unknown model": ({**OK, "model": "nope"}, 404),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_request_gets_a_4xx_and_the_server_keeps_serving(chat_server, name):
    server, base_url = chat_server
    body, expected = BAD_BODIES[name]
    status, answer = post(base_url, "/v1/chat/completions", body)
    assert status == expected, answer
    assert isinstance(answer, dict) and answer["error"]["type"] == "invalid_request_error"
    status, answer = post(base_url, "/v1/chat/completions", OK)
    assert server.alive() and status == 200 and answer["choices"][0]["message"]["content"] == ANSWER


@pytest.mark.parametrize("path", ["/reset", "/load_model", "/v1/completions", "/v1/responses"])
def test_routes_that_would_change_the_served_model_are_not_served(chat_server, path):
    server, base_url = chat_server
    assert post(base_url, path, {})[0] == 404
    assert server.alive()


def test_the_server_says_what_it_serves(chat_server, chat_checkpoint):
    log = chat_server[0].output()
    assert f"serving {chat_checkpoint.resolve()} (stage: sft) as model 'mini'" in log
    assert (
        "sampling defaults (generation_config.json): do_sample=True temperature=0.7 top_p=0.8 top_k=20 "
        "repetition_penalty=1.1" in log
    )
    assert f"base URL: {chat_server[1]}" in log


def test_no_request_reached_a_500(chat_server, client):
    client.chat.completions.create(model="mini", messages=HI, max_tokens=5)
    log = chat_server[0].output()
    assert " 500 " not in log and "Traceback" not in log


def run_guard(body: bytes, guard_kwargs: dict | None = None, app=None) -> tuple[list[dict], bytes | None]:
    """Send ``body`` through a ``RequestGuard`` around ``app`` (default: one that echoes the body it got)."""

    async def echo(scope, receive, send):
        received = (await receive())["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": received})

    sent: list[dict] = []
    guard = RequestGuard(app or echo, "/ckpt", "mini", {"model", "messages", "max_tokens"}, **(guard_kwargs or {}))
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_guard_rewrites_the_model_and_fills_in_the_default_length():
    _, forwarded = run_guard(json.dumps({"model": "mini", "messages": HI}).encode(), {"default_max_tokens": 7})
    assert json.loads(forwarded) == {"model": "/ckpt", "messages": HI, "max_tokens": 7}
    _, forwarded = run_guard(json.dumps({"messages": HI, "max_tokens": 3}).encode(), {"default_max_tokens": 7})
    assert json.loads(forwarded)["max_tokens"] == 3


def test_guard_refuses_a_huge_body_and_answers_a_crash_with_a_json_500():
    sent, body = run_guard(json.dumps({"messages": HI}).encode(), {"max_body_bytes": 10})
    assert sent[0]["status"] == 413 and json.loads(body)["error"]["message"] == "request body too large"

    async def crash(scope, receive, send):
        raise RuntimeError("boom")

    sent, body = run_guard(json.dumps({"messages": HI}).encode(), app=crash)
    assert sent[0]["status"] == 500 and json.loads(body)["error"] == {
        "message": "RuntimeError: boom",
        "type": "server_error",
        "param": None,
        "code": None,
    }


# ---- what it refuses to serve, before any model is loaded ----


def test_a_folder_that_is_not_a_checkpoint_exits_2_with_one_line(tmp_path, small_tokenizer_dir):
    result = subprocess.run(
        [sys.executable, "-m", "tools.serve", "--model_name_or_path", str(small_tokenizer_dir)],
        env=CHILD_ENV,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: cannot serve {small_tokenizer_dir}: not a checkpoint, no config.json"


def test_main_refuses_a_missing_folder(tmp_path, capsys):
    assert main(ServeArguments(model_name_or_path=str(tmp_path / "missing"))) == 2
    assert capsys.readouterr().err == f"error: cannot serve {tmp_path / 'missing'}: no such folder\n"


@pytest.mark.parametrize(
    "remove, message",
    [
        ("config.json", "not a checkpoint, no config.json"),
        ("model.safetensors", "no weights"),
        ("tokenizer.json tokenizer_config.json", "no tokenizer"),
        ("chat_template.jinja", "no chat template"),
    ],
)
def test_check_checkpoint_names_what_is_missing(chat_checkpoint, tmp_path, remove, message):
    checkpoint = check_checkpoint(chat_checkpoint)
    assert (checkpoint.stage, checkpoint.model_type) == ("sft", "qwen2")
    broken = shutil.copytree(chat_checkpoint, tmp_path / "broken")
    for name in remove.split():
        (broken / name).unlink()
    if remove == "chat_template.jinja":  # transformers 5 keeps the template in its own file
        assert "chat_template" not in json.loads((broken / "tokenizer_config.json").read_text())
    with pytest.raises(CheckpointError, match=message):
        check_checkpoint(broken)


def test_a_run_folder_names_the_checkpoints_inside(chat_checkpoint, tmp_path):
    shutil.copytree(chat_checkpoint, tmp_path / "checkpoint-100")
    with pytest.raises(CheckpointError, match="these sub-folders are checkpoints: checkpoint-100"):
        check_checkpoint(tmp_path)


def test_the_hub_is_off_even_when_the_environment_turns_it_on():
    code = "import tools.serve, huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE, c.HF_HUB_DISABLE_UPDATE_CHECK)"
    env = {**CHILD_ENV, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_UPDATE_CHECK": "0"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.split() == ["True", "True"]
