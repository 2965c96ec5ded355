"""Sampled answers through the runtime's own path: ``LlamaBackend``, ``PromptBuilder`` and the
server's engine (``Service.complete``), batched ``parallel`` sequences at a time, so what
self-training learns from is what ``serve`` would answer. A GPU is the same code with
``n_gpu_layers``. Answers go to a JSONL file as they finish; a killed run's file is read back
and only the answers it lacks are made."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from csound_assistant.eval.tasks import Item


def answer_key(item: Item, k: int) -> str:
    return f"{item.id}~{k}"


def read_answers(path: Path) -> dict[str, str]:
    """key -> answer of every whole line (a line cut by a kill is skipped)."""
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[entry["key"]] = entry["answer"]
    return out


def sample(gguf: Path, requests: list[tuple[Item, int]], out: Path, *, samples: int,
           temperature: float, seed: int, parallel: int, n_ctx: int, n_threads: int = 0,
           n_gpu_layers: int = 0, lora: Path | None = None,
           progress: bool = True) -> dict[str, str]:
    """``samples`` answers to each (item, token budget) from ``gguf`` (with the GGUF LoRA
    ``lora``), appended to ``out``; returns them all, earlier runs' included. Sample k of an item has its own seed (``seed``, k, the item id)."""
    from csound_assistant.eval.generation import format_for_gguf
    from csound_assistant.runtime.backend import LlamaBackend
    from csound_assistant.runtime.server import Service
    from csound_assistant.runtime.settings import Settings

    done = read_answers(out)
    todo = [(item, budget, k) for item, budget in requests for k in range(samples)
            if answer_key(item, k) not in done]
    if not todo:
        return done
    backend = LlamaBackend(gguf, lora_path=lora, n_ctx=n_ctx * parallel,
                           n_threads=n_threads or None,
                           n_gpu_layers=n_gpu_layers, cache_slots=0, parallel=parallel)
    settings = Settings(model_path=gguf, lora_path=lora,
                        prompt_format=format_for_gguf(gguf, backend.metadata).name,
                        n_ctx=n_ctx * parallel, n_threads=n_threads or None,
                        n_gpu_layers=n_gpu_layers, parallel=parallel, max_queue=4 * parallel,
                        request_timeout=3600.0)
    svc = Service(settings, backend)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_sample_all(svc, todo, out, done, temperature, seed, parallel,
                                            progress))
    finally:
        svc.stop()
        loop.close()
        backend.close()
    return done


async def _sample_all(svc, todo, out: Path, done: dict, temperature: float, seed: int,
                      parallel: int, progress: bool) -> None:
    from tqdm import tqdm

    from csound_assistant.runtime.backend import Sampling
    from csound_assistant.sampling import MIN_P, REPEAT_PENALTY, TOP_K, TOP_P

    svc.start()
    slots = asyncio.Semaphore(2 * parallel)  # the engine's queue stays short and full

    async def one(item: Item, budget: int, k: int) -> tuple[str, str]:
        from csound_assistant.runtime.prompts import PromptError
        from csound_assistant.runtime.validation import ApiError

        async with slots:
            sampling = Sampling(max_tokens=budget, temperature=temperature, top_p=TOP_P,
                                top_k=TOP_K, min_p=MIN_P, repeat_penalty=REPEAT_PENALTY,
                                seed=_seed(seed, item.id, k))
            try:
                if item.is_fim:
                    room = max(svc.backend.n_ctx // parallel - budget, 64)
                    tokens, _ = svc.prompts.fim_tokens(item.prefix, item.suffix, budget=room)
                else:
                    tokens = svc.prompts.chat_tokens(item.messages)
                result = await svc.complete(None, tokens, sampling)
            except (ApiError, PromptError):  # a request longer than the context: no answer
                return answer_key(item, k), ""
            return answer_key(item, k), result.text

    tasks = [asyncio.ensure_future(one(*job)) for job in todo]
    with out.open("a", encoding="utf-8") as fh, \
            tqdm(total=len(tasks), desc="sample", unit="answer", disable=not progress) as bar:
        for finished in asyncio.as_completed(tasks):
            key, text = await finished
            done[key] = text
            fh.write(json.dumps({"key": key, "answer": text}) + "\n")
            fh.flush()
            bar.update()


def _seed(seed: int, ident: str, k: int) -> int:
    import hashlib

    digest = hashlib.sha256(f"{seed}/{ident}/{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little")
