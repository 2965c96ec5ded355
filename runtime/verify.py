"""Verified answers: ``serve --verify N`` and ``eval run --verify N``.

A chat request gets up to N candidate answers (the first with the request's own sampling, the
rest sampled at ``CANDIDATE_TEMPERATURE`` or the request's, if higher, each with its own seed;
with ``--parallel`` they decode in one batch, the others joining once the first's prompt is
read, so they share its KV cells and do not read it again). Each candidate's Csound is
rendered in the sandbox as soon as it is settled (its first fenced block, holding a CSD, is
closed; else when the candidate ends), while the others still decode, and the first in order
that plays (compiles, renders, not silent, no NaN, reads no missing file: the eval's
sound@1) is returned; once one plays, the candidates after it are cancelled. If none plays,
the best fixable one goes back to the model with Csound's first error
(``csound_assistant.repair``); then the best candidate is returned, marked unverified. When
the first answer holds no code (an explanation, or a small model that answered in prose), the
other candidates are still judged: one that plays replaces it; otherwise the first answer is
returned as it is (no repair, and no code that does not play in place of prose).
``--verify-seconds`` bounds the whole request (generation and checks) and so does
``--timeout``; sandbox runs go through the server's ``CheckGate`` (worker threads, its queue
and limits).

A fill-in-the-middle request is verified only where prefix + middle + suffix is a whole CSD or
orchestra: then its candidates are compiled (not rendered) and the first that compiles wins.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field, replace

from csound_assistant.errors import IsolationUnavailable, SandboxRefused
from csound_assistant.extract import extract_code

from .backend import Sampling, sampling_seed
from .checks import CheckTimeout
from .engine import QueueFull, Result
from .prompts import PromptError
from .validation import ApiError

log = logging.getLogger("csound_assistant.serve")

CANDIDATE_TEMPERATURE = 0.7  # issue 24: 4 samples at 0.7 played 54% against 31% for one
RENDER_SECONDS = 2.0
MIN_CHECK_S = 0.3  # less time left than this: judging cannot finish, return what there is
CHECK_RESERVE_S = 2.0  # generation stops this long before the budget (at most a quarter of
# it), so a candidate cut by the budget can still be judged: a render takes 0.1-1 s
NOT_COMPILED = {"syntax", "unknown-opcode", "plugin"}
UNJUDGED = {"no-code", "unchecked", "refused", "timeout", "crash"}
REPAIRABLE = NOT_COMPILED | {"runtime-error"}  # Csound printed an error a model can act on


@dataclass
class Verdict:
    category: str  # the sandbox's, "no-code" or "unchecked" (no sandbox time was left)
    passed: bool = False  # plays (chat) or compiles (FIM)
    errors: tuple[str, ...] = ()
    code: str | None = None
    elapsed: float = 0.0  # seconds Csound itself ran in the sandbox

    def rank(self) -> tuple:
        """Higher is better: passed, then ran (compiled), then fewer errors, then judged."""
        if self.passed:
            return (3, 0)
        if self.category in UNJUDGED:
            return (0, 0)
        if self.category in NOT_COMPILED:
            return (1, -len(self.errors))
        return (2, -len(self.errors))

    def problem(self):
        """What to ask a model to fix, or None."""
        from csound_assistant.repair import Problem

        if self.category in REPAIRABLE and self.code and self.errors:
            return Problem(self.code, self.errors[0])
        return None


@dataclass
class Answer:
    """The answer a request gets and how it was made."""

    result: Result
    path: str | None = None  # first | candidate-K | repair | unverified; None: not verified
    verdict: str | None = None  # "plays", "compiles" or the returned text's failing category
    repairs: int = 0
    spent: list[Result] = field(default_factory=list)  # every generation made for it
    first: Result | None = None  # the first candidate: what an unverified server returns
    waited: dict[str, float] = field(default_factory=dict)  # seconds blocked on each phase

    def headers(self, *, repair: bool) -> dict:
        out = {"X-Csound-Repairs": str(self.repairs)} if repair else {}
        out["X-Csound-Decoder"] = self.result.decoder
        if self.path:
            out.update({"X-Csound-Verified": self.path, "X-Csound-Verdict": self.verdict or ""})
        return out


def candidate_sampling(sampling: Sampling, k: int, base_seed: int) -> Sampling:
    """Candidate ``k`` (1-based): the first is the request itself; the others sample."""
    if k == 1:
        return replace(sampling, seed=base_seed)
    return replace(sampling, seed=(base_seed + k - 1) % 2**32,
                   temperature=max(sampling.temperature, CANDIDATE_TEMPERATURE))


def whole_program(prefix: str, suffix: str) -> bool:
    """prefix + suffix (the middle goes between) is a whole CSD or a whole orchestra."""
    text = (prefix + suffix).strip()
    if re.match(r"<CsoundSynthesizer>", text, re.I):
        return bool(re.search(r"</CsoundSynthesizer>\s*\Z", text, re.I))
    if "<Cs" in text:
        return False
    opened = len(re.findall(r"^[ \t]*(?:instr|opcode)\b", text, re.M))
    closed = len(re.findall(r"^[ \t]*(?:endin|endop)\b", text, re.M))
    return opened > 0 and opened == closed and bool(re.search(r"(?:endin|endop)\s*\Z", text))


_FIRST_BLOCK = re.compile(r"```[^\n]*\n(.*?)\n[ \t]*```[^\n]*\n", re.S)
_CSD_TAG = re.compile(r"<CsoundSynthesizer>|<CsOptions>|<CsInstruments>", re.I)


def settled_code(text: str) -> str | None:
    """``text`` up to the end of its first fenced block when that block is closed and holds a
    CSD: ``extract_code`` takes the first block holding a CSD, so any text that goes on from
    here has the same code. None while later text could still change it."""
    block = _FIRST_BLOCK.search(text)
    if block is None or not _CSD_TAG.search(block.group(1)):
        return None
    return text[:block.end()]


def _render_verdict(code: str, timeout: float) -> Verdict:
    from csound_assistant import sandbox

    result = sandbox.render(code, seconds=RENDER_SECONDS, timeout=timeout)
    return Verdict(result.category, result.audible, tuple(str(d) for d in result.errors), code,
                   result.elapsed or 0.0)


def _compile_verdict(code: str, timeout: float) -> Verdict:
    from csound_assistant import sandbox

    result = sandbox.check(code, timeout=timeout)
    return Verdict(result.category, result.ok, tuple(str(d) for d in result.errors), code,
                   result.elapsed or 0.0)


def _bounded(fn, deadline: float):
    """``fn`` whose default ``timeout`` is the time left until ``deadline``: CheckGate takes the
    smaller of that and the time its own --timeout leaves; a check that waited for a sandbox
    slot (a request's candidates are judged at once) gets only what is left after the wait."""
    def run(code, timeout=max(deadline - time.monotonic(), 0.0)):
        return fn(code, max(min(timeout, deadline - time.monotonic()), 0.01))
    return run


class Verification:
    """One request's verification against a ``Service`` (its engine, prompts and checks)."""

    def __init__(self, svc, request, *, budget: float):
        self.svc, self.request = svc, request
        self.deadline = time.monotonic() + budget
        self.generate_by = self.deadline - min(CHECK_RESERVE_S, budget / 4)
        self.counts = svc.engine.metrics.counts
        self.spent: list[Result] = []
        self.sandbox_ok = True
        self.started = time.monotonic()
        # seconds this request spent blocked on each phase (decode, check, repair-*): where a
        # verified answer's time goes, for bench/verify_latency.py and the logs
        self.waited: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def blocked(self, phase: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self.waited[phase] += time.monotonic() - start

    def left(self) -> float:
        return self.deadline - time.monotonic()

    async def generate(self, tokens, sampling: Sampling, *, first: bool = False,
                       on_text=None, **kw) -> Result:
        """One generation; ``on_text`` sees its text so far after every piece."""
        # The first candidate is what the server answers without --verify: only --timeout
        # bounds it, so verification never cuts an answer short (a long fix request on a busy
        # machine would otherwise lose its code); the budget bounds the others and the checks.
        timeout = None if first else max(self.generate_by - time.monotonic(), 0.001)
        job = await self.svc.start_job(self.request, tokens, sampling, timeout=timeout, **kw)
        text = ""
        try:
            async for piece in job.pieces():
                text += piece
                if on_text is not None:
                    on_text(text)
        finally:
            job.cancel()
            job.watcher.cancel()
        self.spent.append(job.result)
        return job.result

    async def judge(self, code: str, fn) -> Verdict:
        seconds = self.left()
        if not self.sandbox_ok or seconds < MIN_CHECK_S:
            return Verdict("unchecked", code=code)
        self.counts["verify_checks"] += 1
        try:
            verdict, _ = await self.svc.checks.run(_bounded(fn, self.deadline), code)
        except SandboxRefused:
            return Verdict("refused", code=code)
        except (QueueFull, CheckTimeout, IsolationUnavailable) as exc:
            log.info("verification stopped: %s", exc)
            self.sandbox_ok = False
            return Verdict("unchecked", code=code)
        self.waited["csound"] += verdict.elapsed  # inside "check": Csound's own run
        return verdict

    async def candidates(self, tokens, sampling: Sampling, n: int, judge, *, settled=None,
                         **kw):
        """Yield (k, result, verdict) for candidates 1..n in order, until the caller stops.

        ``engine.slots`` + 1 decode at once (in one batch when the engine decodes in parallel).
        Candidate 1 starts alone; the others start once its first text came, when its prompt
        is in the KV cache, so the batched engine shares those cells instead of reading the
        prompt once per candidate. Each is judged as soon as its code is settled
        (``settled(text)``: the text so far once no later text can change the code judged in
        it), else when its decode ends, while the others still decode; once candidate k
        passes, those after it are cancelled (the first that passes in order is the answer,
        so none after k can be) and the rest decode in a smaller batch. The order of the yields, and so the answer, is the candidates'."""
        base = sampling_seed(sampling)
        window = min(n, getattr(self.svc.engine, "slots", 1) + 1)
        tasks: list[asyncio.Task] = []
        decoded: dict[int, float] = {}  # k -> when its decode ended, for the waited split
        last = n  # no candidate after the first that passed is needed

        def launch():
            k = len(tasks) + 1
            tasks.append(asyncio.ensure_future(candidate(k)))

        def fill():  # candidate 1's prompt is in the KV cache: the others share its cells
            while len(tasks) < min(window, last):
                launch()

        async def candidate(k: int) -> tuple[Result, Verdict]:
            early: list[asyncio.Task] = []

            def on_text(text: str) -> None:
                if k == 1:
                    fill()
                prefix = settled(text) if settled is not None and not early else None
                if prefix is not None:
                    early.append(asyncio.ensure_future(judge(prefix)))
                    early[0].add_done_callback(stop_if_passed)

            def stop_if_passed(task: asyncio.Task) -> None:
                if not task.cancelled() and task.exception() is None and task.result().passed:
                    stop_after(k)

            try:
                result = await self.generate(tokens, candidate_sampling(sampling, k, base),
                                             first=k == 1, on_text=on_text, **kw)
                decoded[k] = time.monotonic()
                self.counts["verify_candidates"] += 1
                if k == 1:
                    fill()  # it ended before it wrote any text
                if len(tasks) < last and self.generate_by - time.monotonic() > MIN_CHECK_S:
                    launch()
                verdict = await early[0] if early else None
                if verdict is None or verdict.code != extract_code(result.text):
                    verdict = await judge(result.text)  # no settled code, or it changed
            finally:
                for task in early:
                    task.cancel()
            if verdict.passed:
                stop_after(k)
            return result, verdict

        def stop_after(k: int) -> None:
            nonlocal last
            last = min(last, k)
            for task in tasks[last:]:
                task.cancel()

        try:
            launch()
            for k in range(1, n + 1):
                if k > min(len(tasks), last):  # not started: the budget had no room for it
                    return
                waiting = time.monotonic()
                try:
                    result, verdict = await tasks[k - 1]
                except (ApiError, PromptError):
                    if k == 1:
                        raise  # nothing to return: the request fails as an unverified one would
                    return
                finally:
                    now, ended = time.monotonic(), decoded.get(k, time.monotonic())
                    self.waited["decode"] += max(0.0, min(ended, now) - waiting)
                    self.waited["check"] += now - max(waiting, min(ended, now))
                yield k, result, verdict
                if self.left() < MIN_CHECK_S or not self.sandbox_ok:
                    return
        finally:
            for task in tasks:
                task.cancel()


async def verified_chat(svc, request, tokens, sampling: Sampling, **kw) -> Answer:
    """The first candidate that plays, else a repair that plays, else the best candidate."""
    s = svc.settings
    v = Verification(svc, request, budget=min(s.verify_seconds, s.request_timeout))
    seen: list[tuple[Result, Verdict]] = []

    async def judge(text: str) -> Verdict:
        code = extract_code(text)
        return Verdict("no-code") if code is None else await v.judge(code, _render_verdict)

    first = None
    async with contextlib.aclosing(v.candidates(tokens, sampling, s.verify, judge,
                                                settled=settled_code, **kw)) as gen:
        async for k, result, verdict in gen:
            first = first or result
            if verdict.passed:
                return _done(v, result, "first" if k == 1 else f"candidate-{k}", "plays", first)
            seen.append((result, verdict))
    if seen and seen[0][1].category == "no-code":  # prose first: only code that plays replaces it
        return _done(v, seen[0][0], "unverified", "no-code", first)
    repairs = 0
    fixable = [verdict for _, verdict in seen if verdict.problem()]
    todo = max(fixable, key=Verdict.rank).problem() if fixable else None
    while todo is not None and repairs < max(s.repair, 1) and \
            v.generate_by - time.monotonic() > MIN_CHECK_S:
        try:
            fix_tokens = svc.prompts.chat_tokens(todo.request())
            with v.blocked("repair-decode"):
                result = await v.generate(fix_tokens,
                                          replace(sampling, seed=sampling_seed(sampling)))
        except (ApiError, PromptError) as exc:  # e.g. code + error exceed the context
            log.info("verification's repair skipped: %s", exc)
            break
        repairs += 1
        svc.engine.metrics.counts["repair_requests"] += 1
        with v.blocked("repair-check"):
            verdict = await judge(result.text)
        if verdict.passed:
            return _done(v, result, "repair", "plays", first, repairs)
        seen.append((result, verdict))
        todo = verdict.problem()
    result, verdict = max(seen, key=lambda rv: rv[1].rank())  # max keeps the earliest of ties
    return _done(v, result, "unverified", verdict.category, first, repairs)


async def verified_fim(svc, request, tokens, sampling: Sampling, prefix: str, suffix: str,
                       **kw) -> Answer:
    """For a whole CSD or orchestra: the first candidate whose file compiles, else the first."""
    s = svc.settings
    v = Verification(svc, request, budget=min(s.verify_seconds, s.request_timeout))
    if not whole_program(prefix, suffix):
        result = await v.generate(tokens, sampling, **kw)
        return _done(v, result, "unverified", "not-a-whole-program", result)

    async def judge(middle: str) -> Verdict:
        return await v.judge(prefix + middle + suffix, _compile_verdict)

    first: tuple[Result, Verdict] | None = None
    async with contextlib.aclosing(v.candidates(tokens, sampling, s.verify, judge, **kw)) as gen:
        async for k, result, verdict in gen:
            first = first or (result, verdict)
            if verdict.passed:
                return _done(v, result, "first" if k == 1 else f"candidate-{k}", "compiles",
                             first[0])
    return _done(v, first[0], "unverified", first[1].category, first[0])


def _done(v: Verification, result: Result, path: str, verdict: str, first: Result | None,
          repairs: int = 0) -> Answer:
    v.counts["verified_" + path.replace("-", "_")] += 1
    waited = {**v.waited, "total": time.monotonic() - v.started}
    log.debug("verified answer: %s after %s", path,
              ", ".join(f"{k} {s:.2f} s" for k, s in waited.items()))
    return Answer(result, path, verdict, repairs, list(v.spent), first, waited)


async def pieces(answer: Answer, size: int = 48):
    """A finished answer's text in stream-sized pieces: a verified answer is streamed after
    its check, in the shapes an unverified stream has."""
    text = answer.result.text
    for i in range(0, len(text), size):
        yield text[i:i + size]
