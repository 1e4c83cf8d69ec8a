"""Chat with a checkpoint in the browser: start the model server (``tools.serve``), then the page (``tools.web``).

    python -m tools.chat_launcher --model_name_or_path results/dpo
    # -> model server: http://127.0.0.1:8000/v1
    #    web page:     http://127.0.0.1:7860/     (Ctrl-C stops both)
    bash run.sh web --model_name_or_path results/dpo      # the same, from the repository root

The page starts once the server answers ``/health`` (the model is loaded). ``MINI_QWEN_API_KEY`` set in the
environment reaches both: the server requires the key, the page sends it. Ctrl-C (or SIGTERM) stops the page
and the server; if either dies, the other is stopped too. Both run in their own process groups, so a Ctrl-C
in the terminal reaches only this launcher, which stops them in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

from tools.checkpoint_files import CheckpointError, CheckpointFiles
from tools.serve import check_checkpoint, local_url


@dataclass
class ChatLauncherArguments:
    model_name_or_path: str = field(default="results/dpo", metadata={"help": "The checkpoint folder to chat with."})
    host: str = field(default="127.0.0.1", metadata={"help": "Listen address of both (this machine only)."})
    port: int = field(default=8000, metadata={"help": "Model server port."})
    web_port: int = field(default=7860, metadata={"help": "Web page port."})
    served_model_name: str | None = field(default=None, metadata={"help": "Default: the folder's name."})
    device: str = field(default="auto", metadata={"help": "auto (cuda if available), cpu, cuda or cuda:N."})
    system_prompt: str = field(default="", metadata={"help": "The page's initial system prompt."})
    max_new_tokens: int = field(default=512, metadata={"help": "Default answer length limit, in tokens."})
    start_timeout: float = field(default=600.0, metadata={"help": "Seconds to wait for each to be ready."})


# Both children listen on this machine: a proxy set for the internet must not be asked for them.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def ready(url: str) -> bool:
    try:
        with DIRECT.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_ready(child: subprocess.Popen, url: str, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready(url):
        if child.poll() is not None:
            raise RuntimeError(f"the {what} exited with code {child.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {what} was not ready at {url} after {timeout:.0f} s")
        time.sleep(0.2)


def stop(children: list[subprocess.Popen | None], timeout: float = 10.0) -> None:
    """SIGINT to each, in order (uvicorn and Gradio shut down cleanly on it, as on a Ctrl-C), then wait for all
    together (each takes seconds to exit); SIGKILL what still runs after ``timeout``."""
    running = [child for child in children if child is not None and child.poll() is None]
    for child in running:
        child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for child in running:
        try:
            child.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def slider_defaults(generation_config: dict) -> list[str]:
    """The page's temperature and top-p flags from the checkpoint's sampling defaults (greedy -> temperature 0)."""
    if not generation_config.get("do_sample"):
        return ["--temperature", "0"]
    return [
        flag
        for key in ("temperature", "top_p")
        if key in generation_config
        for flag in (f"--{key}", str(generation_config[key]))
    ]


def child_commands(args: ChatLauncherArguments, checkpoint: CheckpointFiles) -> tuple[list[str], list[str]]:
    """The server's and the page's command lines."""
    serve = [
        sys.executable,
        "-m",
        "tools.serve",
        "--model_name_or_path",
        args.model_name_or_path,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--device",
        args.device,
        "--max_new_tokens",
        str(args.max_new_tokens),
    ]
    if args.served_model_name:
        serve += ["--served_model_name", args.served_model_name]
    web = [
        sys.executable,
        "-m",
        "tools.web",
        "--base_url",
        local_url(args.host, args.port, "/v1"),
        "--host",
        args.host,
        "--port",
        str(args.web_port),
        "--system_prompt",
        args.system_prompt,
        "--max_new_tokens",
        str(args.max_new_tokens),
        *slider_defaults(checkpoint.generation_config),
    ]
    return serve, web


def raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def main(args: ChatLauncherArguments) -> int:
    """0 after Ctrl-C or SIGTERM, 1 if a child failed, 2 if the folder is not a checkpoint."""
    try:
        checkpoint = check_checkpoint(args.model_name_or_path)
    except CheckpointError as err:
        print(f"error: cannot serve {err}", file=sys.stderr)
        return 2
    serve_cmd, web_cmd = child_commands(args, checkpoint)
    signal.signal(signal.SIGTERM, raise_interrupt)  # `kill` and service managers stop both, like Ctrl-C
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server = web = None
    try:
        server = subprocess.Popen(serve_cmd, env=env, start_new_session=True)
        wait_ready(server, local_url(args.host, args.port, "/health"), args.start_timeout, "model server")
        web = subprocess.Popen(web_cmd, env=env, start_new_session=True)
        wait_ready(web, local_url(args.host, args.web_port, "/"), args.start_timeout, "web page")
        print(f"model server: {local_url(args.host, args.port, '/v1')}", flush=True)
        print(f"web page:     {local_url(args.host, args.web_port, '/')}     (Ctrl-C stops both)", flush=True)
        while server.poll() is None and web.poll() is None:
            time.sleep(0.5)
        print("error: the model server or the web page exited; stopping the other", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C while the children stop must not leave one of them running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop([web, server])  # the page first: it stops taking questions for a server that is going away
        print("stopped", flush=True)


def parse_launcher_args(argv: list[str] | None = None) -> ChatLauncherArguments:
    from utils.train.args import parse_args

    return parse_args((ChatLauncherArguments,), argv)[0]


if __name__ == "__main__":
    sys.exit(main(parse_launcher_args()))
