"""What comes in: every request to the model server (``tools.serve``) is checked here before the model sees it.

Three layers, from the socket inward:

* ``SlowClientProtocol`` (uvicorn's h11 protocol with one timer): a client has ``read_timeout`` seconds to send its
  request line and headers, or the connection is closed. uvicorn itself waits for headers forever, so a few
  connections that send one byte a minute (slow-loris) would hold the server.
* ``RequestGuard`` (ASGI middleware) reads only the headers. The ``Host`` must be one this server answers to: DNS
  rebinding points a name the attacker owns at 127.0.0.1, and the browser then sends ``Host: <that name>``. An
  ``Origin`` header must name one of those hosts too: a page the user visits may post to localhost (a CORS
  "simple request" needs no preflight), but the browser always says where it comes from. The API key, if the
  server has one, comes as OpenAI clients send it (``Authorization: Bearer <key>``). A body must be
  ``application/json`` (a page posts ``text/plain`` without asking first) and no larger than ``max_body_bytes``.
* ``read_json`` and ``parse_chat_request`` turn the body into a ``ChatRequest``: the body arrives within
  ``read_timeout``, is UTF-8 JSON without NaN, huge numbers, lone surrogates or deep nesting, and every field is
  one this server implements, with a value in its range. A field the server does not implement is refused
  rather than ignored, except where its value asks for nothing (``n: 1``, ``logprobs: false``, ...).

Every refusal is an ``ApiError``: a 4xx with OpenAI's error object, which the ``openai`` client raises as its own
exception types (``BadRequestError``, ``AuthenticationError``, ``PermissionDeniedError``, ``NotFoundError``, ...).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from uvicorn.protocols.http.h11_impl import H11Protocol

ROLES = ("system", "user", "assistant")
# JSON that a chat request never needs, refused while parsing (limits on structure, not on content).
MAX_JSON_DEPTH = 32  # a request with text parts is 5 levels deep
MAX_NUMBER_CHARS = 32  # int64 and uint64 take at most 20 digits; floats at most ~25 characters
# Fields accepted only at the value that asks for nothing, so a client that sends the default still works.
NO_OP_VALUES = {
    "n": 1,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logprobs": False,
    "response_format": {"type": "text"},
    "tool_choice": "none",
    "tools": [],
}
# What the answer depends on; "user" (an end-user id for abuse monitoring) is accepted and ignored.
FIELDS = (
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "user",
    "chat_template_kwargs",
    *NO_OP_VALUES,
)
# The chat template options a request may set (vLLM's and SGLang's field for them): the thinking switch.
TEMPLATE_OPTIONS = ("enable_thinking",)
# torch.manual_seed's range
SEED_RANGE = (-(2**63), 2**64 - 1)


class ApiError(Exception):
    """A refused request: the HTTP status and what OpenAI's error object names (``param``: the request field)."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> bytes:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return json.dumps({"error": error}, ensure_ascii=False).encode()


@dataclass
class RequestLimits:
    max_body_bytes: int = field(
        default=1 << 20,
        metadata={"help": "Largest request body in bytes (413 beyond; a 1,000-token prompt is ~10 kB)."},
    )
    max_messages: int = field(default=256, metadata={"help": "Most messages in one request."})
    max_stop_strings: int = field(default=4, metadata={"help": "Most stop strings in one request (OpenAI: 4)."})
    max_stop_chars: int = field(default=64, metadata={"help": "Longest stop string, in characters."})
    read_timeout: float = field(
        default=10.0,
        metadata={"help": "Seconds a client has to send its headers, and again its body (slow clients are dropped)."},
    )

    def __post_init__(self):
        for name in ("max_body_bytes", "max_messages", "max_stop_strings", "max_stop_chars", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass
class ChatRequest:
    """A checked chat completion request: messages are ``{"role", "content": str}``, values in range."""

    messages: list[dict]
    model: str | None = None
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None  # None: the server's default
    temperature: float | None = None  # None: the checkpoint's sampling defaults
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    thinking: bool = False  # chat_template_kwargs.enable_thinking: the reply reasons in a think block first


# ---- headers ----


def host_name(value: str) -> str:
    """The host of a ``Host`` header or of a URL's netloc, without port or IPv6 brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class RequestGuard:
    """ASGI middleware: refuses a request whose headers say it should not be answered (see the module docstring).

    ``hosts``: the host names the server answers to (lower case, no port); ``api_key``: None for none;
    ``open_paths``: answered without the key (a launcher polls ``/health`` before it knows anything).
    """

    def __init__(self, app, hosts, api_key: str | None, max_body_bytes: int, open_paths=("/health",)):
        self.app = app
        self.hosts = frozenset(hosts)
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.open_paths = frozenset(open_paths)

    def check(self, scope) -> None:
        headers = {}
        for key, value in scope["headers"]:
            headers.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
        host = host_name(headers.get("host", ""))
        if host not in self.hosts:
            raise ApiError(
                403,
                f"Host '{host}' is not a name this server answers to ({', '.join(sorted(self.hosts))});"
                " start it with --allowed_hosts to add one",
                code="host_not_allowed",
            )
        origin = headers.get("origin")
        if origin is not None and host_name(urlsplit(origin).netloc) not in self.hosts:
            raise ApiError(403, f"cross-origin requests are refused (Origin: {origin})", code="origin_not_allowed")
        if self.api_key and scope["path"] not in self.open_paths:
            scheme, _, key = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key):
                raise ApiError(
                    401, "Incorrect API key provided: send it as 'Authorization: Bearer <key>'", code="invalid_api_key"
                )
        if scope["method"] == "POST":
            media_type, *params = [part.strip().lower() for part in headers.get("content-type", "").split(";")]
            charset = dict(param.partition("=")[::2] for param in params).get("charset", "utf-8").strip('"')
            if media_type != "application/json" or charset != "utf-8":
                raise ApiError(
                    415,
                    f"the body must be 'application/json' (UTF-8), not '{headers.get('content-type')}'",
                    code="unsupported_media_type",
                )
            length = headers.get("content-length", "0")
            if not length.isdigit() or int(length) > self.max_body_bytes:
                raise ApiError(
                    413,
                    f"the request body is larger than this server's limit of {self.max_body_bytes} bytes",
                    code="request_too_large",
                )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            try:
                self.check(scope)
            except ApiError as err:
                return await send_error(send, err)
        await self.app(scope, receive, send)


async def send_error(send, err: ApiError) -> None:
    """Answer ``err`` on a raw ASGI ``send``."""
    body = err.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SlowClientProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head within
    ``header_timeout`` seconds of connecting (or of its previous answer; idle keep-alive connections are closed by
    uvicorn's own ``timeout_keep_alive``). Set ``header_timeout`` on a subclass (``slow_client_protocol``)."""

    header_timeout: float = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_timer = self.loop.call_later(self.header_timeout, self._close_if_no_request)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.header_timeout, self._close_if_no_request)

    def connection_lost(self, exc) -> None:
        self._head_timer.cancel()
        super().connection_lost(exc)

    def _close_if_no_request(self) -> None:
        # A request whose head arrived has a cycle that is not complete: the app (and read_json's timeout) owns it.
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


def slow_client_protocol(header_timeout: float) -> type[SlowClientProtocol]:
    return type("SlowClientProtocol", (SlowClientProtocol,), {"header_timeout": header_timeout})


# ---- the body ----


async def read_json(request, limits: RequestLimits):
    """The request's body parsed as JSON (``parse_json``), read within ``limits.read_timeout`` seconds and no
    larger than ``limits.max_body_bytes`` (a chunked body has no Content-Length the guard could check)."""
    from starlette.requests import ClientDisconnect

    chunks, size = [], 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise ApiError(
                    413,
                    f"the request body is larger than this server's limit of {limits.max_body_bytes} bytes",
                    code="request_too_large",
                )
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), limits.read_timeout)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {limits.read_timeout:g} s") from None
    except ClientDisconnect:
        raise ApiError(400, "the client left before the request body arrived") from None
    return parse_json(b"".join(chunks))


class _NumberTooLong(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _NumberTooLong(f"a number of {len(text)} digits")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_CHARS else math.inf
    if not math.isfinite(value):
        raise _NumberTooLong(f"the number {text[:20]}{'...' if len(text) > 20 else ''} (too long or out of range)")
    return value


def _parse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes):
    """``raw`` as a JSON value, or ``ApiError`` (400): not UTF-8, not JSON (NaN and Infinity included), a number
    past ``MAX_NUMBER_CHARS``, nesting past ``MAX_JSON_DEPTH``, or a string holding a lone UTF-16 surrogate
    (``"\\ud800"`` is valid JSON, but no tokenizer can encode it)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(400, f"the request body is not UTF-8 (byte {err.start})") from None
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:
        raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except _NumberTooLong as err:
        raise ApiError(400, f"the request body holds {err}") from None
    except ValueError as err:
        raise ApiError(400, f"the request body is not valid JSON: {err}") from None
    _check_structure(value)
    return value


def _check_structure(value) -> None:
    """Depth and strings of a parsed JSON value, without recursion (the value may be deep)."""
    stack = [(value, "body", 1)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ApiError(400, f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ApiError(
                    400,
                    f"{path}: holds a lone UTF-16 surrogate ({item[err.start]!r}), which is not text",
                    param=path.removeprefix("body."),
                ) from None
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, f"{path}.{key} (the key)", depth + 1))
                stack.append((child, f"{path}.{key}", depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))


# ---- the fields ----


def _bad(message: str, param: str) -> ApiError:
    return ApiError(400, message, param=param)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_value(value, expected) -> bool:
    """JSON equality that keeps ``false`` and ``0`` apart (Python's ``False == 0``)."""
    if isinstance(expected, bool) or isinstance(value, bool):
        return value is expected
    if _is_number(expected):
        return _is_number(value) and value == expected
    return value == expected


def _message_text(content, path: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise _bad(f"{path}[{i}]: only text parts ({{'type': 'text', 'text': ...}}) are supported", path)
            texts.append(part["text"])
        return "\n".join(texts)
    raise _bad(f"{path} must be a string or a list of text parts", path)


def _messages(value, limits: RequestLimits) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _bad("'messages' must be a non-empty list", "messages")
    if len(value) > limits.max_messages:
        raise _bad(
            f"'messages' has {len(value)} messages; this server takes at most {limits.max_messages}", "messages"
        )
    messages = []
    for i, message in enumerate(value):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{path} must be an object", path)
        # null is what an SDK writes for a field it has no value for: the same as leaving it out
        extra = sorted(key for key, item in message.items() if key not in ("role", "content") and item is not None)
        if extra:
            what = "tool calls are" if extra[0] in ("tool_calls", "function_call") else f"'{extra[0]}' is"
            raise _bad(f"{path}.{extra[0]}: {what} not supported by this server", f"{path}.{extra[0]}")
        if message.get("role") not in ROLES:
            raise _bad(f"{path}.role must be one of {', '.join(ROLES)}", f"{path}.role")
        messages.append({"role": message["role"], "content": _message_text(message.get("content"), f"{path}.content")})
    return messages


def _number(body: dict, key: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if not _is_number(value) or value < low or value > high or (low_open and value == low):
        raise _bad(f"'{key}' must be a number in {'(' if low_open else '['}{low:g}, {high:g}]", key)
    return float(value)


def _max_tokens(body: dict) -> int | None:
    given = {key: body[key] for key in ("max_tokens", "max_completion_tokens") if body.get(key) is not None}
    for key, value in given.items():
        if not _is_int(value) or value < 1:
            raise _bad(f"'{key}' must be a positive integer", key)
    if len(set(given.values())) > 1:
        raise _bad("'max_tokens' and 'max_completion_tokens' differ; send one", "max_tokens")
    return next(iter(given.values()), None)


def _stop(value, limits: RequestLimits) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise _bad("'stop' must be a string or a list of strings", "stop")
    if len(stops) > limits.max_stop_strings:
        raise _bad(f"'stop' has {len(stops)} strings; this server takes at most {limits.max_stop_strings}", "stop")
    for stop in stops:
        if not 0 < len(stop) <= limits.max_stop_chars:
            raise _bad(f"each stop string must have 1 to {limits.max_stop_chars} characters, not {len(stop)}", "stop")
    return stops


def _thinking(value) -> bool:
    if value is None:
        return False
    if not (
        isinstance(value, dict)
        and set(value) <= set(TEMPLATE_OPTIONS)
        and isinstance(value.get("enable_thinking", False), bool)
    ):
        raise _bad(
            "'chat_template_kwargs' is {'enable_thinking': true|false} (the chat template's thinking switch)",
            "chat_template_kwargs",
        )
    return value.get("enable_thinking", False)


def parse_chat_request(body, limits: RequestLimits, model_names: tuple[str, ...]) -> ChatRequest:
    """A ``ChatRequest`` from a parsed body, or ``ApiError``. ``model_names``: what the served model answers to
    (the first is the one an error names)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise _bad(
            f"unknown field '{unknown[0]}'" + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
            unknown[0],
        )
    for key, no_op in NO_OP_VALUES.items():
        if body.get(key) is not None and not _same_value(body[key], no_op):
            raise _bad(
                f"'{key}' is not supported by this server (only {json.dumps(no_op)}, which asks for nothing)", key
            )
    model = body.get("model")
    if model is not None and model not in model_names:
        raise ApiError(
            404,
            f"The model '{model}' does not exist; this server serves '{model_names[0]}'",
            "model",
            code="model_not_found",
        )
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("'user' must be a string", "user")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and not (
        stream
        and isinstance(options, dict)
        and set(options) <= {"include_usage"}
        and isinstance(options.get("include_usage", False), bool)
    ):
        raise _bad("'stream_options' is {'include_usage': true|false}, with 'stream': true", "stream_options")
    seed = body.get("seed")
    if seed is not None and not (_is_int(seed) and SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise _bad(f"'seed' must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]", "seed")
    return ChatRequest(
        messages=_messages(body.get("messages"), limits),
        model=model,
        stream=bool(stream),
        include_usage=bool((options or {}).get("include_usage")),
        max_tokens=_max_tokens(body),
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1, low_open=True),
        seed=seed,
        stop=_stop(body.get("stop"), limits),
        thinking=_thinking(body.get("chat_template_kwargs")),
    )
