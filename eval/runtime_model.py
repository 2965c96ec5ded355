"""A GGUF asked through the server's own path, in process: ``eval run --verify N``.

The runtime's ``LlamaBackend``, ``PromptBuilder``, engine (batched with ``parallel`` = N, so a
request's candidates decode together) and ``Service.complete_checked`` (runtime/verify.py) make
every answer, exactly as ``csound-assistant serve --verify N`` makes it, so what the eval scores
is what the server returns. Answers the eval's ``chat``/``fim`` interface with a ``Generation``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from csound_assistant.runtime.fim_trim import trim_middle
from csound_assistant.sampling import MIN_P, TOP_K, TOP_P

from .generation import Generation, format_for_gguf


class RuntimeModel:
    def __init__(self, backend, settings, *, path: Path | None = None):
        from csound_assistant.runtime.server import Service

        self.backend, self.settings, self.path = backend, settings, path
        self.service = Service(settings, backend)
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        self.service.start()

    @classmethod
    def from_gguf(cls, path: Path, *, prompt_format: str | None, n_ctx: int, n_threads: int,
                  verify: int, verify_seconds: float, decoder: str = "plain") -> RuntimeModel:
        from csound_assistant.runtime.backend import LlamaBackend
        from csound_assistant.runtime.settings import Settings

        parallel = max(verify, 1)
        # The batched context's cells are shared by its sequences: each gets the eval's n_ctx.
        backend = LlamaBackend(path, n_ctx=n_ctx * parallel, n_threads=n_threads,
                               cache_slots=0, parallel=parallel, decoder=decoder)
        fmt = prompt_format or format_for_gguf(path, backend.metadata).name
        settings = Settings(model_path=path, prompt_format=fmt, n_ctx=n_ctx * parallel,
                            n_threads=n_threads, parallel=parallel, verify=verify,
                            verify_seconds=verify_seconds, decoder=decoder,
                            request_timeout=max(120.0, 2 * verify_seconds))
        return cls(backend, settings, path=path)

    def describe(self) -> dict:
        from csound_assistant.artifacts import sha256_file

        out = {"kind": "gguf-runtime", "prompt_format": self.settings.prompt_format,
               "n_threads": self.settings.n_threads, "parallel": self.settings.parallel,
               "verify": self.settings.verify, "verify_seconds": self.settings.verify_seconds,
               "decoder": self.settings.decoder,
               "opcode_reference": self.service.prompts.lookups.describe(),
               "lookups": self.service.prompts.lookups.names}
        if self.path is not None:
            out.update(path=str(self.path), bytes=self.path.stat().st_size,
                       sha256=sha256_file(self.path))
        return out

    def _sampling(self, max_tokens, temperature, seed, repeat_penalty):
        from csound_assistant.runtime.backend import Sampling

        # the eval's decoding (eval/models.py GGUFModel) in the server's terms
        return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=TOP_P, top_k=TOP_K,
                        min_p=MIN_P, repeat_penalty=repeat_penalty, seed=seed)

    def _answer(self, make) -> Generation:
        start = time.monotonic()
        answer = self.loop.run_until_complete(make())
        return Generation(answer.result.text, time.monotonic() - start,
                          sum(r.completion_tokens for r in answer.spent),
                          answer.result.prompt_tokens, verified=answer.path,
                          first_text=answer.first.text if answer.first else None,
                          repairs=answer.repairs)

    def chat(self, messages: list[dict], *, max_tokens: int = 256, temperature: float = 0.0,
             seed: int = 0, repeat_penalty: float = 1.0) -> Generation:
        svc = self.service
        tokens = svc.prompts.chat_tokens(messages)
        sampling = self._sampling(max_tokens, temperature, seed, repeat_penalty)
        return self._answer(lambda: svc.complete_checked(None, tokens, sampling))

    def fim(self, prefix: str, suffix: str, *, max_tokens: int = 256, temperature: float = 0.0,
            seed: int = 0, repeat_penalty: float = 1.0) -> Generation:
        svc = self.service
        budget = svc.backend.n_ctx - min(max_tokens, svc.backend.n_ctx // 2)
        tokens, truncated = svc.prompts.fim_tokens(prefix, suffix, budget=budget)
        sampling = self._sampling(max_tokens, temperature, seed, repeat_penalty)
        gen = self._answer(lambda: svc.complete_fim_checked(None, tokens, sampling, prefix,
                                                            suffix, truncated=truncated))
        gen.text = trim_middle(prefix, gen.text, suffix)  # as the server's FIM routes do
        return gen

    def close(self) -> None:
        self.service.stop()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()
        self.backend.close()
