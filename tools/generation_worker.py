"""One model, one thread: the generation worker behind ``tools.serve``, and the text of an answer as it grows.

``GenerationWorker`` owns the model. Requests come in as ``Job``s on a queue that the server bounds
(``max_waiting``); the worker's thread takes them one at a time, in order, and generates with
``model.generate``, the checkpoint's generation config and one stopping criterion, ``AnswerWatcher``, which sees
every new token: it turns the ids into text (``AnswerText``: whole characters, never a piece of a stop string),
hands each piece to the job, and stops generation at a stop string, at the job's time limit, when the job's client
has left, or when the server is stopping. One answer at a time keeps the memory to one request's; the time limit
keeps one request from holding the others for long.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from tools.request_guard import ApiError

logger = logging.getLogger(__name__)


class AnswerText:
    """The text of generated token ids, handed out piece by piece as they come: whole characters only (a
    byte-level token may end inside one), and never a piece of a stop string. Once a stop string appears,
    ``stopped`` is set and the text ends before it.

    Decoding looks at the ids since the last whole character only (as vLLM and TGI do), so each token costs the
    same however long the answer grows.
    """

    def __init__(self, tokenizer, stops: list[str]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.start = self.done = 0  # ids[start:done] are decoded into the end of `text`
        self.text = ""
        self.sent = 0  # characters of `text` handed out
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Take one token; return the text that may be handed out now ("" while a character or a possible stop
        string is incomplete)."""
        self.ids.append(token_id)
        before = self._decode(self.ids[self.start : self.done])
        after = self._decode(self.ids[self.start :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.text += after[len(before) :]
            self.start, self.done = self.done, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The rest, once generation ended (a character left incomplete shows as U+FFFD)."""
        after = self._decode(self.ids[self.start :])
        before = self._decode(self.ids[self.start : self.done])
        self.text += after[len(before) :]
        self.start = self.done = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        found = [at for stop in self.stops if (at := self.text.find(stop, max(0, self.sent - len(stop) + 1))) >= 0]
        if found:
            end = min(found)
            self.stopped = True
            self.text = self.text[:end]
        else:
            hold = 0 if final else self._held_back()
            end = max(self.sent, len(self.text) - hold)
        piece, self.sent = self.text[self.sent : end], end
        return piece

    def _held_back(self) -> int:
        """How many characters at the end of the text could be the start of a stop string."""
        ends = (n for stop in self.stops for n in range(len(stop) - 1, 0, -1) if self.text.endswith(stop[:n]))
        return max(ends, default=0)


@dataclass
class Job:
    """One answer to generate. The worker thread fills ``events`` on the server's event loop: ``("text", str)``
    pieces, then ``("end", finish_reason, completion_tokens)`` or ``("error", http_status, message)``."""

    prompt: list[int]
    generation_config: object  # transformers.GenerationConfig
    stops: list[str]
    seed: int | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, *event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: the server is stopping, nobody is listening
            self.cancelled.set()


class GenerationWorker:
    """One thread that generates answers one at a time, in order; at most ``max_waiting`` jobs wait for it.

    ``submit`` and the admission count run on the event loop; the thread only generates and emits events. A job
    is cancelled when its client leaves (the thread stops at the next token, or skips it if it has not started).
    ``close`` (on Ctrl-C) ends the running answer at its next token and refuses the waiting ones, so that the
    server stops within seconds however long the answers were.
    """

    def __init__(self, model, tokenizer, max_waiting: int, request_timeout: float):
        self.model, self.tokenizer = model, tokenizer
        self.max_waiting, self.request_timeout = max_waiting, request_timeout
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.admitted = 0  # waiting + running, counted on the event loop
        self.durations: deque[float] = deque(maxlen=16)
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._run, name="generation", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop: the running answer ends at its next token, waiting ones get 503, the thread ends. Safe to call
        from a signal handler, and more than once."""
        if not self.closing.is_set():
            self.closing.set()
            self.jobs.put(None)

    def submit(self, job: Job) -> None:
        """Queue ``job``, or ``ApiError`` 503 with ``Retry-After`` when ``max_waiting`` jobs already wait."""
        if self.admitted > self.max_waiting:
            seconds = round(sum(self.durations) / len(self.durations)) if self.durations else 1
            raise ApiError(
                503,
                f"the server is busy: {self.max_waiting} requests are already waiting; try again",
                code="server_busy",
                headers={"Retry-After": str(max(1, seconds))},
            )
        self.admitted += 1
        self.jobs.put(job)

    def finished(self, seconds: float) -> None:
        """On the event loop, once a job's end was read (or its client left)."""
        self.admitted -= 1
        self.durations.append(seconds)

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.closing.is_set():
                job.emit("error", 503, "the server is stopping")
            elif job.cancelled.is_set():  # its client left while it waited
                job.emit("end", "length", 0)
            else:
                try:
                    self._generate(job)
                except Exception as err:  # one failed answer must not end the worker that answers every request
                    logger.exception("generation failed")
                    job.emit("error", 500, f"{type(err).__name__}: {err}")

    def _generate(self, job: Job) -> None:
        import torch
        from transformers import StoppingCriteriaList

        deadline = time.monotonic() + self.request_timeout
        watcher = AnswerWatcher(job, AnswerText(self.tokenizer, job.stops), deadline, self.closing)
        input_ids = torch.tensor([job.prompt], device=self.model.device)
        if job.seed is not None:
            torch.manual_seed(job.seed)
        try:
            with torch.inference_mode():
                self.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=job.generation_config,
                    stopping_criteria=StoppingCriteriaList([watcher]),
                )
        finally:
            if job.seed is not None:
                torch.seed()  # the next request without a seed is not predictable from this one
        watcher.finish()


class AnswerWatcher:
    """A stopping criterion that sees every new token first: it hands its text to the job, and stops generation on
    a stop string, at the deadline, or when the job is cancelled.

    In transformers 5 the criteria run before a streamer is given the token, so watching here (rather than in a
    streamer) stops on the very token that completed a stop string. Our own stop-string check replaces
    ``stop_strings``: its memory is the strings themselves.
    """

    def __init__(self, job: Job, text: AnswerText, deadline: float, closing: threading.Event):
        self.job, self.text, self.deadline, self.closing = job, text, deadline, closing
        eos = job.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.count = 0
        self.timed_out = False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        token = int(input_ids[0, -1])
        self.count += 1
        piece = self.text.add(token)
        if piece:
            self.job.emit("text", piece)
        self.timed_out = time.monotonic() > self.deadline
        stop = self.text.stopped or self.timed_out or self.job.cancelled.is_set() or self.closing.is_set()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    def finish(self) -> None:
        piece = self.text.finish()
        if piece:
            self.job.emit("text", piece)
        ended = self.text.stopped or (self.text.ids and self.text.ids[-1] in self.eos)
        if self.timed_out and not ended:
            logger.warning("an answer was cut at the time limit (%d tokens)", self.count)
        self.job.emit("end", "stop" if ended else "length", self.count)
