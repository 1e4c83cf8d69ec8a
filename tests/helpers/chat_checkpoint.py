"""A tiny chat checkpoint for the serving tests, and the child processes (server, web page) they start.

``make_chat_checkpoint`` trains a tiny Qwen2 for a few dozen steps to answer every chat with ``ANSWER`` and stop;
it is saved the way the stages save (``default_generation_config``, ``make_portable``, ``run_info.json`` with the
``max_length`` SFT trained at, ``TRAINED_LENGTH``, which the server takes as its context limit).
``make_endless_checkpoint`` is a copy whose ``generation_config.json`` suppresses the end tokens: it runs on to
``max_tokens``, so a streamed answer visibly grows.

Servers: ``chat_server`` serves the chat checkpoint with the default settings; ``guarded_server`` serves the endless
one with an API key, an extra allowed host, one waiting place, a 2-second time limit per answer and a 2-second read
timeout, so that the protections show in seconds.

The fixtures are loaded with ``pytest_plugins``, so one server serves both test files. PYTEST_DONT_REWRITE: the
test modules import this module before ``pytest_plugins`` registers it (and it holds no asserts to rewrite).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT
from utils.data.chat import encode_chat
from utils.data.collate import IGNORE_INDEX
from utils.generation import default_generation_config
from utils.modeling import ModelShapeArguments, build_model
from utils.run_info import write_run_info
from utils.tokenizer import load_tokenizer
from utils.train.portable import make_portable

ANSWER = "Hello!"
TRAINED_LENGTH = 128  # the max_length recorded in run_info.json, as SFT records its own
API_KEY = "test-key-0123"
ALLOWED_HOST = "mini.example"
CHATS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ANSWER}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": ANSWER},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": ANSWER},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": ANSWER},
    ],
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": ANSWER}],
]
# Hidden 128 x 4 layers: trains in about a second, and streams slowly enough (a few hundred tokens per second
# through the server) for a browser to see an answer grow.
SHAPE = ModelShapeArguments(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    vocab_size=1024,
    max_position_embeddings=2048,
)
# Children get one thread each: the tests share two cores with the server and the browser.
CHILD_ENV = dict(
    os.environ,
    OMP_NUM_THREADS="1",
    PYTHONUNBUFFERED="1",
    GRADIO_ANALYTICS_ENABLED="False",
    HF_HUB_OFFLINE="1",
    NO_PROXY="127.0.0.1,localhost",
)


def make_chat_checkpoint(tokenizer_dir: str | Path, out: str | Path, steps: int = 60) -> Path:
    """Train on ``CHATS`` (loss on the answers and their ``<|im_end|>`` only) and save like a stage does."""
    torch.manual_seed(0)
    tokenizer = load_tokenizer(tokenizer_dir)
    model = build_model(
        SHAPE,
        attn_implementation="sdpa",
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    encoded = [encode_chat(tokenizer, chat, max_length=None) for chat in CHATS]
    width = max(len(e.input_ids) for e in encoded)
    pad = [width - len(e.input_ids) for e in encoded]
    input_ids = torch.tensor([e.input_ids + [tokenizer.pad_token_id] * n for e, n in zip(encoded, pad)])
    labels = torch.tensor([e.labels + [IGNORE_INDEX] * n for e, n in zip(encoded, pad)])
    attention_mask = torch.tensor([[1] * len(e.input_ids) + [0] * n for e, n in zip(encoded, pad)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # One thread: on two shared, busy cores, two threads made these small steps 10x slower (3 s -> 31 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    out = Path(out)
    model.generation_config = default_generation_config(tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    make_portable(out)
    write_run_info(out, "sft", SftLength())
    return out


@dataclass
class SftLength:
    """The argument that SFT's run_info.json records for the sequence length it trained at."""

    max_length: int = TRAINED_LENGTH


def make_endless_checkpoint(chat_checkpoint: Path, out: str | Path) -> Path:
    """The chat checkpoint with every special token suppressed in ``generation_config.json``."""
    out = Path(shutil.copytree(chat_checkpoint, out))
    specials = load_tokenizer(out).all_special_ids
    config = json.loads((out / "generation_config.json").read_text())
    (out / "generation_config.json").write_text(json.dumps({**config, "suppress_tokens": specials}, indent=2))
    return out


def free_ports(count: int) -> list[int]:
    """``count`` different ports that nothing listens on (held together while chosen, so none repeats)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# Opens URLs on this machine without any proxy the environment names.
open_direct = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status ``url`` answers with, or None when nothing listens there."""
    try:
        with open_direct(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


class Child:
    """A ``python -m <module>`` child whose output goes to ``log``; ``wait_ready`` waits for a 200 from a URL."""

    def __init__(self, module: str, args: list[str], log: Path, env: dict | None = None):
        self.log = log
        self._log = open(log, "wb")
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**CHILD_ENV, **(env or {})},
            cwd=ROOT,
        )

    def wait_ready(self, url: str, timeout: float = 120.0) -> float:
        """Seconds from start until ``url`` answered 200; fails with the child's log if it died or hung."""
        while http_status(url) != 200:
            if self.popen.poll() is not None:
                raise RuntimeError(f"exited with {self.popen.returncode} before {url} was ready:\n{self.output()}")
            if time.perf_counter() - self.started > timeout:
                self.stop()
                raise TimeoutError(f"{url} not ready after {timeout:.0f}s:\n{self.output()}")
            time.sleep(0.1)
        return time.perf_counter() - self.started

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        """Ctrl-C (SIGINT), then SIGKILL if it hangs; returns the exit code."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


def start_server(checkpoint: Path, log: Path, *extra: str, env: dict | None = None) -> tuple[Child, str]:
    """``python -m tools.serve`` on a free port, ready; returns the child and its base URL."""
    (port,) = free_ports(1)
    server = Child("tools.serve", ["--model_name_or_path", str(checkpoint), "--port", str(port), *extra], log, env)
    server.wait_ready(f"http://127.0.0.1:{port}/health")
    return server, f"http://127.0.0.1:{port}/v1"


@pytest.fixture(scope="session")
def chat_checkpoint(small_tokenizer_dir, tmp_path_factory) -> Path:
    return make_chat_checkpoint(small_tokenizer_dir, tmp_path_factory.mktemp("serve") / "chat")


@pytest.fixture(scope="session")
def chat_server(chat_checkpoint, tmp_path_factory):
    """The chat checkpoint served as model 'mini': yields ``(child, base_url)``."""
    pytest.importorskip("uvicorn", reason="requirements/serve.txt is not installed")
    server, base_url = start_server(
        chat_checkpoint, tmp_path_factory.mktemp("serve") / "serve.log", "--served_model_name", "mini"
    )
    yield server, base_url
    server.stop()


@pytest.fixture(scope="session")
def endless_checkpoint(chat_checkpoint, tmp_path_factory) -> Path:
    return make_endless_checkpoint(chat_checkpoint, tmp_path_factory.mktemp("serve") / "endless")


@pytest.fixture(scope="module")
def guarded_server(endless_checkpoint, tmp_path_factory):
    """The endless checkpoint served with an API key (from the environment), ``ALLOWED_HOST``, a context of 2048
    tokens, one waiting place, 2 s per answer and a 2 s read timeout: yields ``(child, base_url)``."""
    pytest.importorskip("uvicorn", reason="requirements/serve.txt is not installed")
    flags = ["--allowed_hosts", ALLOWED_HOST, "--context_limit", "2048", "--max_waiting", "1"]
    flags += ["--request_timeout", "2", "--read_timeout", "2", "--shutdown_timeout", "1"]
    log = tmp_path_factory.mktemp("serve") / "guarded.log"
    server, base_url = start_server(endless_checkpoint, log, *flags, env={"MINI_QWEN_API_KEY": API_KEY})
    yield server, base_url
    server.stop()
