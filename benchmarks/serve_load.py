"""The model server's cold start, and its answers under load while hostile requests arrive, on 127.0.0.1.

    python -m benchmarks.serve_load                                   # a tiny untrained model (CPU, ~2 min)
    python -m benchmarks.serve_load --model_name_or_path results/dpo  # a trained checkpoint

Cold start: ``python -m tools.serve`` is started ``--starts`` times; each time, the seconds until ``/health``
answers 200 (imports, loading, the start-up checks), and the server's own split of them.

Load: the last server stays up and ``--clients`` threads send ``--requests`` requests in all, twice. First only
normal ones (a short chat, ``--max_tokens`` tokens, every other one streamed); then the same number with five of
them replaced by hostile ones, one of each class: a prompt of 40,000 words (past the context limit), 40,001
one-letter turns (1.4 MB), a 40,000-character stop string, JSON nested 100,000 deep, and a ``text/plain`` post from
a foreign web page; meanwhile a slow-loris connection sends one header line a second. Printed: per class the
statuses and the latency (median, 95th percentile, max), the normal requests' figures with and without the hostile
ones side by side, when the slow connection was dropped, and the server's resident memory before, after, and at
its peak.

Without ``--model_name_or_path`` the model is a random 2-layer Qwen2 with the Qwen2.5 tokenizer, built in a
temporary folder: its answers are noise that runs to ``--max_tokens``, which is what a load test needs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from utils import REPO_ROOT

HOSTILE = (
    "prompt of 40,000 words",
    "40,001 one-letter turns",
    "40,000-character stop",
    "JSON nested 100,000 deep",
    "text/plain from a web page",
)
NORMAL = "normal"
CHAT = [{"role": "user", "content": "你好，请介绍一下你自己。Who are you?"}]


def make_tiny_checkpoint(folder: Path) -> Path:
    """A random 2-layer Qwen2 with the Qwen2.5 tokenizer, saved as the stages save it."""
    from utils.generation import default_generation_config
    from utils.modeling import ModelShapeArguments, build_model
    from utils.run_info import write_run_info
    from utils.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer
    from utils.train.portable import make_portable

    tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
    shape = ModelShapeArguments(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=151936,
        max_position_embeddings=2048,
    )
    model = build_model(
        shape, bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    model.generation_config = default_generation_config(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    make_portable(folder)
    write_run_info(folder, "sft")
    return folder


class Server:
    """``python -m tools.serve`` on a free port; ``ready_s``: seconds from start to ``/health`` answering 200."""

    def __init__(self, checkpoint: Path, extra: list[str]):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "tools.serve",
            "--model_name_or_path",
            str(checkpoint),
            "--port",
            str(self.port),
            *extra,
        ]
        started = time.perf_counter()
        self.popen = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.popen.stdout), daemon=True).start()
        while send(self.port, "GET", "/health")[0] != 200:
            if self.popen.poll() is not None:
                raise SystemExit(f"the server exited with {self.popen.returncode}:\n{''.join(self.lines)}")
            time.sleep(0.05)
        self.ready_s = time.perf_counter() - started
        # CPU seconds the start took (user + system): what the wall time is on an idle machine, where the start is
        # one busy thread; on a shared one the wall time also holds the waits for a core.
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        self.cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        while not any(line.startswith("ready in") for line in self.lines):  # printed right after it listens
            time.sleep(0.05)
        self.own_report = next(line.strip() for line in self.lines if line.startswith("ready in"))
        self.serving = next(line.strip() for line in self.lines if line.startswith("serving "))

    def memory_mb(self) -> dict[str, float]:
        """Resident memory now and at its peak, from /proc (Linux)."""
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        values = {
            line.split(":")[0]: int(line.split()[1]) / 1024
            for line in status.splitlines()
            if line.startswith(("VmRSS", "VmHWM"))
        }
        return {"rss_mb": values["VmRSS"], "peak_mb": values["VmHWM"]}

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGINT)
        self.popen.wait(60)


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and body of the HTTP answer on ``sock`` (Content-Length, chunked, or until closed)."""
    stream = sock.makefile("rb")
    status_line = stream.readline()
    if not status_line:
        return 0, b""
    headers = {}
    while (line := stream.readline().strip()) != b"":
        key, _, value = line.decode().partition(":")
        headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        return int(status_line.split()[1]), stream.read(int(headers["content-length"]))
    body = b""
    while (size := int(stream.readline().strip() or b"0", 16)) > 0:
        body += stream.read(size)
        stream.readline()
    return int(status_line.split()[1]), body


def send(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, float]:
    """One request on its own connection; the answer is read while the body is still going out (a server may
    refuse a body before it has arrived). Returns (status, seconds); status 0 when nothing came back."""
    started = time.perf_counter()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=300)
    except OSError:
        return 0, 0.0
    head = {
        "Host": f"127.0.0.1:{port}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Connection": "close",
        **(headers or {}),
    }
    raw = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"

    def write() -> None:
        try:
            sock.sendall(raw.encode() + body)
        except OSError:  # refused and closed before the whole body was sent
            pass

    writer = threading.Thread(target=write)
    writer.start()
    try:
        status, _ = read_answer(sock)
    except OSError:
        status = 0
    finally:
        sock.close()
        writer.join()
    return status, time.perf_counter() - started


def request_for(kind: str, index: int, max_tokens: int) -> tuple[bytes, dict]:
    """The body and extra headers of one request of ``kind``."""
    normal = {"messages": CHAT, "max_tokens": max_tokens, "stream": index % 2 == 0}
    if kind == NORMAL:
        return json.dumps(normal).encode(), {}
    if kind == HOSTILE[0]:
        return json.dumps({**normal, "messages": [{"role": "user", "content": "hello world " * 20_000}]}).encode(), {}
    if kind == HOSTILE[1]:
        return json.dumps({**normal, "messages": [{"role": "user", "content": "a"}] * 40_001}).encode(), {}
    if kind == HOSTILE[2]:
        return json.dumps({**normal, "stop": "x" * 40_000}).encode(), {}
    if kind == HOSTILE[3]:
        return b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}
    return json.dumps(normal).encode(), {"Content-Type": "text/plain", "Origin": "http://attacker.example"}


def slow_loris(port: int, result: dict) -> None:
    """One header line a second until the server closes the connection (or 60 s pass)."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.settimeout(1.0)
        while time.perf_counter() - started < 60:
            try:
                if sock.recv(1024) == b"":
                    break
            except TimeoutError:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    break
    result["dropped_after_s"] = round(time.perf_counter() - started, 1)


def run_load(port: int, kinds: list[str], clients: int, max_tokens: int) -> dict[str, list[tuple[int, float]]]:
    """Send one request per entry of ``kinds`` from ``clients`` threads; statuses and seconds per kind."""

    def one(item: tuple[int, str]) -> tuple[str, int, float]:
        index, kind = item
        body, headers = request_for(kind, index, max_tokens)
        return (kind, *send(port, "POST", "/v1/chat/completions", body, headers))

    results: dict[str, list[tuple[int, float]]] = {}
    with ThreadPoolExecutor(clients) as pool:
        for kind, status, seconds in pool.map(one, enumerate(kinds)):
            results.setdefault(kind, []).append((status, seconds))
    return results


def summary(results: list[tuple[int, float]]) -> dict:
    seconds = sorted(s for _, s in results)
    statuses: dict[int, int] = {}
    for status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    p95 = seconds[min(len(seconds) - 1, round(0.95 * (len(seconds) - 1)))]
    return {
        "count": len(results),
        "statuses": statuses,
        "median_s": round(statistics.median(seconds), 3),
        "p95_s": round(p95, 3),
        "max_s": round(seconds[-1], 3),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=None, help="Checkpoint to serve (default: a tiny random one).")
    parser.add_argument("--starts", type=int, default=3, help="Cold starts to time.")
    parser.add_argument("--requests", type=int, default=50, help="Requests per load run (5 hostile in the second).")
    parser.add_argument("--clients", type=int, default=10, help="Concurrent clients.")
    parser.add_argument("--max_tokens", type=int, default=16, help="Answer length of the normal requests.")
    parser.add_argument("--server_args", nargs="*", default=[], help="More tools.serve flags, e.g. --max_waiting 16.")
    parser.add_argument("--json", default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    if args.requests < len(HOSTILE) + 1 or args.starts < 1 or args.clients < 1:
        parser.error(f"--requests must be more than {len(HOSTILE)}; --starts and --clients at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(args.model_name_or_path or make_tiny_checkpoint(Path(tmp) / "tiny"))
        # Requests queue behind one worker: every normal request of a run may wait at once.
        extra = ["--max_waiting", str(args.requests), *args.server_args]
        servers = []
        for _ in range(args.starts):
            if servers:
                servers[-1].stop()
            servers.append(Server(checkpoint, extra))
        server = servers[-1]
        try:
            before = server.memory_mb()
            normal_only = run_load(server.port, [NORMAL] * args.requests, args.clients, args.max_tokens)
            step = args.requests // len(HOSTILE)
            kinds = [NORMAL] * args.requests
            for i, kind in enumerate(HOSTILE):
                kinds[i * step + step // 2] = kind
            loris: dict = {}
            loris_thread = threading.Thread(target=slow_loris, args=(server.port, loris))
            loris_thread.start()
            mixed = run_load(server.port, kinds, args.clients, args.max_tokens)
            loris_thread.join()
            after = server.memory_mb()
        finally:
            server.stop()
    figures = {
        "checkpoint": args.model_name_or_path or "tiny random Qwen2 (2 layers, hidden 64, Qwen2.5 tokenizer)",
        "cold_start_s": [round(s.ready_s, 1) for s in servers],
        "cold_start_cpu_s": [round(s.cpu_s, 1) for s in servers],
        "load_average": os.getloadavg()[0],
        "serving": server.serving,
        "server_reports": [s.own_report for s in servers],
        "normal_alone": summary(normal_only[NORMAL]),
        "normal_with_hostile": summary(mixed[NORMAL]),
        "hostile": {kind: summary(mixed[kind]) for kind in HOSTILE},
        "slow_loris_dropped_after_s": loris.get("dropped_after_s"),
        "memory_mb": {
            "before": round(before["rss_mb"]),
            "after": round(after["rss_mb"]),
            "peak": round(after["peak_mb"]),
        },
    }
    print(report(figures, args))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, ensure_ascii=False))
    return figures


def report(figures: dict, args) -> str:
    starts = figures["cold_start_s"]
    lines = [
        f"checkpoint: {figures['checkpoint']}",
        f"server: {figures['serving']}",
        f"cold start (python -m tools.serve until /health answers 200), {len(starts)} runs: median "
        f"{statistics.median(starts):.1f} s (runs: {', '.join(f'{s:.1f}' for s in starts)}), of CPU time "
        f"{statistics.median(figures['cold_start_cpu_s']):.1f} s; load average {figures['load_average']:.1f} on "
        f"{os.cpu_count()} cores",
        f"  the server's own report, last run: {figures['server_reports'][-1]}",
        f"load: {args.clients} clients, {args.requests} requests per run, normal answers of {args.max_tokens} tokens",
        f"{'':34} {'count':>5}  {'statuses':<14} {'median':>8} {'p95':>8} {'max':>8}",
    ]
    rows = [
        ("normal, alone", figures["normal_alone"]),
        ("normal, with the hostile ones", figures["normal_with_hostile"]),
    ]
    rows += [(f"  {kind}", row) for kind, row in figures["hostile"].items()]
    for name, row in rows:
        statuses = " ".join(f"{status}x{count}" for status, count in sorted(row["statuses"].items()))
        lines.append(
            f"{name:34} {row['count']:>5}  {statuses:<14} {row['median_s']:>7.2f}s {row['p95_s']:>7.2f}s "
            f"{row['max_s']:>7.2f}s"
        )
    memory = figures["memory_mb"]
    lines.append(
        f"slow-loris connection (a header line a second): dropped after {figures['slow_loris_dropped_after_s']} s"
    )
    lines.append(
        f"server memory (RSS): {memory['before']} MB before, {memory['after']} MB after, peak {memory['peak']} MB"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
