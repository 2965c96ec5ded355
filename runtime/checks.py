"""Admission for ``POST /v1/csound/check``: the same rules as generation.

``--check-workers`` sandbox runs at a time; at most ``--max-queue`` requests wait for one
(beyond: 503 with a ``Retry-After`` from measured check times); a request answers within
``--timeout``, waiting included: the sandbox gets ``timeout=min(its own default, the time
left)``, and the sandbox kills Csound at that limit, so the wait for it is bounded too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import time

from .engine import QueueFull, ServiceTimes

GRACE_S = 3.0  # past the sandbox's own limit: starting and cleaning up its process
MIN_RUN_S = 0.2  # less time than this left after waiting: do not start Csound at all


class CheckTimeout(Exception):
    """The request's --timeout passed while it waited for a sandbox slot, or (504) while the
    sandbox was still running past its own limit."""

    def __init__(self, message: str, status: int, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


def default_timeout(fn) -> float:
    """The ``timeout`` a sandbox function uses when given none."""
    return float(inspect.signature(fn).parameters["timeout"].default)


class CheckGate:
    def __init__(self, *, workers: int, max_queue: int, request_timeout: float):
        self.workers, self.max_queue = workers, max_queue
        self.request_timeout = request_timeout
        self.waiting = self.running = 0
        self.service = ServiceTimes()
        self.counts = collections.Counter()
        self._slots: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Call in the serving event loop."""
        self._slots = asyncio.Semaphore(self.workers)

    def retry_after(self) -> int:
        return self.service.retry_after(self.waiting + self.running, self.workers)

    def describe(self) -> dict:
        return {"running": self.running, "waiting": self.waiting, "workers": self.workers,
                "max_queue": self.max_queue, "mean_s": round(self.service.mean(), 3),
                "counts": dict(self.counts)}

    async def run(self, fn, code: str, **kw):
        """``fn(code, timeout=..., **kw)`` in a worker thread, admitted as described above."""
        deadline = time.monotonic() + self.request_timeout
        if self._slots.locked() and self.waiting >= self.max_queue:
            self.counts["rejected_queue_full"] += 1
            raise QueueFull(self.retry_after(), "the Csound check queue")
        await self._acquire(deadline)
        left = deadline - time.monotonic()
        if left < MIN_RUN_S:
            self._slots.release()
            raise self._queued_too_long()
        limit = min(default_timeout(fn), left)
        self.running += 1
        started = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(fn, code, timeout=limit, **kw))

        def finished(_):  # the slot is held until the sandbox really returns
            self.running -= 1
            self.service.add(time.monotonic() - started)
            self._slots.release()

        future.add_done_callback(finished)
        try:
            result = await asyncio.wait_for(asyncio.shield(future), limit + GRACE_S)
        except asyncio.TimeoutError:
            self.counts["overran"] += 1
            raise CheckTimeout(
                f"the Csound sandbox did not return within the server's --timeout of "
                f"{self.request_timeout:g} s (its limit was {limit:.1f} s); the check was "
                "abandoned", 504) from None
        self.counts["finished"] += 1
        return result, limit

    async def _acquire(self, deadline: float) -> None:
        self.waiting += 1
        acquire = asyncio.ensure_future(self._slots.acquire())
        try:
            done, _ = await asyncio.wait({acquire}, timeout=max(deadline - time.monotonic(), 0))
        except BaseException:  # the request itself was cancelled
            done = set()
            raise
        finally:
            self.waiting -= 1
            if not done:
                acquire.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acquire
                if not acquire.cancelled():  # it got the slot while being cancelled
                    self._slots.release()
        if not done:
            raise self._queued_too_long()

    def _queued_too_long(self) -> CheckTimeout:
        self.counts["timeout_while_queued"] += 1
        return CheckTimeout(
            f"timed out waiting for a Csound sandbox slot (waited the server's --timeout of "
            f"{self.request_timeout:g} s; {self.workers} check(s) run at a time)", 503,
            self.retry_after())
