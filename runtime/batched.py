"""Several requests decoded in one llama.cpp batch (``serve --parallel N``).

The worker owns a llama.cpp context with N sequence ids sharing one KV cache. Each step it
builds one batch: the next token of every decoding sequence plus chunks of the prompts still
being read, runs one ``llama_decode`` and samples a token for each sequence from its own
sampler chain. A sequence keeps its tokens after its request ends, so the next request is
given the free sequence sharing the longest prefix with it (prefix reuse per sequence, as
llama.cpp's server slots do). When another sequence, running or idle, holds a longer prefix
of the new prompt (``--verify`` candidates of one request), its KV cells are shared with
``llama_memory_seq_cp`` and only the rest is read. Requests still queue FIFO for a free
sequence.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .backend import Sampling, common_prefix, sampling_seed
from .engine import Engine, Job, QueueTimeout, TokenStream, constraint_for

log = logging.getLogger("csound_assistant.serve")


@dataclass(eq=False)
class _Sequence:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # what its KV cells hold, in order
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not read yet
    feeding: list[int] = field(default_factory=list)  # tokens in the current batch
    next_token: int | None = None
    stream: TokenStream | None = None
    sampler: object = None
    cached: int = 0
    logit_index: int = -1


def make_sampler(s: Sampling, n_vocab: int):
    from llama_cpp._internals import LlamaSampler

    sampler = LlamaSampler()
    if s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty:
        sampler.add_penalties(n_vocab=n_vocab, penalty_last_n=64,
                              penalty_repeat=s.repeat_penalty, penalty_freq=s.frequency_penalty,
                              penalty_present=s.presence_penalty)
    if s.temperature <= 0:
        sampler.add_greedy()
    else:
        sampler.add_top_k(s.top_k)
        sampler.add_top_p(s.top_p, 1)
        sampler.add_min_p(s.min_p, 1)
        sampler.add_temp(s.temperature)
        sampler.add_dist(sampling_seed(s))
    return sampler


class BatchedEngine(Engine):
    def __init__(self, backend, *, parallel: int, **kw):
        super().__init__(backend, **kw)
        self.parallel = self.slots = parallel
        self._n_active = 0
        self._seqs: list[_Sequence] = []

    @property
    def busy(self) -> bool:
        return self._n_active > 0

    @property
    def in_service(self) -> int:
        return self._n_active

    def _work(self) -> None:
        import llama_cpp

        self._lc = llama_cpp
        ctx = self.backend.parallel_context(self.parallel)
        self._ctx = ctx
        n_batch = ctx.params.n_batch
        batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        seqs = self._seqs = [_Sequence(i) for i in range(self.parallel)]
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._n_active and not self._stopping:
                        self._cond.wait()
                    if self._stopping:
                        return
                    admitted = self._admit(seqs)
                for seq, job in admitted:
                    self._start(seq, job)
                if any(seq.job for seq in seqs):
                    try:
                        self._step(batch, seqs, n_batch)
                    except Exception as exc:  # a backend failure ends the running jobs only
                        log.exception("batched decoding failed")
                        self.metrics.counts["errors"] += 1
                        for seq in seqs:
                            if seq.job:
                                seq.job._post(("error", exc))
                                self._release(seq, forget=True)
        finally:
            for seq in seqs:
                if seq.job:
                    seq.job._post(("error", QueueTimeout("the server is shutting down")))
                    self._release(seq, forget=True)
            llama_cpp.llama_batch_free(batch)
            ctx.close()

    # --- scheduling ------------------------------------------------------------------------
    def _admit(self, seqs) -> list:
        admitted = []
        free = [seq for seq in seqs if seq.job is None]
        while free and self._queue:
            job = self._queue.popleft()
            if self._expired(job):
                continue
            seq = max(free, key=lambda q: common_prefix(q.tokens, job.tokens))
            free.remove(seq)
            seq.job = job
            self._n_active += 1
            admitted.append((seq, job))
        return admitted

    def _start(self, seq: _Sequence, job: Job) -> None:
        job._post(("start", None))
        if job.clear_cache:
            seq.tokens = []
        limit = max(len(job.tokens) - 1, 0)  # the last prompt token is read: its logits
        keep = min(common_prefix(seq.tokens, job.tokens), limit)
        self._lc.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, keep, -1)
        seq.tokens = seq.tokens[:keep]
        source, shared = self._prefix_source(seq, job)
        shared = min(shared, limit)
        if shared > keep:  # the cells are shared, not copied: both sequences attend to them
            self._lc.llama_memory_seq_cp(self._ctx.memory, source.seq_id, seq.seq_id, keep,
                                         shared)
            seq.tokens = list(job.tokens[:shared])
            self.metrics.counts["shared_prompt_tokens"] += shared - keep
            keep = shared
        seq.pending = list(job.tokens[keep:])
        seq.cached = keep
        seq.next_token = None
        seq.stream = TokenStream(job, self.backend, self.metrics)
        seq.stream.constraint = constraint_for(self.backend, job, seq.stream.max_tokens)
        seq.sampler = make_sampler(job.sampling, self.backend.n_vocab)

    def _prefix_source(self, seq: _Sequence, job: Job) -> tuple[_Sequence | None, int]:
        """The other sequence whose KV cells hold the longest prefix of ``job``'s prompt, and
        that prefix's length. A ``cache_prompt: false`` job forgoes what finished requests
        left behind: it shares only with running, uncancelled jobs that read afresh too."""
        def shareable(other: _Sequence) -> bool:
            if other is seq or not other.tokens:
                return False
            if not job.clear_cache:
                return True
            running = other.job is not None and other.stream is not None
            return running and other.job.clear_cache and not other.job.cancelled.is_set()

        best, best_n = None, 0
        for other in filter(shareable, self._seqs):
            n = common_prefix(other.tokens, job.tokens)
            if n > best_n:
                best, best_n = other, n
        return best, best_n

    def _release(self, seq: _Sequence, *, forget: bool = False) -> None:
        if seq.sampler is not None:
            seq.sampler.close()
        seq.job, seq.sampler, seq.stream = None, None, None
        seq.pending, seq.feeding = [], []
        self._n_active -= 1
        if forget:
            self._lc.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, 0, -1)
            seq.tokens = []

    def _finish(self, seq: _Sequence, reason: str) -> None:
        result = seq.stream.finish(reason, seq.cached)
        self.metrics.record(result)
        seq.job._post(("done", result))
        self._release(seq)

    # --- one decode step ------------------------------------------------------------------
    def _step(self, batch, seqs, n_batch: int) -> None:
        active = [seq for seq in seqs if seq.job]
        for seq in active:  # a client that left frees its sequence before the next decode
            if seq.job.cancelled.is_set():
                self._finish(seq, "cancelled")
        active = [seq for seq in seqs if seq.job]
        if not active:
            return
        decoding = [seq for seq in active if not seq.pending]
        reading = [seq for seq in active if seq.pending]
        chunk = max(1, (n_batch - len(decoding)) // max(1, len(reading)))
        batch.n_tokens = 0
        for seq in active:
            if seq.pending:
                seq.feeding = seq.pending[:chunk]
                last = len(seq.feeding) == len(seq.pending)
            else:
                seq.feeding, last = [seq.next_token], True
            for i, token in enumerate(seq.feeding):
                k = batch.n_tokens
                batch.token[k] = token
                batch.pos[k] = len(seq.tokens) + i
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = seq.seq_id
                batch.logits[k] = last and i == len(seq.feeding) - 1
                batch.n_tokens = k + 1
            seq.logit_index = batch.n_tokens - 1 if last else -1
        if len(active) > 1:
            self.metrics.counts["batched_steps"] += 1
        rc = self._lc.llama_decode(self._ctx.ctx, batch)
        if rc != 0:
            self._out_of_cells(seqs, rc)
            return
        for seq in active:
            seq.tokens += seq.feeding
            seq.pending = seq.pending[len(seq.feeding):] if seq.pending else []
            if seq.logit_index < 0:
                continue
            token = self._sample(seq)
            reason = seq.stream.feed(token)
            if reason:
                self._finish(seq, reason)
            else:
                seq.next_token = token

    def _sample(self, seq: _Sequence) -> int:
        constraint = seq.stream.constraint
        if constraint is not None:  # mask this sequence's logits in place, then sample
            constraint.mask(self._logits(seq.logit_index))
        token = seq.sampler.sample(self._ctx, seq.logit_index)
        if constraint is not None:
            constraint.accept(token)
        return token

    def _logits(self, index: int):
        """The context's logits of batch row ``index`` as a writable numpy view."""
        import numpy as np

        pointer = self._lc.llama_get_logits_ith(self._ctx.ctx, index)
        return np.ctypeslib.as_array(pointer, shape=(self.backend.n_vocab,))

    def _out_of_cells(self, seqs, rc: int) -> None:
        """The shared KV cache is full: drop idle sequences' prefixes, else stop the longest."""
        idle = [seq for seq in seqs if seq.job is None and seq.tokens]
        for seq in idle:
            self._lc.llama_memory_seq_rm(self._ctx.memory, seq.seq_id, 0, -1)
            seq.tokens = []
        if not idle:
            longest = max((seq for seq in seqs if seq.job), key=lambda q: len(q.tokens))
            log.warning("KV cache full (llama_decode returned %s): stopping one request", rc)
            self._finish(longest, "length")
            self._lc.llama_memory_seq_rm(self._ctx.memory, longest.seq_id, 0, -1)
            longest.tokens = []
        for seq in seqs:  # the failed batch wrote nothing: feed the same tokens again
            seq.feeding = []

