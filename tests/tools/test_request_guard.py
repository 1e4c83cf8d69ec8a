"""tools.request_guard without a server: the JSON parser, the request fields and the header checks, exactly."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("uvicorn", reason="requirements/serve.txt is not installed")

from tools.request_guard import (  # noqa: E402 - after the skip: the module imports uvicorn
    MAX_JSON_DEPTH,
    ApiError,
    ChatRequest,
    RequestGuard,
    RequestLimits,
    host_name,
    parse_chat_request,
    parse_json,
)

HI = [{"role": "user", "content": "Hi"}]
NAMES = ("mini", "/ckpt/mini")


def refusal(function, *args) -> ApiError:
    with pytest.raises(ApiError) as err:
        function(*args)
    return err.value


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"[" * 100_000 + b"]" * 100_000, [f"deeper than {MAX_JSON_DEPTH} levels"]),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), [f"deeper than {MAX_JSON_DEPTH} levels"]),
        (b'{"a": ' + b"9" * 5000 + b"}", ["a number of 5000 digits"]),
        (b'{"a": 1e999}', ["too long or out of range"]),
        (b'{"a": NaN}', ["NaN is not a JSON number"]),
        (b'{"a": -Infinity}', ["-Infinity is not a JSON number"]),
        (b'{"a": "\\ud800"}', ["body.a: holds a lone UTF-16 surrogate"]),
        (b'{"\\udfff": 1}', ["lone UTF-16 surrogate"]),
        (b'{"a": "\xed\xa0\x80"}', ["not UTF-8 (byte 7)"]),
        (b'{"a": 1', ["not valid JSON"]),
        (b"\xef\xbb\xbf{}", ["not valid JSON"]),
    ],
)
def test_json_that_no_chat_request_needs_is_refused_by_name(raw, words):
    err = refusal(parse_json, raw)
    assert err.status == 400 and all(word in err.message for word in words), err.message


def test_plain_json_parses_with_its_numbers_and_text():
    raw = json.dumps({"a": [1, -2.5, 10**19, "李白 <|im_end|>"], "b": {"c": None, "d": True}}).encode()
    assert parse_json(raw) == {"a": [1, -2.5, 10**19, "李白 <|im_end|>"], "b": {"c": None, "d": True}}
    assert parse_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None


def test_a_request_becomes_plain_messages_and_settings():
    body = {
        "model": "mini",
        "messages": [
            {"role": "system", "content": "Be brief.", "name": None},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello!", "tool_calls": None, "refusal": None},
            {"role": "user", "content": "李白是谁？"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 7,
        "temperature": 0,
        "top_p": 0.5,
        "seed": -(2**63),
        "stop": "\n\n",
        "n": 1,
        "logprobs": False,
        "user": "u1",
    }
    assert parse_chat_request(body, RequestLimits(), NAMES) == ChatRequest(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi\nthere"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "李白是谁？"},
        ],
        model="mini",
        stream=True,
        include_usage=True,
        max_tokens=7,
        temperature=0.0,
        top_p=0.5,
        seed=-(2**63),
        stop=["\n\n"],
    )
    assert parse_chat_request({"messages": HI}, RequestLimits(), NAMES) == ChatRequest(messages=HI)


@pytest.mark.parametrize(
    "changes, status, param, words",
    [
        ({"model": "gpt-4o"}, 404, "model", ["'gpt-4o' does not exist", "serves 'mini'"]),
        ({"messages": [{"role": "assistant", "content": "", "tool_calls": []}]}, 400, "messages[0].tool_calls", []),
        ({"messages": [{"role": "user", "content": "Hi", "name": "bob"}]}, 400, "messages[0].name", []),
        ({"messages": [{"role": "developer", "content": "Hi"}]}, 400, "messages[0].role", []),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, 400, "messages[0].content", []),
        ({"max_tokens": 5, "max_completion_tokens": 6}, 400, "max_tokens", ["differ"]),
        ({"max_tokens": True}, 400, "max_tokens", ["positive integer"]),
        ({"seed": 2**64}, 400, "seed", ["[-9223372036854775808, 18446744073709551615]"]),
        ({"temperature": 2.5}, 400, "temperature", ["[0, 2]"]),
        ({"top_p": 0}, 400, "top_p", ["(0, 1]"]),
        ({"logprobs": 0}, 400, "logprobs", ["only false"]),
        ({"n": True}, 400, "n", ["only 1"]),
        ({"tools": [{}]}, 400, "tools", []),
        ({"tool_choice": "auto"}, 400, "tool_choice", []),
        ({"stream": True, "stream_options": {"include_usage": 1}}, 400, "stream_options", []),
        ({"stop": ["a", 1]}, 400, "stop", ["list of strings"]),
        ({"user": 5}, 400, "user", []),
        ({"functions": [], "seed2": 1}, 400, "functions", ["unknown field 'functions' (and 1 more)"]),
    ],
)
def test_each_bad_field_is_named(changes, status, param, words):
    err = refusal(parse_chat_request, {"model": "mini", "messages": HI, **changes}, RequestLimits(), NAMES)
    assert (err.status, err.param) == (status, param) and all(word in err.message for word in words), err.message


def test_limits_are_arguments():
    limits = RequestLimits(max_messages=2, max_stop_strings=1, max_stop_chars=3)
    assert "3 messages" in refusal(parse_chat_request, {"messages": HI * 3}, limits, NAMES).message
    assert "2 strings" in refusal(parse_chat_request, {"messages": HI, "stop": ["a", "b"]}, limits, NAMES).message
    assert "not 4" in refusal(parse_chat_request, {"messages": HI, "stop": "abcd"}, limits, NAMES).message
    with pytest.raises(ValueError, match="max_messages must be positive"):
        RequestLimits(max_messages=0)


@pytest.mark.parametrize(
    "header, name",
    [("127.0.0.1:8000", "127.0.0.1"), ("LocalHost", "localhost"), ("[::1]:8000", "::1"), ("::1", "::1"), ("", "")],
)
def test_host_names_lose_their_port_and_case(header, name):
    assert host_name(header) == name


def run_guard(headers: dict, method: str = "POST", path: str = "/v1/chat/completions", **guard) -> tuple[int, dict]:
    """The status and body a ``RequestGuard`` answers with, or (200, {}) when it lets the request through."""
    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def send(message):
        sent.append(message)

    options = {"hosts": ["127.0.0.1", "localhost", "::1"], "api_key": None, "max_body_bytes": 100, **guard}
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    scope = {"type": "http", "method": method, "path": path, "headers": raw}
    asyncio.run(RequestGuard(app, **options)(scope, None, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


JSON = {"Host": "127.0.0.1:8000", "Content-Type": "application/json", "Content-Length": "10"}


@pytest.mark.parametrize(
    "headers, method, guard, status, code",
    [
        (JSON, "POST", {}, 200, None),
        ({**JSON, "Host": "[::1]:8000", "Content-Type": "Application/JSON; charset=UTF-8"}, "POST", {}, 200, None),
        ({"Host": "localhost"}, "GET", {}, 200, None),
        ({"Content-Type": "application/json"}, "POST", {}, 403, "host_not_allowed"),
        ({**JSON, "Host": "attacker.example"}, "POST", {}, 403, "host_not_allowed"),
        ({**JSON, "Origin": "http://attacker.example"}, "POST", {}, 403, "origin_not_allowed"),
        ({**JSON, "Origin": "http://127.0.0.1:7860"}, "POST", {}, 200, None),
        ({**JSON, "Content-Type": "text/plain;charset=UTF-8"}, "POST", {}, 415, "unsupported_media_type"),
        ({**JSON, "Content-Length": "101"}, "POST", {}, 413, "request_too_large"),
        ({**JSON, "Content-Length": "-1"}, "POST", {}, 413, "request_too_large"),
        (JSON, "POST", {"api_key": "k"}, 401, "invalid_api_key"),
        ({**JSON, "Authorization": "Bearer x"}, "POST", {"api_key": "k"}, 401, "invalid_api_key"),
        ({**JSON, "Authorization": "Basic k"}, "POST", {"api_key": "k"}, 401, "invalid_api_key"),
        ({**JSON, "Authorization": "Bearer k"}, "POST", {"api_key": "k"}, 200, None),
        ({**JSON, "Authorization": "bearer  k "}, "POST", {"api_key": "k"}, 200, None),
    ],
)
def test_headers_decide_who_may_ask(headers, method, guard, status, code):
    answer_status, body = run_guard(headers, method, **guard)
    assert answer_status == status and (body.get("error") or {}).get("code") == code, body


def test_health_needs_no_key():
    assert run_guard({"Host": "127.0.0.1"}, "GET", "/health", api_key="k")[0] == 200
    assert run_guard({"Host": "127.0.0.1"}, "GET", "/v1/models", api_key="k")[0] == 401
