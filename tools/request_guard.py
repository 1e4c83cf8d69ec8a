"""The door in front of the model server (``tools.serve``): bad requests get OpenAI-style 4xx errors, not a 500.

``transformers serve`` answers a chat request with no messages, a role it does not know, ``max_tokens: "x"`` or a
negative temperature with a 500 and a traceback; ``/reset`` unloads the served model and ``/load_model`` loads any
other one. ``RequestGuard`` is a plain ASGI middleware that checks every request before transformers sees it:

* only the routes a chat client needs are served (``SERVED_ROUTES``; anything else is a 404);
* a chat request is parsed and checked (``validate_chat_request``); a bad one gets ``{"error": {...}}`` in the
  shape the ``openai`` client reads (``BadRequestError``, ``NotFoundError`` with ``code == "model_not_found"``);
* the model may be named as the server calls it (``served_model_name``) or by its folder, and is rewritten to
  the folder, which is what transformers' pinned server accepts;
* a request without ``max_tokens`` gets the server's default (transformers would allow at least 1024 tokens,
  more than a small model's context may hold);
* an exception raised before the answer started becomes a JSON 500, and the server keeps running.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, Collection

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
SERVED_ROUTES = {("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/health")}
# Accepted by transformers, refused here: `generation_config` (transformers' own) replaces the checkpoint's sampling
# defaults and end-of-turn tokens; `chat_template_kwargs` (also its own) and `logit_bias` (a token id past the
# vocabulary) end in a 500 from inside generation when they are wrong.
REFUSED_FIELDS = ("generation_config", "chat_template_kwargs", "logit_bias")
# Passed on as they are: the wrong type fails deep inside transformers.
OBJECT_FIELDS = {
    "tools": list,
    "tool_choice": str | dict,
    "stream_options": dict,
    "response_format": dict,
    "metadata": dict,
}
# (field, lowest, highest, lowest excluded): OpenAI's ranges, narrowed where transformers fails outside them.
NUMBER_RANGES = (
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, True),
    ("frequency_penalty", -1, 2, True),  # transformers uses 1 + frequency_penalty as the repetition penalty
    ("presence_penalty", -2, 2, False),
)
MAX_BODY_BYTES = 4 << 20


class RequestRejected(ValueError):
    """A request the server refuses: the HTTP status, and what OpenAI's error object names."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}}).encode()


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise RequestRejected("'messages' must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestRejected(f"messages[{i}] must be an object", "messages")
        if message.get("role") not in ROLES:
            raise RequestRejected(f"messages[{i}].role must be one of {list(ROLES)}", "messages")
        content = message.get("content")
        if isinstance(content, list):
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content
            ):
                raise RequestRejected(f"messages[{i}].content: only text parts are supported", "messages")
        elif not isinstance(content, str):
            raise RequestRejected(f"messages[{i}].content must be a string or a list of text parts", "messages")


def _check_numbers(body: dict) -> None:
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise RequestRejected(f"'{key}' must be a positive integer", key)
    for key, low, high, low_excluded in NUMBER_RANGES:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RequestRejected(f"'{key}' must be a number", key)
        if value < low or value > high or (low_excluded and value == low):
            raise RequestRejected(f"'{key}' must be in {'(' if low_excluded else '['}{low}, {high}]", key)
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestRejected("'seed' must be an integer", "seed")


def validate_chat_request(body, model_names: tuple[str, ...], allowed_fields: Collection[str]) -> None:
    """Raise ``RequestRejected`` for a chat completion request this server cannot answer correctly.

    ``model_names``: the names the served model answers to (the first is the one an error names);
    ``allowed_fields``: the request fields the server understands (anything else is a 400, as OpenAI answers an
    unknown parameter).
    """
    if not isinstance(body, dict):
        raise RequestRejected("the request body must be a JSON object")
    unknown = sorted(set(body) - set(allowed_fields))
    if unknown:
        raise RequestRejected(f"unknown fields: {', '.join(unknown)}", unknown[0])
    for key in REFUSED_FIELDS:
        if body.get(key) is not None:
            raise RequestRejected(f"'{key}' is not supported by this server", key)
    for key, kind in OBJECT_FIELDS.items():
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise RequestRejected(f"'{key}' has the wrong type", key)
    if not all(isinstance(tool, dict) for tool in body.get("tools") or []):
        raise RequestRejected("'tools' must be a list of objects", "tools")
    model = body.get("model")
    if model is not None and model not in model_names:
        message = f"The model '{model}' does not exist; this server serves '{model_names[0]}'"
        raise RequestRejected(message, "model", status=404, code="model_not_found")
    _check_messages(body.get("messages"))
    _check_numbers(body)
    if body.get("n") not in (None, 1):
        raise RequestRejected("only n=1 is supported", "n")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise RequestRejected("'stream' must be a boolean", "stream")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise RequestRejected("'stop' must be a string or a list of strings", "stop")


Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


async def send_json(send: Send, status: int, payload: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    """ASGI middleware: checks requests (see the module docstring) before ``app`` sees them.

    ``model_path`` is the name ``app`` serves the model under, ``served_model_name`` the one clients see.
    """

    def __init__(
        self,
        app,
        model_path: str,
        served_model_name: str,
        allowed_fields: Collection[str],
        default_max_tokens: int | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ):
        self.app = app
        self.model_path, self.served_model_name = model_path, served_model_name
        self.names = (served_model_name, model_path)
        self.allowed_fields = frozenset(allowed_fields)
        self.default_max_tokens = default_max_tokens
        self.max_body_bytes = max_body_bytes

    async def read_body(self, receive: Receive) -> bytes | None:
        """The whole request body; None when the client left. Raises ``RequestRejected`` (413) past the limit."""
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                raise RequestRejected("request body too large", status=413)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def rewrite(self, body: dict) -> bytes:
        body["model"] = self.model_path
        if self.default_max_tokens and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
            body["max_tokens"] = self.default_max_tokens
        return json.dumps(body).encode()

    async def __call__(self, scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: the app loads and frees the model
            return await self.app(scope, receive, send)
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        if (method, path) not in SERVED_ROUTES:
            return await send_json(send, 404, error_body(404, f"{method} {scope['path']} is not served here"))
        if path == "/v1/models":
            model = {"id": self.served_model_name, "object": "model", "created": 0, "owned_by": "mini_qwen"}
            return await send_json(send, 200, json.dumps({"object": "list", "data": [model]}).encode())
        if path == "/v1/chat/completions":
            try:
                raw = await self.read_body(receive)
                if raw is None:
                    return None
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    raise RequestRejected(f"the request body is not valid JSON: {err}") from err
                validate_chat_request(body, self.names, self.allowed_fields)
            except RequestRejected as err:
                return await send_json(send, err.status, error_body(err.status, str(err), err.param, err.code))
            raw = self.rewrite(body)
            # The body is JSON whatever the client said (FastAPI reads a body without this type as a string).
            headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-length", b"content-type")]
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
            scope = dict(scope, headers=headers)
            receive = replay(raw, receive)
        await self.forward(scope, receive, send)

    async def forward(self, scope, receive: Receive, send: Send) -> None:
        """Run the app; answers name the model as clients know it (transformers writes the folder's path)."""
        started = False
        folder = f'"model":{json.dumps(self.model_path, ensure_ascii=False)}'.encode()
        served = f'"model":{json.dumps(self.served_model_name, ensure_ascii=False)}'.encode()

        async def send_tracked(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # The body changes length: without content-length, uvicorn sends it chunked.
                message = {
                    **message,
                    "headers": [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"],
                }
            elif message["type"] == "http.response.body":
                message = {**message, "body": message.get("body", b"").replace(folder, served)}
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as err:  # whatever one request does, the server keeps serving the others
            logger.error("%s %s failed", scope["method"], scope["path"], exc_info=err)
            if not started:  # otherwise Starlette has already answered 500 (or the answer broke off mid-stream)
                await send_json(send, 500, error_body(500, f"{type(err).__name__}: {err}"))


def replay(raw: bytes, client_receive: Receive) -> Receive:
    """A ``receive`` that hands the app the (rewritten) body once, then waits on the client (its disconnect).

    It must wait on the client's own ``receive``, not on itself: a wrapper that calls its own name recurses and
    a streamed answer silently stops after its first chunk.
    """
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await client_receive()

    return receive
