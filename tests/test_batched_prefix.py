"""A prompt prefix another sequence already read is shared, not read again (runtime/batched.py,
``serve --parallel N``, and so ``--verify N``'s candidates of one request): real llama.cpp on
the embedded SmolLM2 GGUF, greedy decoding, so a shared prefix must change no token."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from csound_assistant.runtime.backend import LlamaBackend, Sampling
from csound_assistant.runtime.batched import BatchedEngine

# Few tokens: past these, llama.cpp's attention sums depend on how many KV cells the whole
# cache holds (a run that read a prompt twice holds more), which moves this model's logits by up
# to 0.6 whichever way a prompt came in, so longer answers compare llama.cpp, not sharing.
GREEDY = Sampling(temperature=0, max_tokens=6)
CHAT = ("<|im_start|>system\nYou write Csound.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
        "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def backend(embedded_gguf):
    b = LlamaBackend(embedded_gguf, n_ctx=1024, n_threads=1, parallel=3)
    yield b
    b.close()


def prompt(backend, request: str) -> list[int]:
    return backend.tokenize(CHAT.format(request), special=True)


SINE = "Write an instrument that plays a sine wave at 440 Hz with an envelope."


class SteppedEngine(BatchedEngine):
    """The batched engine, held after the step that sampled the first request's first token
    until ``resume`` is set: later requests then join at a known step, so two runs decode the
    same batches whatever the machine's speed."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.paused, self.resume = threading.Event(), threading.Event()
        self.resume.set()
        self.first_logits: dict = {}  # job -> the logits its first token was sampled from

    def _sample(self, seq) -> int:
        self.first_logits.setdefault(seq.job, self._logits(seq.logit_index).copy())
        return super()._sample(seq)

    def _step(self, batch, seqs, n_batch) -> None:
        super()._step(batch, seqs, n_batch)
        if not self.resume.is_set():
            self.paused.set()
            self.resume.wait(WAIT_S)


WAIT_S = 60.0


def run(backend, script):
    """``script(engine)`` (a coroutine) on a fresh batched engine of 3 sequences."""
    engine = SteppedEngine(backend, parallel=3)

    async def main():
        engine.start()
        try:
            return await script(engine)
        finally:
            engine.resume.set()
            engine.stop()

    return asyncio.run(main()), engine


async def answer(job):
    text = "".join([piece async for piece in job.pieces()])
    assert text == job.result.text
    return job.result


def joined(backend, first, later, *, share: bool):
    """``first`` runs; once its first token is sampled (its prompt is in the KV cache) each of
    ``later`` is submitted. Returns their results, first's then later's, and the engine.

    With ``share=False`` the later requests read their prompts themselves in the very same
    schedule: they ask for no cached prompt and ``first`` does not, which the engine's rule
    does not let them share. Both runs then decode the same batch sizes: llama.cpp's logits
    for a batch of one token differ from a batch of several (by up to 0.6 on this model), so
    an answer is only comparable with one decoded in the same company."""
    async def script(engine):
        engine.resume.clear()
        job = engine.submit(first, GREEDY, clear_cache=share)
        assert await asyncio.to_thread(engine.paused.wait, WAIT_S)
        others = [engine.submit(tokens, GREEDY, clear_cache=True) for tokens in later]
        engine.resume.set()
        return [await answer(job) for job in [job, *others]]

    return run(backend, script)


def test_a_copied_prompt_gives_the_tokens_of_a_prompt_read_afresh(backend):
    tokens = prompt(backend, SINE)
    (first, copied), engine = joined(backend, tokens, [tokens], share=True)
    assert copied.cached_tokens == len(tokens) - 1  # only its last token was read, for logits
    assert engine.metrics.counts["shared_prompt_tokens"] == len(tokens) - 1
    (first_read, read), engine_read = joined(backend, tokens, [tokens], share=False)
    assert read.cached_tokens == 0 and not engine_read.metrics.counts["shared_prompt_tokens"]
    assert read.completion_tokens == GREEDY.max_tokens
    assert (copied.text, first.text) == (read.text, first_read.text)
    (copied_logits, read_logits) = (list(e.first_logits.values())[1]
                                    for e in (engine, engine_read))
    # bit for bit: the shared cells are the cells the prompt was read into
    assert np.array_equal(copied_logits, read_logits)


def test_different_prompts_share_nothing(backend):
    tokens = prompt(backend, SINE)
    other = backend.tokenize("instr 1\n  aout oscili 0.3, 220\n", special=False)
    assert other[0] != tokens[0]
    (_, result), engine = joined(backend, tokens, [other], share=True)
    assert result.cached_tokens == 0 and result.completion_tokens > 0
    assert not engine.metrics.counts["shared_prompt_tokens"]


def test_only_the_common_part_of_a_prompt_is_copied(backend):
    tokens = prompt(backend, SINE)
    short, long = (prompt(backend, text) for text in (
        "Explain what the opcode moogladder does.",
        "Write an instrument that plays a square wave through a low-pass filter."))
    n_short, n_long = (next(i for i, (a, b) in enumerate(zip(tokens, q)) if a != b)
                       for q in (short, long))
    assert 0 < n_short < n_long < len(tokens) - 1
    shared, engine = joined(backend, tokens, [short, long], share=True)
    assert [r.cached_tokens for r in shared[1:]] == [n_short, n_long]
    assert engine.metrics.counts["shared_prompt_tokens"] == n_short + n_long
    read, _ = joined(backend, tokens, [short, long], share=False)
    assert [r.cached_tokens for r in read] == [0, 0, 0]
    assert [r.text for r in shared] == [r.text for r in read]


def test_without_cached_prompts_only_running_requests_are_shared(backend):
    """``cache_prompt: false`` forgoes what a finished request, or a running one that kept
    its cache, left in the KV cells; a plain request reuses it."""
    tokens = prompt(backend, SINE)

    async def script(engine):
        await answer(engine.submit(tokens, GREEDY))
        busy = engine.submit(tokens, GREEDY)  # takes the idle sequence holding the prompt
        await busy.wait_started()
        fresh = await answer(engine.submit(tokens, GREEDY, clear_cache=True))
        reused = await answer(engine.submit(tokens, GREEDY))
        await answer(busy)
        return busy.result, fresh, reused

    (busy, fresh, reused), _ = run(backend, script)
    assert busy.cached_tokens == reused.cached_tokens == len(tokens) - 1
    assert fresh.cached_tokens == 0
