"""One worker thread owns the model; requests wait their turn in a bounded FIFO queue.

The asyncio side submits a ``Job`` and reads its events (text pieces, then a final summary)
from an ``asyncio.Queue`` the worker fills with ``call_soon_threadsafe``. Between tokens the
worker checks whether the job was cancelled (the client went away) or ran past its deadline,
so a departed client frees the model after at most one token.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import logging
import math
import threading
import time
from dataclasses import dataclass, field

from .backend import Sampling

log = logging.getLogger("csound_assistant.serve")


class QueueFull(Exception):
    def __init__(self, retry_after: int, what: str = "the queue"):
        super().__init__(f"the server is busy: {what} is full (retry after {retry_after} s)")
        self.retry_after = retry_after


class QueueTimeout(Exception):
    """The request's deadline passed before the model was free."""


@dataclass
class Result:
    text: str
    finish_reason: str  # stop | length | cancelled | timeout
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    truncated: bool = False
    queued_s: float = 0.0
    prompt_s: float = 0.0  # submit-to-first-token minus queueing
    decode_s: float = 0.0
    decoder: str = "plain"  # runtime/decoder.py: plain | csound
    refused_steps: int = 0  # steps where the decoder refused a token the sampler could take
    stuck_steps: int = 0  # steps where the decoder found no valid token

    @property
    def ttft_s(self) -> float:
        return self.queued_s + self.prompt_s

    @property
    def tokens_per_s(self) -> float:
        n = self.completion_tokens - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


@dataclass(eq=False)
class Job:
    tokens: list[int]
    sampling: Sampling
    deadline: float
    loop: asyncio.AbstractEventLoop
    stop_ids: frozenset = frozenset()
    truncated: bool = False
    clear_cache: bool = False
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    started: bool = False
    result: Result | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def _post(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancel()

    async def wait_started(self) -> None:
        """Wait until the worker takes this job; QueueTimeout if the deadline passes first."""
        while not self.started:
            try:
                kind, value = await asyncio.wait_for(
                    self.events.get(), max(self.deadline - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                self.cancel()
                raise QueueTimeout("timed out waiting for the model") from None
            if kind == "error":
                raise value
            if kind == "done":
                self.result = value
            self.started = True

    async def pieces(self):
        """Yield text pieces; the summary is left in ``self.result``."""
        await self.wait_started()
        while self.result is None:
            kind, value = await self.events.get()
            if kind == "text":
                yield value
            elif kind == "done":
                self.result = value
            elif kind == "error":
                raise value


class ServiceTimes:
    """How long recent jobs held a slot, for an honest ``Retry-After``: the jobs ahead of a
    newcomer drain at ``slots`` per mean service time. Before anything was measured a job is
    assumed to take ``prior`` seconds."""

    def __init__(self, window: int = 32, prior: float = 2.0):
        self.recent = collections.deque(maxlen=window)
        self.prior = prior

    def add(self, seconds: float) -> None:
        self.recent.append(max(0.0, seconds))

    def mean(self) -> float:
        return sum(self.recent) / len(self.recent) if self.recent else self.prior

    def retry_after(self, ahead: int, slots: int = 1) -> int:
        """Whole seconds until ``ahead`` jobs have left ``slots`` slots (at least 1)."""
        return max(1, math.ceil(self.mean() * max(ahead, 1) / max(slots, 1)))


class Metrics:
    """Counters and recent timings for /health and /metrics."""

    def __init__(self, window: int = 200):
        self.counts = collections.Counter()
        self.ttft = collections.deque(maxlen=window)
        self.decode_tps = collections.deque(maxlen=window)
        self.service = ServiceTimes()
        self.started = time.time()

    def record(self, result: Result) -> None:
        self.service.add(result.prompt_s + result.decode_s)
        self.counts["requests_finished"] += 1
        self.counts[f"finish_{result.finish_reason}"] += 1
        self.counts[f"decoder_{result.decoder}"] += 1
        self.counts["decoder_refused_steps"] += result.refused_steps
        self.counts["decoder_stuck_steps"] += result.stuck_steps
        self.counts["prompt_tokens"] += result.prompt_tokens
        self.counts["cached_prompt_tokens"] += result.cached_tokens
        self.counts["completion_tokens"] += result.completion_tokens
        if result.completion_tokens:
            self.ttft.append(result.ttft_s)
        if result.tokens_per_s:
            self.decode_tps.append(result.tokens_per_s)

    def summary(self) -> dict:
        def stats(values):
            if not values:
                return {"mean": None, "p50": None, "p95": None}
            s = sorted(values)
            return {"mean": sum(s) / len(s), "p50": s[len(s) // 2],
                    "p95": s[min(len(s) - 1, int(len(s) * 0.95))]}
        return {"counts": dict(self.counts), "time_to_first_token_s": stats(self.ttft),
                "decode_tokens_per_s": stats(self.decode_tps),
                "service_s": {"mean": self.service.mean(), "n": len(self.service.recent)},
                "uptime_s": time.time() - self.started}


class Engine:
    slots = 1  # jobs on the model at once

    def __init__(self, backend, *, max_queue: int = 16, request_timeout: float = 120.0):
        self.backend = backend
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self.metrics = Metrics()
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    # --- asyncio side ----------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name="llama-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            for job in self._queue:
                job.cancel()
                job._post(("error", QueueTimeout("the server is shutting down")))
            self._queue.clear()
            if self._running:
                self._running.cancel()
            self._cond.notify_all()
        if self._thread:
            self._thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the model (those whose clients left are not counted)."""
        return sum(1 for job in list(self._queue) if not job.cancelled.is_set())

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def in_service(self) -> int:
        return int(self._running is not None)

    def retry_after(self) -> int:
        """Seconds until the jobs now waiting and running are done, from measured times."""
        return self.metrics.service.retry_after(self.queue_depth + self.in_service, self.slots)

    def submit(self, tokens, sampling: Sampling, *, stop_ids=frozenset(), truncated=False,
               clear_cache=False, timeout: float | None = None) -> Job:
        job = Job(tokens=list(tokens), sampling=sampling, loop=asyncio.get_running_loop(),
                  deadline=time.monotonic() + (timeout or self.request_timeout),
                  stop_ids=frozenset(stop_ids), truncated=truncated, clear_cache=clear_cache)
        with self._cond:
            waiting = sum(1 for j in self._queue if not j.cancelled.is_set())
            if waiting >= self.max_queue:
                self.metrics.counts["rejected_queue_full"] += 1
                raise QueueFull(self.metrics.service.retry_after(
                    waiting + self.in_service, self.slots))
            self._queue.append(job)
            self.metrics.counts["requests_submitted"] += 1
            self._cond.notify()
        return job

    # --- worker thread ---------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                self._running = job
            try:
                if not self._expired(job):
                    job._post(("start", None))
                    result = self._run(job)
                    self.metrics.record(result)
                    job._post(("done", result))
            except Exception as exc:  # a backend failure must not kill the worker
                log.exception("generation failed")
                self.metrics.counts["errors"] += 1
                job._post(("error", exc))
            finally:
                with self._cond:
                    self._running = None

    def _expired(self, job: Job) -> bool:
        """Answer a job taken from the queue whose client has left or whose deadline passed
        while it waited; True if so (then it must not run)."""
        if job.cancelled.is_set():
            self.metrics.counts["cancelled_while_queued"] += 1
            job._post(("done", self._result(job, "", "cancelled", 0, 0, 0.0, 0.0)))
        elif time.monotonic() > job.deadline:
            self.metrics.counts["timeout_while_queued"] += 1
            job._post(("error", QueueTimeout("timed out waiting for the model")))
        else:
            return False
        return True

    def _result(self, job, text, reason, n_out, cached, prompt_s, decode_s) -> Result:
        return Result(text=text, finish_reason=reason, prompt_tokens=len(job.tokens),
                      completion_tokens=n_out, cached_tokens=cached, truncated=job.truncated,
                      queued_s=getattr(job, "t_start", job.submitted) - job.submitted,
                      prompt_s=prompt_s, decode_s=decode_s)

    def _run(self, job: Job) -> Result:
        if job.clear_cache:
            self.backend.clear_cache()
        stream = TokenStream(job, self.backend, self.metrics)
        stream.constraint = constraint_for(self.backend, job, stream.max_tokens)
        gen = self.backend.generate(job.tokens, job.sampling, constraint=stream.constraint) \
            if stream.constraint else self.backend.generate(job.tokens, job.sampling)
        cached = self.backend.last_cached_tokens
        reason = None
        try:
            for token in gen:
                reason = stream.feed(token)
                if reason:
                    break
        finally:
            gen.close()
        return stream.finish(reason or "length", cached)


class TokenStream:
    """One job's sampled tokens -> text events: UTF-8 reassembled across tokens, end tokens and
    stop strings (a possible stop's beginning is held back), max_tokens, cancellation and the
    deadline, all checked token by token."""

    def __init__(self, job: Job, backend, metrics: Metrics):
        self.job, self.backend, self.metrics = job, backend, metrics
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = [x for x in job.sampling.stop if x]
        self.max_tokens = min(job.sampling.max_tokens, backend.n_ctx - len(job.tokens))
        self.held, self.out, self.n = "", [], 0
        self.constraint = None  # runtime/decoder.py's state, when the backend has a decoder
        self.t_first = None
        self.stopped_by_string = False
        job.t_start = time.monotonic()

    def feed(self, token: int) -> str | None:
        """Take one sampled token; return the finish reason once the job is done."""
        job, s = self.job, self.job.sampling
        now = time.monotonic()
        if self.t_first is None:
            self.t_first = now
        if job.cancelled.is_set():
            return "cancelled"
        if not s.ignore_eos and (token in job.stop_ids or self.backend.is_eog(token)):
            return "stop"
        self.n += 1
        self.held += self.decoder.decode(self.backend.token_bytes(token))
        cut, hit = _find_stop(self.held, self.stops)
        if hit:
            self.held, self.stopped_by_string = self.held[:cut], True
            return "stop"
        if s.n_indent:
            at, hold = _indent_cut(self.held, s.n_indent)
            if at is not None:
                self.held, self.stopped_by_string = self.held[:at], True
                return "stop"
            cut = max(cut, hold)
        emit, self.held = self.held[: len(self.held) - cut], self.held[len(self.held) - cut:]
        if emit:
            self.out.append(emit)
            job._post(("text", emit))
        if self.n >= self.max_tokens:
            return "length"
        if now > job.deadline or (s.time_limit and now - self.t_first > s.time_limit):
            self.metrics.counts["timeouts"] += 1
            return "length"
        return None

    def finish(self, reason: str, cached: int) -> Result:
        if not self.stopped_by_string:
            self.held += self.decoder.decode(b"", final=True)
        if self.held:
            self.out.append(self.held)
            self.job._post(("text", self.held))
        end = time.monotonic()
        t_first = self.t_first or end
        job = self.job
        return Result(text="".join(self.out), finish_reason=reason,
                      prompt_tokens=len(job.tokens), completion_tokens=self.n,
                      cached_tokens=cached, truncated=job.truncated,
                      queued_s=job.t_start - job.submitted, prompt_s=t_first - job.t_start,
                      decode_s=end - t_first, decoder=getattr(self.backend, "decoder", "plain"),
                      refused_steps=self.constraint.masked_steps if self.constraint else 0,
                      stuck_steps=self.constraint.stuck_steps if self.constraint else 0)


def constraint_for(backend, job: Job, budget: int):
    """The backend's decoder state for this job, which may take ``budget`` tokens (None: plain
    decoding or a fake backend)."""
    make = getattr(backend, "constraint", None)
    return make(job.tokens, job.sampling, budget) if make else None


def _indent_cut(text: str, n_indent: int) -> tuple[int | None, int]:
    """llama.cpp's ``n_indent`` on not-yet-sent text: (index of the newline that starts a line
    indented less than ``n_indent``, or None; how many trailing characters to hold back while
    the last line is still only indentation)."""
    start = 0
    while (newline := text.find("\n", start)) >= 0:
        end = text.find("\n", newline + 1)
        line = text[newline + 1: end if end >= 0 else len(text)]
        body = line.lstrip(" \t")
        if body and len(line) - len(body) < n_indent:
            return newline, 0
        if not body and end < 0:
            return None, len(text) - newline
        start = newline + 1
    return None, 0


def _find_stop(text: str, stops: list[str]) -> tuple[int, bool]:
    """(index of the earliest stop string, True) or (length of the longest tail of ``text``
    that could begin a stop string, False) — that tail is held back."""
    hits = [i for i in (text.find(x) for x in stops) if i >= 0]
    if hits:
        return min(hits), True
    keep = 0
    for x in stops:
        for k in range(min(len(x) - 1, len(text)), keep, -1):
            if text.endswith(x[:k]):
                keep = k
                break
    return keep, False
