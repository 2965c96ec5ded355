"""Verified answers when the candidates decode at once (``serve --verify N --parallel N``):
each candidate is judged by real Csound as soon as its own decode ends, the first in order that
plays is returned, and the candidates after it are cancelled. The model is a scripted engine
whose candidates end when the test says, so each test knows which one should win."""

from __future__ import annotations

import asyncio
import time

import pytest

from csound_assistant.runtime.backend import Sampling
from csound_assistant.runtime.engine import Engine, Job, Result
from csound_assistant.runtime.server import Service
from csound_assistant.extract import extract_code
from csound_assistant.runtime.settings import Settings
from csound_assistant.runtime.verify import settled_code

from runtime_helpers import BROKEN, GOOD, FakeBackend

SAFETY_S = 20.0  # a candidate held "until cancelled" ends by itself after this (test failed)


def answer(code: str) -> str:
    return f"Here it is.\n\n```csound\n{code}\n```"


class ScriptedParallelEngine(Engine):
    """``slots`` candidates decode at once. Candidate k's reply ends when ``ends[k](service)``
    turns True (polled), when it is cancelled, or when its deadline passes (cut: "length").
    A reply given as (head, tail) sends its head at once and its tail when it ends."""

    def __init__(self, service, replies, ends):
        super().__init__(service.backend)
        self.service, self.replies, self.ends = service, list(replies), list(ends)
        self.slots = len(replies)
        self.finish: dict[int, str] = {}  # k -> finish reason
        self.jobs: dict[int, Job] = {}
        self.submitted = 0
        self.sent: dict[int, str] = {}  # k -> text sent so far
        self.first_sent_at_submit: dict[int, str | None] = {}  # k -> candidate 1's, then

    def start(self):
        pass

    def stop(self, timeout: float = 10.0):
        pass

    def submit(self, tokens, sampling, *, stop_ids=frozenset(), truncated=False,
               clear_cache=False, timeout=None) -> Job:
        loop = asyncio.get_running_loop()
        job = Job(tokens=list(tokens), sampling=sampling, loop=loop,
                  deadline=time.monotonic() + (timeout or self.request_timeout))
        self.submitted += 1
        self.jobs[self.submitted] = job
        self.first_sent_at_submit[self.submitted] = self.sent.get(1)
        loop.create_task(self._decode(self.submitted, job))
        return job

    def ended(self, k: int) -> str:
        """How candidate k ended; "cancelled" also when its job was cancelled before the
        scripted decode could notice (the request had already returned)."""
        if k in self.finish:
            return self.finish[k]
        return "cancelled" if self.jobs[k].cancelled.is_set() else "running"

    async def _decode(self, k: int, job: Job) -> None:
        job._post(("start", None))
        reply = self.replies[k - 1]
        head, tail = reply if isinstance(reply, tuple) else ("", reply)
        job._post(("text", head))
        self.sent[k] = head
        safety = time.monotonic() + SAFETY_S
        reason = "stop"
        while not self.ends[k - 1](self.service):
            if job.cancelled.is_set():
                reason = "cancelled"
                break
            if time.monotonic() > min(job.deadline, safety):
                reason = "length" if time.monotonic() < safety else "safety"
                break
            await asyncio.sleep(0.01)
        text = head + tail if reason == "stop" else head
        self.finish[k] = reason
        job._post(("text", text[len(head):]))
        job._post(("done", Result(text, reason, len(job.tokens), len(text), 0)))


def ask(replies, ends, **settings):
    """(answer, engine) for one chat request verified over the scripted candidates."""
    settings = Settings(prompt_format="chatml", verify=len(replies), parallel=len(replies),
                        **settings)
    svc = Service(settings, FakeBackend(n_ctx=4096))
    svc.engine = ScriptedParallelEngine(svc, replies, ends)

    async def run():
        svc.start()
        try:
            tokens = svc.prompts.chat_tokens([{"role": "user", "content": "A sine."}])
            return await svc.complete_checked(None, tokens, Sampling(max_tokens=600))
        finally:
            svc.stop()

    return asyncio.run(run()), svc.engine


def now(svc) -> bool:
    return True


def never(svc) -> bool:
    return False


def after_a_check(svc) -> bool:
    return svc.checks.counts["finished"] >= 1


def test_a_later_candidate_is_judged_while_an_earlier_one_still_decodes():
    # candidate 1 ends only once a check has finished: candidate 2's, judged on its own
    result, engine = ask([answer(BROKEN), answer(GOOD), answer(GOOD), answer(GOOD)],
                         [after_a_check, now, never, never])
    assert engine.finish[1] == "stop"  # released by candidate 2's verdict, not by the safety
    assert (result.result.text, result.path, result.verdict) == \
        (answer(GOOD), "candidate-2", "plays")
    # the first that plays is known: the candidates after it are cancelled, not decoded on
    assert engine.ended(3) == engine.ended(4) == "cancelled"


def test_an_earlier_candidate_that_plays_wins_over_a_later_one_judged_first():
    other = answer(GOOD.replace("440", "660"))
    result, engine = ask([answer(GOOD), other, answer(GOOD)], [after_a_check, now, never])
    assert engine.finish[1] == "stop"  # it ended after candidate 2 had been judged to play
    assert result.path == "first" and result.result.text == answer(GOOD)
    assert engine.ended(3) == "cancelled"


@pytest.mark.parametrize("playing", [1, 2, 4])
def test_code_that_does_not_compile_is_never_returned_when_one_plays(playing):
    replies = [answer(BROKEN)] * 4
    replies[playing - 1] = answer(GOOD)
    result, _ = ask(replies, [now] * 4)
    assert result.result.text == answer(GOOD) and result.verdict == "plays"
    assert result.path == ("first" if playing == 1 else f"candidate-{playing}")


def test_the_budget_cuts_candidates_that_would_not_end():
    # the first candidate ends and does not compile; the others would decode forever
    result, engine = ask([answer(BROKEN)] + [answer(GOOD)] * 3, [now] + [never] * 3,
                         verify_seconds=1.0)
    assert [engine.finish[k] for k in (2, 3, 4)] == ["length"] * 3  # cut by the budget
    assert result.path == "unverified" and result.result.text == answer(BROKEN)


def test_the_other_candidates_start_once_the_first_has_written():
    # candidate 1 sends its opening at once and the rest after a check: the others must have
    # been submitted after its opening (its prompt read, so they can share its KV cells)
    opening = ("Here it is.\n\n", answer(BROKEN)[len("Here it is.\n\n"):])
    result, engine = ask([opening, answer(GOOD), answer(GOOD)], [after_a_check, now, never])
    assert engine.first_sent_at_submit == {1: None, 2: "Here it is.\n\n",
                                           3: "Here it is.\n\n"}
    assert result.path == "candidate-2"


PROSE = "\nRun it with `csound sine.csd`."


def test_a_candidate_is_judged_once_its_code_is_settled_not_when_its_prose_ends():
    # candidate 1's closing sentence comes only after a check has finished: its own
    playing = (answer(GOOD) + "\n", PROSE)
    result, engine = ask([playing, (answer(GOOD) + "\n", PROSE)], [after_a_check, never])
    assert engine.finish[1] == "stop"  # its code was judged while its prose was still coming
    assert (result.path, result.result.text) == ("first", answer(GOOD) + "\n" + PROSE)
    assert engine.ended(2) == "cancelled"  # cancelled once candidate 1 was known to play


def test_a_settled_code_is_the_code_of_every_longer_text():
    text = answer(GOOD) + "\n"
    assert settled_code(text[:-1]) is None  # the closing fence's line is not finished
    assert settled_code("Try:\n```csound\ninstr 1\nendin\n```\n") is None  # not a CSD: a
    # later block would be joined to it
    prefix = settled_code(text)
    assert prefix == text
    for more in (PROSE, "\n```csound\ninstr 2\nendin\n```\n", "\n" + answer(BROKEN)):
        assert extract_code(prefix + more) == extract_code(prefix)


def test_candidates_share_the_first_candidates_prompt_on_the_real_engine(embedded_gguf):
    """``--verify 4 --parallel 4`` on llama.cpp: candidates 2..4 copy candidate 1's KV cells
    and read only the prompt's last token (for its logits)."""
    from csound_assistant.runtime.backend import LlamaBackend

    settings = Settings(prompt_format="chatml", verify=4, parallel=4, n_ctx=1024,
                        decoder="plain")
    backend = LlamaBackend(embedded_gguf, n_ctx=1024, n_threads=1, parallel=4)
    svc = Service(settings, backend)

    async def run():
        svc.start()
        try:
            tokens = svc.prompts.chat_tokens([{"role": "user", "content": "A sine."}])
            answer = await svc.complete_checked(None, tokens, Sampling(max_tokens=8,
                                                                       temperature=0))
            return tokens, answer
        finally:
            svc.stop()

    try:
        tokens, result = asyncio.run(run())
    finally:
        backend.close()
    assert result.verdict == "no-code"  # 8 tokens of prose: every candidate was decoded
    assert sorted(r.cached_tokens for r in result.spent) == [0] + [len(tokens) - 1] * 3
    assert svc.engine.metrics.counts["shared_prompt_tokens"] == 3 * (len(tokens) - 1)
