"""Serve a checkpoint with an OpenAI-compatible API: ``transformers serve``'s own app, behind ``RequestGuard``.

    python -m tools.serve --model_name_or_path results/dpo               # -> base URL: http://127.0.0.1:8000/v1
    python -m tools.serve --model_name_or_path results/sft --port 8001 --device cuda --served_model_name mini
    bash run.sh serve --model_name_or_path results/dpo                    # the same, from the repository root

Then any OpenAI client talks to it, e.g. ``openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")``
and ``client.chat.completions.create(model="dpo", messages=[...], stream=True)``. ``python -m tools.web`` is a
chat page for it; ``python -m tools.chat_launcher`` starts both.

The model is loaded once, before the server listens (``/health`` answers 200 when it is ready). Prompts go through
the checkpoint's own chat template; sampling defaults come from its ``generation_config.json`` (for checkpoints
trained here, ``utils.generation.SAMPLING_DEFAULTS``); an answer ends at ``<|im_end|>``, which clients never see.
The server listens on 127.0.0.1 (this machine only) unless ``--host`` says otherwise; it has no authentication.
Nothing is downloaded: the Hugging Face Hub is switched off before transformers is imported.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from utils import WEIGHT_FILES
from utils.run_info import read_run_info

# Before huggingface_hub is imported (it reads them once): a name that is not our folder must fail at once, not
# retry the Hub for minutes inside the server's event loop, and the CLI's once-a-day PyPI version check stays off.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_UPDATE_CHECK"] = "1"

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class ServeArguments:
    model_name_or_path: str = field(default="results/dpo", metadata={"help": "The checkpoint folder to serve."})
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Listen address: 127.0.0.1 = this machine only (0.0.0.0 opens it to the network)."},
    )
    port: int = field(default=8000, metadata={"help": "Listen port."})
    served_model_name: str | None = field(
        default=None, metadata={"help": "The model name clients use (default: the folder's name, e.g. 'dpo')."}
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N."})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (fp32 on CPU, bf16 on Ampere+, fp16 on older GPUs), float32, bfloat16, float16."},
    )
    max_new_tokens: int = field(
        default=512, metadata={"help": "Longest answer when a request gives no max_tokens (transformers: 1024)."}
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


class CheckpointError(ValueError):
    """The folder cannot be served; the message says why."""


@dataclass
class Checkpoint:
    path: str  # absolute
    model_type: str
    stage: str | None  # pt / sft / dpo for checkpoints trained here (run_info.json), None for others
    generation_config: dict  # generation_config.json: the sampling defaults the server answers with ({}: none)


def _json_object(file: Path) -> dict:
    """The JSON object in ``file``; {} when it is missing, unreadable or not an object."""
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _has_chat_template(path: Path) -> bool:
    in_config = _json_object(path / "tokenizer_config.json").get("chat_template")
    return (path / "chat_template.jinja").is_file() or bool(in_config)


def check_checkpoint(folder: str | os.PathLike, chat_template: bool = True) -> Checkpoint:
    """The servable chat checkpoint in ``folder``, or ``CheckpointError`` naming what is missing (the chat template
    only when ``chat_template``: a benchmark scores a PT checkpoint on raw text).

    Runs before anything heavy is imported, so a wrong path fails in a second with one line, not with a
    transformers traceback after the imports."""
    path = Path(folder)
    if not path.exists():
        raise CheckpointError(f"{path}: no such folder")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder (pass the checkpoint folder, not a file in it)")
    config_file = path / "config.json"
    if not config_file.is_file():
        inside = sorted(p.name for p in path.iterdir() if (p / "config.json").is_file())
        hint = f"; these sub-folders are checkpoints: {', '.join(inside[:5])}" if inside else ""
        raise CheckpointError(f"{path}: not a checkpoint, no config.json{hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{config_file}: unreadable ({err})") from err
    if not isinstance(config, dict) or "model_type" not in config:
        raise CheckpointError(f"{config_file}: no model_type, not a transformers model config")
    if not any((path / name).is_file() for name in WEIGHT_FILES) and not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{path}: no weights (expected {' or '.join(WEIGHT_FILES[:2])})")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise CheckpointError(f"{path}: no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    if chat_template and not _has_chat_template(path):
        raise CheckpointError(f"{path}: the tokenizer has no chat template (chat_template.jinja)")
    stage = (read_run_info(path) or {}).get("stage")
    return Checkpoint(str(path.resolve()), config["model_type"], stage, _json_object(path / "generation_config.json"))


def local_url(host: str, port: int, path: str = "") -> str:
    """The URL a client on this machine uses (a server listening on every address is reached on 127.0.0.1)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def resolve_device_and_dtype(device: str, dtype: str) -> tuple[str, str]:
    """``auto`` settled: the GPU if there is one; the precision that device computes in (``inference_dtype``)."""
    from utils.train.hardware import inference_dtype, resolve_device

    device = resolve_device(device)
    if dtype == "auto":
        dtype = str(inference_dtype(device)).removeprefix("torch.")
    return device, dtype


def build_app(args: ServeArguments, checkpoint: Checkpoint):
    """``RequestGuard`` around the FastAPI app ``transformers serve`` builds, pinned to ``checkpoint``.

    Loads the model (blocking, once). Returns ``(app, served_model_name)``.
    """
    # transformers' serving internals are not a public API; this is the one place that imports them (pinned by
    # transformers==5.24.0 in requirements.txt; tests/test_serve.py fails first, naming them, when they move).
    # `transformers serve` builds its app and runs uvicorn in one constructor (Serve.__init__) with no way to wrap
    # the app, so this does what that constructor does for one pinned model, minus starting uvicorn.
    from transformers.cli.serving.chat_completion import (
        ChatCompletionHandler,
        TransformersCompletionCreateParamsStreaming,
    )
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState, set_torch_seed
    from transformers.utils import logging as hf_logging

    from tools.request_guard import RequestGuard

    # transformers at info prints every config it loads; its request lines are warnings.
    transformers_level = "warning" if args.log_level == "info" else args.log_level
    hf_logging.get_logger("transformers").setLevel(hf_logging.log_levels[transformers_level])
    if args.seed is not None:
        set_torch_seed(args.seed)
    device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    manager = ModelManager(device=device, dtype=dtype, force_model=checkpoint.path)
    state = GenerationState(continuous_batching=False, compile=False, cb_config=None)
    app = build_server(
        manager,
        ChatCompletionHandler(model_manager=manager, generation_state=state, chat_template_kwargs={}),
        completion_handler=CompletionHandler(model_manager=manager, generation_state=state),
        response_handler=ResponseHandler(model_manager=manager, generation_state=state, chat_template_kwargs={}),
        transcription_handler=TranscriptionHandler(manager, state),
        systemone_handler=SystemOneHandler(
            model_manager=manager, generation_state=state, chat_template_kwargs={}, decision_config=None
        ),
        generation_state=state,
    )
    name = args.served_model_name or Path(checkpoint.path).name
    # The request fields transformers understands; anything else gets a 400 from the guard, not transformers' 422.
    allowed = TransformersCompletionCreateParamsStreaming.__mutable_keys__
    return RequestGuard(app, checkpoint.path, name, allowed, default_max_tokens=args.max_new_tokens), name


def main(args: ServeArguments) -> int:
    """Check the folder (exit code 2 with one line if it is not a checkpoint), load the model, serve until Ctrl-C."""
    try:
        checkpoint = check_checkpoint(args.model_name_or_path)
    except CheckpointError as err:
        print(f"error: cannot serve {err}", file=sys.stderr)
        return 2
    import uvicorn

    from utils.generation import SAMPLING_DEFAULTS

    app, name = build_app(args, checkpoint)
    defaults = checkpoint.generation_config
    sampling = " ".join(f"{key}={defaults[key]}" for key in SAMPLING_DEFAULTS if key in defaults) or "none (greedy)"
    print(f"serving {checkpoint.path} (stage: {checkpoint.stage or 'unknown'}) as model '{name}'", flush=True)
    print(f"sampling defaults (generation_config.json): {sampling}", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: other machines can use this server, without a password", flush=True)
    print(f"base URL: {local_url(args.host, args.port, '/v1')}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def parse_serve_args(argv: list[str] | None = None) -> ServeArguments:
    from utils.train.args import parse_args  # imports transformers: after the Hub is switched off above

    return parse_args((ServeArguments,), argv)[0]


if __name__ == "__main__":
    sys.exit(main(parse_serve_args()))
