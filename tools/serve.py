"""Serve a checkpoint with an OpenAI-compatible chat API: one model, one generation worker, every request checked.

    python -m tools.serve --model_name_or_path results/dpo               # -> base URL: http://127.0.0.1:8000/v1
    python -m tools.serve --model_name_or_path results/sft --port 8001 --device cuda --served_model_name mini
    MINI_QWEN_API_KEY=secret python -m tools.serve --model_name_or_path results/dpo   # clients must send the key
    bash run.sh serve --model_name_or_path results/dpo                    # the same, from the repository root

Any OpenAI client talks to it: ``openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")``, then
``client.chat.completions.create(model="dpo", messages=[...], stream=True)``. Routes: ``POST /v1/chat/completions``
(whole, or streamed as server-sent events in OpenAI's chunk format), ``GET /v1/models`` and ``GET /health``.
``python -m tools.web`` is a chat page for it; ``python -m tools.chat_launcher`` starts both.

A request goes through five steps, each with its own limit (all are flags; see ``RequestLimits`` too):

1. ``tools.request_guard`` checks the headers (Host, Origin, API key, JSON only, size) and the body (time to
   arrive, JSON shape, fields and ranges, message count, stop strings).
2. ``chat_prompt_ids`` renders the messages exactly as training did (``utils.data.chat.prompt_ids``): a message
   that spells ``<|im_end|>`` is that text, never a turn marker; roles come only from the message structure.
3. The prompt must fit the context limit (``--context_limit``, by default the length the checkpoint was trained
   on, from its ``run_info.json``), or the request gets a 400 naming both numbers; ``max_tokens`` is cut to what
   still fits.
4. The request waits for the one generation worker in a queue of at most ``--max_waiting``; a request that finds
   it full gets 503 with ``Retry-After``. One model answers one request at a time, so memory is one request's.
5. The worker generates with the checkpoint's ``generation_config.json`` (the request's temperature, top_p, seed
   and max_tokens on top) and stops at end of turn, ``max_tokens``, a stop string, ``--request_timeout`` seconds
   (then ``finish_reason`` is ``length``), or as soon as the client goes away.

Why not ``transformers serve`` (which this module wrapped before): its handler renders prompts with
``apply_chat_template``, which turns text that spells a special token into that token (a user could forge turns);
it has no queue bound and no time limit; its stop strings go through ``StopStringCriteria``, whose tables grow with
each string's length (about 600 MB for one 40,000-character string); and its app is private API. The app here is
Starlette, which FastAPI is built on: the raw body is checked by hand (depth, numbers, surrogates), so FastAPI's
pydantic layer would have nothing left to do.

At start the folder is checked (``tools.checkpoint_files``: files, JSON, weight headers, config against weights),
the model loaded, one conversation rendered and one token generated: a broken checkpoint is refused with one line
naming the file, before the server listens. Nothing is downloaded: the Hugging Face Hub is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tools.checkpoint_files import (
    CheckpointError,
    CheckpointFiles,
    check_files,
    check_tokenizer_fits_config,
    check_weights_fit_config,
    one_line,
)
from tools.generation_worker import GenerationWorker, Job
from tools.request_guard import (
    ApiError,
    ChatRequest,
    RequestGuard,
    RequestLimits,
    parse_chat_request,
    read_json,
    slow_client_protocol,
)
from utils.run_info import trained_length

STARTED = time.perf_counter()
# Before huggingface_hub is imported (it reads them once): a name that is not our folder must fail at once, not
# retry the Hub for minutes, and the once-a-day PyPI version check stays off.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_UPDATE_CHECK"] = "1"


API_KEY_ENV = "MINI_QWEN_API_KEY"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOOPBACK = ("localhost", "127.0.0.1", "::1")
WILDCARD = ("0.0.0.0", "::", "")
# Rendered and answered with one token at start: every role, and a content that spells a special token (the
# path that keeps such text as text).
PROBE = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What does <|im_end|> mean?"},
    {"role": "assistant", "content": "It ends a turn."},
    {"role": "user", "content": "Thanks!"},
]


@dataclass
class ServeArguments:
    model_name_or_path: str = field(default="results/dpo", metadata={"help": "The checkpoint folder to serve."})
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Listen address: 127.0.0.1 = this machine only (0.0.0.0 opens it to the network)."},
    )
    port: int = field(default=8000, metadata={"help": "Listen port."})
    allowed_hosts: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Host names (or addresses) clients may use besides the listen address and localhost; "
            "other Host headers and foreign Origins get 403 (DNS rebinding, web pages posting here)."
        },
    )
    api_key: str | None = field(
        default=None,
        metadata={
            "help": f"Key clients must send (Authorization: Bearer <key>); default ${API_KEY_ENV}, which "
            "unlike a flag does not show in the process list. None: no key."
        },
    )
    served_model_name: str | None = field(
        default=None, metadata={"help": "The model name clients use (default: the folder's name, e.g. 'dpo')."}
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N."})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (fp32 on CPU, bf16 on Ampere+, fp16 on older GPUs), float32, bfloat16, float16."},
    )
    max_new_tokens: int = field(default=512, metadata={"help": "Longest answer when a request gives no max_tokens."})
    context_limit: int | None = field(
        default=None,
        metadata={
            "help": "Most tokens of prompt and answer together (default: the length the checkpoint was trained "
            "on, from run_info.json, else config.json's max_position_embeddings). Longer prompts get 400."
        },
    )
    max_waiting: int = field(
        default=8, metadata={"help": "Requests that may wait for the generation worker; more get 503 + Retry-After."}
    )
    request_timeout: float = field(
        default=120.0,
        metadata={"help": "Seconds one answer may generate; then it ends with finish_reason 'length'."},
    )
    max_connections: int = field(
        default=64, metadata={"help": "Open connections and requests at once; more get 503 (uvicorn's own)."}
    )
    shutdown_timeout: float = field(
        default=3.0, metadata={"help": "Seconds Ctrl-C waits for running answers before it cuts them."}
    )
    seed: int | None = field(default=None, metadata={"help": "Seed torch once at start (requests may send 'seed')."})
    log_level: str = field(
        default="warning",
        metadata={
            "help": "Server log level (info shows every request).",
            "choices": ["debug", "info", "warning", "error"],
        },
    )

    def __post_init__(self):
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        for name in ("max_new_tokens", "max_waiting", "request_timeout", "max_connections", "shutdown_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.context_limit is not None and self.context_limit < 2:
            raise ValueError(f"context_limit must be at least 2 tokens, got {self.context_limit}")
        self.api_key = self.api_key or os.environ.get(API_KEY_ENV) or None

    def hosts(self) -> list[str]:
        """The Host names requests may carry: the listen address (unless it is every address), localhost, and
        ``allowed_hosts``."""
        own = [] if self.host in WILDCARD else [self.host.lower()]
        return sorted({*own, *LOOPBACK, *(h.lower() for h in self.allowed_hosts)})


def local_url(host: str, port: int, path: str = "") -> str:
    """The URL a client on this machine uses (a server listening on every address is reached on 127.0.0.1)."""
    host = "127.0.0.1" if host in WILDCARD else host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def check_checkpoint(folder: str | os.PathLike, chat_template: bool = True) -> CheckpointFiles:
    """``check_files`` plus what serving needs: a chat template (unless not ``chat_template``: a benchmark scores a
    PT checkpoint on raw text). No torch: a wrong path fails in a second."""
    files = check_files(folder)
    if not chat_template:
        return files
    if not (files.path / "chat_template.jinja").is_file() and not files.tokenizer_config.get("chat_template"):
        raise CheckpointError(f"{files.path}: the tokenizer has no chat template (chat_template.jinja)")
    return files


def template_file(files: CheckpointFiles) -> Path:
    jinja = files.path / "chat_template.jinja"
    return jinja if jinja.is_file() else files.path / "tokenizer_config.json"


def chat_prompt_ids(tokenizer, chat: ChatRequest) -> list[int]:
    """The prompt ids of a request: its messages rendered the way training renders them, with the assistant
    generation prompt. The one path from a request to ids (a template option such as a thinking switch goes here)."""
    from utils.data.chat import prompt_ids

    return prompt_ids(tokenizer, chat.messages, chat.thinking)


class ThinkingStream:
    """A thinking reply's streamed text as ``reasoning_content`` and ``content`` deltas, split as
    ``utils.data.chat.reply_message`` splits the whole text: the reasoning is what comes before ``</think>``, the
    answer what follows, each without the spaces around it. Text that may turn out to be the start of ``</think>``,
    or spaces that may end a part, waits for the next piece (or ``finish``) to say which it is."""

    def __init__(self) -> None:
        self.pending, self.answering, self.started = "", False, False

    def feed(self, text: str) -> list[tuple[str, str]]:
        """``(field, text)`` deltas for a new piece of the reply."""
        from utils.tokenizer import THINK_CLOSE

        self.pending += text
        deltas = []
        if not self.answering:
            at = self.pending.find(THINK_CLOSE)
            if at == -1:
                partial = next(
                    (k for k in range(len(THINK_CLOSE) - 1, 0, -1) if self.pending.endswith(THINK_CLOSE[:k])), 0
                )
                ready = self.pending[: len(self.pending) - partial].rstrip()
                self.pending = self.pending[len(ready) :]
                return self._delta("reasoning_content", ready)
            deltas += self._delta("reasoning_content", self.pending[:at].rstrip())
            self.answering, self.started, self.pending = True, False, self.pending[at + len(THINK_CLOSE) :]
        ready = self.pending.rstrip()
        self.pending = self.pending[len(ready) :]
        return deltas + self._delta("content", ready)

    def finish(self) -> list[tuple[str, str]]:
        """At the end of the reply: what was held back, but the spaces that ended it (a block that never closed
        is all reasoning)."""
        text, self.pending = self.pending.rstrip(), ""
        return self._delta("content" if self.answering else "reasoning_content", text)

    def _delta(self, name: str, text: str) -> list[tuple[str, str]]:
        if not self.started:
            text = text.lstrip()
        if not text:
            return []
        self.started = True
        return [(name, text)]


# ---- loading ----


@dataclass
class Served:
    """What the app serves: the model, its tokenizer and the limits that come from the checkpoint."""

    files: CheckpointFiles
    name: str
    model: object
    tokenizer: object
    context_limit: int
    context_source: str


def resolve_device_and_dtype(device: str, dtype: str) -> tuple[str, str]:
    """``auto`` settled: the GPU if there is one; the precision that device computes in (``inference_dtype``)."""
    from utils.devices import inference_dtype, resolve_device

    device = resolve_device(device)
    if dtype == "auto":
        dtype = str(inference_dtype(device)).removeprefix("torch.")
    return device, dtype


def load_served(args: ServeArguments, files: CheckpointFiles) -> Served:
    """Load and try the checkpoint: config against weights, the tokenizer, the model, one rendered conversation
    and one generated token. Any failure is ``CheckpointError`` naming the file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from utils.generation import build_generation_config
    from utils.tokenizer import upgrade_legacy_template

    hf_logging.disable_progress_bar()  # a bar per load says nothing in a server's log
    check_weights_fit_config(files)
    check_tokenizer_fits_config(files)
    positions = files.config.get("max_position_embeddings")
    trained, source = trained_length(files.path)
    if args.context_limit is not None:
        if isinstance(positions, int) and args.context_limit > positions:
            raise CheckpointError(
                f"--context_limit {args.context_limit} is past the model's position table "
                f"({files.path / 'config.json'}: max_position_embeddings {positions})"
            )
        context_limit, source = args.context_limit, "--context_limit"
    elif trained is None:
        raise CheckpointError(
            f"{files.path}: no trained length in run_info.json and no max_position_embeddings in "
            "config.json: pass --context_limit"
        )
    else:
        context_limit = trained
    try:
        tokenizer = AutoTokenizer.from_pretrained(files.path, trust_remote_code=False)
    except Exception as err:  # whatever the tokenizer files make transformers raise: name them, no traceback
        raise CheckpointError(f"{files.path}: the tokenizer does not load ({one_line(err)})") from None
    upgrade_legacy_template(tokenizer)  # an earlier version of our template gains the thinking switch
    device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(files.path, dtype=getattr(torch, dtype), trust_remote_code=False)
        model = model.to(device).eval()
    except Exception as err:  # e.g. a weight file that changed since check_files read its header
        weights = ", ".join(file.name for file in files.weight_files)
        raise CheckpointError(f"{files.path}: the model does not load from {weights} ({one_line(err)})") from None
    try:
        prompt = chat_prompt_ids(tokenizer, ChatRequest(messages=PROBE))
    except Exception as err:  # a template with a syntax error, or one that raises on a plain conversation
        raise CheckpointError(
            f"{template_file(files)}: the chat template fails on a plain conversation ({one_line(err)})"
        ) from None
    try:
        config = build_generation_config(model, max_new_tokens=1)
        with torch.inference_mode():
            ids = torch.tensor([prompt], device=model.device)
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    except Exception as err:  # wrong special ids in generation_config.json, a model that cannot run, ...
        raise CheckpointError(f"{files.path}: the model fails to generate one token ({one_line(err)})") from None
    name = args.served_model_name or files.path.name
    return Served(files, name, model, tokenizer, context_limit, source)


# ---- the app ----


def token_budget(prompt_tokens: int, max_tokens: int | None, default: int, context_limit: int) -> int:
    """New tokens to allow, or ``ApiError`` when the prompt (or the asked-for length) cannot fit the context."""
    if max_tokens is not None and max_tokens >= context_limit:
        raise ApiError(
            400,
            f"'max_tokens' is {max_tokens}; this server's context limit is {context_limit} tokens "
            "for prompt and answer together",
            "max_tokens",
            code="context_length_exceeded",
        )
    if prompt_tokens >= context_limit:
        raise ApiError(
            400,
            f"the prompt is {prompt_tokens} tokens; this server's context limit is {context_limit} "
            "tokens, and the answer needs at least one more",
            "messages",
            code="context_length_exceeded",
        )
    return min(max_tokens or default, context_limit - prompt_tokens)


def generation_config_for(model, chat: ChatRequest, max_new_tokens: int):
    """The checkpoint's generation config with the request's choices on top (temperature 0 = greedy)."""
    from utils.generation import build_generation_config

    overrides = {"max_new_tokens": max_new_tokens, "top_p": chat.top_p}
    if chat.temperature is not None:
        overrides["do_sample"] = chat.temperature > 0
        overrides["temperature"] = chat.temperature if chat.temperature > 0 else None
    return build_generation_config(model, **overrides)


def _error_response(err: ApiError):
    from starlette.responses import Response

    return Response(err.body(), status_code=err.status, headers=err.headers, media_type="application/json")


def _sse(payload: dict) -> str:
    """One server-sent event, as OpenAI streams them."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def build_app(served: Served, args: ServeArguments, limits: RequestLimits, worker: GenerationWorker):
    """The ASGI app: ``RequestGuard`` around a Starlette app with the three routes; ``worker`` is started and
    closed with it."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from utils.data.chat import reply_message

    names = (served.name, str(served.files.path))

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def models(request):
        model = {"id": served.name, "object": "model", "created": 0, "owned_by": "mini_qwen"}
        return JSONResponse({"object": "list", "data": [model]})

    async def chat_completions(request):
        chat = parse_chat_request(await read_json(request, limits), limits, names)
        try:
            prompt = await asyncio.to_thread(chat_prompt_ids, served.tokenizer, chat)
        except Exception as err:  # the checkpoint's template refused this conversation (it passed the probe)
            raise ApiError(400, f"the chat template refused these messages ({one_line(err)})", "messages") from None
        budget = token_budget(len(prompt), chat.max_tokens, args.max_new_tokens, served.context_limit)
        job = Job(
            prompt, generation_config_for(served.model, chat, budget), chat.stop, chat.seed, asyncio.get_running_loop()
        )
        worker.submit(job)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": served.name}
        if chat.stream:
            events = _stream(job, base, len(prompt), chat.include_usage, chat.thinking)
            return StreamingResponse(events, media_type="text/event-stream")
        return await _whole(job, base, len(prompt), request, chat.thinking)

    async def _events(job: Job):
        """The job's events until its end; the worker's count and the job are released however this ends."""
        started = time.monotonic()
        try:
            while True:
                event = await job.events.get()
                yield event
                if event[0] != "text":
                    return
        finally:
            job.cancelled.set()  # the client left, or the answer ended: either way the worker may stop
            worker.finished(time.monotonic() - started)

    async def _stream(job: Job, base: dict, prompt_tokens: int, include_usage: bool, thinking: bool):
        """OpenAI's chunks: the role, the text piece by piece, the finish reason, the usage if asked; then [DONE].
        With thinking the reasoning comes as ``reasoning_content`` deltas before the answer's ``content`` ones.
        An error after the answer started is an event with OpenAI's error object (the client raises it)."""
        base = {**base, "object": "chat.completion.chunk"}
        split = ThinkingStream() if thinking else None

        def chunk(delta: dict, finish_reason: str | None = None) -> str:
            return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

        yield chunk({"role": "assistant", "content": ""})
        async for event in _events(job):
            if event[0] == "text":
                for name, text in split.feed(event[1]) if split else [("content", event[1])]:
                    yield chunk({name: text})
            elif event[0] == "end":
                for name, text in split.finish() if split else []:
                    yield chunk({name: text})
                yield chunk({}, event[1])
                if include_usage:
                    yield _sse({**base, "choices": [], "usage": _usage(prompt_tokens, event[2])})
            else:
                yield _sse(json.loads(ApiError(event[1], event[2]).body()))
        yield "data: [DONE]\n\n"

    async def _whole(job: Job, base: dict, prompt_tokens: int, request, thinking: bool):
        """The whole answer, or nothing when the client leaves first (the job is then cancelled)."""
        texts, end = [], None

        async def collect():
            nonlocal end
            async for event in _events(job):
                if event[0] == "text":
                    texts.append(event[1])
                else:
                    end = event

        async def client_left():
            while (await request.receive())["type"] != "http.disconnect":
                pass

        collecting, leaving = asyncio.create_task(collect()), asyncio.create_task(client_left())
        done, _ = await asyncio.wait({collecting, leaving}, return_when=asyncio.FIRST_COMPLETED)
        for task in (collecting, leaving):
            task.cancel()
        if collecting not in done:  # nobody is waiting for this answer any more
            with contextlib.suppress(asyncio.CancelledError):
                await collecting
            return Response(status_code=499)  # nginx's "client closed request", for the log
        if end[0] == "error":
            raise ApiError(end[1], end[2])
        message = {"role": "assistant", **reply_message("".join(texts), thinking)}
        choice = {"index": 0, "message": message, "finish_reason": end[1]}
        answer = {**base, "object": "chat.completion", "choices": [choice], "usage": _usage(prompt_tokens, end[2])}
        return JSONResponse(answer)

    async def api_error(request, err: ApiError):
        return _error_response(err)

    async def http_error(request, err):
        message = "not found" if err.status_code == 404 else err.detail
        return _error_response(ApiError(err.status_code, f"{request.method} {request.url.path}: {message}"))

    async def server_error(request, err):
        return _error_response(ApiError(500, one_line(err)))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        yield
        worker.close()
        worker.thread.join(timeout=args.shutdown_timeout)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
    handlers = {ApiError: api_error, 404: http_error, 405: http_error, Exception: server_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    return RequestGuard(app, args.hosts(), args.api_key, limits.max_body_bytes)


def main(args: ServeArguments, limits: RequestLimits) -> int:
    """Check and load the checkpoint (exit code 2 with one line if it cannot be served), serve until Ctrl-C."""
    try:
        files = check_checkpoint(args.model_name_or_path)
    except CheckpointError as err:
        print(f"error: cannot serve {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    import uvicorn

    from utils.generation import SAMPLING_DEFAULTS

    loading = time.perf_counter()
    try:
        served = load_served(args, files)
    except CheckpointError as err:
        print(f"error: cannot serve {err}", file=sys.stderr)
        return 2
    loaded = time.perf_counter() - loading
    worker = GenerationWorker(served.model, served.tokenizer, args.max_waiting, args.request_timeout)
    app = build_app(served, args, limits, worker)
    defaults = files.generation_config
    sampling = " ".join(f"{key}={defaults[key]}" for key in SAMPLING_DEFAULTS if key in defaults) or "none (greedy)"
    model = served.model
    print(
        f"serving {files.path} (stage: {files.stage or 'unknown'}) as model '{served.name}' on {model.device} "
        f"({str(model.dtype).removeprefix('torch.')})",
        flush=True,
    )
    print(f"sampling defaults (generation_config.json): {sampling}", flush=True)
    print(
        f"context limit: {served.context_limit} tokens ({served.context_source}); one answer at a time, "
        f"{args.max_waiting} may wait, {args.request_timeout:g} s each at most",
        flush=True,
    )
    print(
        f"accepted Host names: {', '.join(args.hosts())}; API key: {'required' if args.api_key else 'none'}",
        flush=True,
    )
    if args.host not in LOOPBACK and not args.api_key:
        print(
            f"warning: listening on {args.host} without an API key: anyone who can reach it can use it "
            f"(set {API_KEY_ENV})",
            flush=True,
        )
    print(f"base URL: {local_url(args.host, args.port, '/v1')}", flush=True)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                print(
                    f"ready in {time.perf_counter() - STARTED:.1f} s (of which loading and checking the model "
                    f"{loaded:.1f} s, the rest mostly imports)",
                    flush=True,
                )

        def handle_exit(self, sig, frame):
            worker.close()  # running answers end now, so the connections close before the shutdown timeout
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        lifespan="on",
        http=slow_client_protocol(limits.read_timeout),
        limit_concurrency=args.max_connections,
        timeout_graceful_shutdown=args.shutdown_timeout,
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        Server(config).run()
    return 0


def parse_serve_args(argv: list[str] | None = None) -> tuple[ServeArguments, RequestLimits]:
    from utils.train.args import parse_args  # imports transformers: after the Hub is switched off above

    return tuple(parse_args((ServeArguments, RequestLimits), argv))


def exit_now(code: int) -> None:
    """Flush and end the process without the interpreter's teardown: once the server has shut down (answers cut,
    connections closed, the worker ended) nothing is left to clean up, and unloading torch and transformers took
    5-12 s on a busy 2-core machine, which made Ctrl-C look ignored."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main(*parse_serve_args()))
