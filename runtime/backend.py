"""The model behind the server: a llama-cpp-python ``Llama`` owned by one worker thread.

A llama.cpp context is not thread-safe, so only the engine's worker calls ``generate``; the
tokenizer methods are read-only and may be called from request handlers.

Prompt-prefix reuse: ``Llama.generate`` keeps the KV cache of the previous prompt and re-reads
only what follows the longest common token prefix. An editor that alternates between files
would lose that on every switch, so this backend also keeps up to ``cache_slots`` saved KV
states (llama.cpp's per-sequence state API, without llama-cpp-python's 100 MB logits copy) and
restores the one sharing the longest prefix with the next prompt.

With ``decoder="csound"`` (``serve --decoder csound``) every generation goes through a
``runtime/decoder.py`` constraint: the logits are masked before llama.cpp's sampler chain runs,
here as llama-cpp-python's logits processor and in ``batched.py`` on the context's logits.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from csound_assistant.errors import ModelLoadError

log = logging.getLogger("csound_assistant.serve")

MIN_SLOT_GAIN = 32  # tokens a saved state must save over the live cache to be worth loading
MIN_SLOT_TOKENS = 64  # shorter prompts are cheaper to re-read than to save


@dataclass
class Sampling:
    """Decoding parameters of one request (already validated)."""

    max_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    time_limit: float | None = None  # seconds of generation after the prompt is read
    ignore_eos: bool = False  # benchmarks: generate exactly max_tokens
    n_indent: int = 0  # llama.cpp /infill: stop at a new line indented less than this


def sampling_seed(s: Sampling) -> int:
    """The request's seed, or a fresh random one when it gave none."""
    return s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")


def common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class _Slot:
    tokens: list[int]
    data: ctypes.Array


class LlamaBackend:
    """llama-cpp-python model: tokenizer, metadata and a token generator."""

    def __init__(self, model_path: Path, *, lora_path: Path | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None, n_gpu_layers: int = 0, cache_slots: int = 4,
                 parallel: int = 1, decoder: str = "plain"):
        from csound_assistant.llamacpp import load

        llama_cpp = load()

        for label, path in (("model", model_path), ("LoRA adapter", lora_path)):
            if path is not None and not Path(path).is_file():
                raise ModelLoadError(f"{label} file not found: {path}")
        with open(model_path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelLoadError(f"{model_path} is not a GGUF file")
        self._llama_cpp = llama_cpp
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(model_path), lora_path=str(lora_path) if lora_path else None,
                # With --parallel the batched engine makes its own context; this one only
                # serves the tokenizer, so it is kept small.
                n_ctx=n_ctx if parallel <= 1 else min(n_ctx, 256),
                n_threads=n_threads, n_threads_batch=n_threads,
                n_gpu_layers=n_gpu_layers, verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"llama.cpp could not load {model_path}: {exc}") from exc
        self.model_path = Path(model_path)
        self.lora_path = Path(lora_path) if lora_path else None
        self.n_ctx = self.llm.n_ctx() if parallel <= 1 else n_ctx
        self.parallel = parallel
        self.n_vocab = self.llm.n_vocab()
        self.metadata: dict[str, str] = dict(self.llm.metadata)
        self.cache_slots = cache_slots
        self._slots: list[_Slot] = []  # most recently used last
        self.last_cached_tokens = 0
        self._vocab = self.llm._model.vocab
        from .decoder import make_decoding

        self.decoder = decoder
        self.decoding = make_decoding(decoder, self)  # None: plain decoding

    # --- tokenizer (read-only, any thread) ---------------------------------------------------
    def tokenize(self, text: str, *, special: bool) -> list[int]:
        if not text:
            return []
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def token_bytes(self, token: int) -> bytes:
        return self.llm.detokenize([token], special=False)

    def token_text(self, token: int) -> str:
        """A token spelled out, special tokens included (for chat-template variables)."""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # --- generation (worker thread only) -------------------------------------------------
    def constraint(self, tokens: list[int], sampling: Sampling, budget: int | None = None):
        """The decoder's state for one generation after ``tokens`` that may take ``budget``
        tokens (default ``sampling.max_tokens``; None: plain decoding)."""
        return self.decoding.start(tokens, sampling, budget) if self.decoding else None

    def generate(self, tokens: list[int], sampling: Sampling, constraint=None) -> Iterator[int]:
        """Sample tokens after ``tokens`` until the caller stops iterating."""
        self._use_best_slot(tokens)
        live = self.llm.input_ids[: self.llm.n_tokens]
        self.last_cached_tokens = min(common_prefix(live, tokens), max(len(tokens) - 1, 0))
        self.llm.set_seed(sampling_seed(sampling))
        processors = None
        if constraint is not None:
            start = len(tokens)

            def mask(input_ids, logits):  # the first sampler of the chain: logits in place
                constraint.follow(input_ids[start:])
                constraint.mask(logits)
                return logits

            processors = [mask]
        return self.llm.generate(
            tokens, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
            temp=sampling.temperature, repeat_penalty=sampling.repeat_penalty,
            frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty, reset=True,
            logits_processor=processors,
        )

    def parallel_context(self, n_seq: int):
        """A llama.cpp context of the same model with ``n_seq`` sequences sharing ``n_ctx``
        KV cells (for the batched engine)."""
        from llama_cpp._internals import LlamaContext

        # The Llama object's own parameters (flash attention off, rope scaling, threads), so
        # both contexts compute the same logits; llama.cpp's defaults would turn flash
        # attention on, which moved SmolLM2's logits by ~0.3 and flipped greedy tokens.
        params = type(self.llm.context_params).from_buffer_copy(self.llm.context_params)
        params.n_ctx = self.n_ctx
        params.n_batch = params.n_ubatch = 512
        params.n_seq_max = n_seq
        params.kv_unified = True
        ctx = LlamaContext(model=self.llm._model, params=params, verbose=False)
        lora_onto(self.llm, ctx)
        return ctx

    def clear_cache(self) -> None:
        """Forget every cached prefix (``cache_prompt: false``)."""
        self.llm.reset()
        self._slots.clear()

    # --- several cached prefixes ----------------------------------------------------------
    def _use_best_slot(self, tokens: list[int]) -> None:
        if self.cache_slots <= 0:
            return
        live_n = self.llm.n_tokens
        live_gain = common_prefix(self.llm.input_ids[:live_n], tokens)
        best_i, best_gain = None, live_gain
        for i, slot in enumerate(self._slots):
            gain = common_prefix(slot.tokens, tokens)
            if gain > best_gain:
                best_i, best_gain = i, gain
        switching = best_i is not None and best_gain - live_gain >= MIN_SLOT_GAIN
        # Keep the live prefix if the next prompt is about to overwrite most of it.
        if live_n >= MIN_SLOT_TOKENS and (switching or live_gain < live_n // 2):
            self._save_live()
            if best_i is not None:
                best_i = next((i for i, s in enumerate(self._slots)
                               if common_prefix(s.tokens, tokens) == best_gain), None)
        if switching and best_i is not None:
            self._load(self._slots.pop(best_i))

    def _save_live(self) -> None:
        lc, ctx = self._llama_cpp, self.llm._ctx.ctx
        tokens = [int(t) for t in self.llm.input_ids[: self.llm.n_tokens]]
        # A saved state that is a prefix of this one is superseded by it.
        self._slots = [s for s in self._slots
                       if common_prefix(s.tokens, tokens) < len(s.tokens)]
        size = lc.llama_state_seq_get_size(ctx, 0)
        data = (ctypes.c_uint8 * size)()
        written = lc.llama_state_seq_get_data(ctx, data, size, 0)
        if written == 0:
            log.warning("could not save a KV state; prefix cache slot skipped")
            return
        self._slots.append(_Slot(tokens, data))
        while len(self._slots) > self.cache_slots:
            self._slots.pop(0)

    def _load(self, slot: _Slot) -> None:
        lc, ctx = self._llama_cpp, self.llm._ctx.ctx
        self.llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        if lc.llama_state_seq_set_data(ctx, slot.data, len(slot.data), 0) == 0:
            log.warning("could not restore a KV state; reading the prompt afresh")
            self.llm.reset()
            return
        n = len(slot.tokens)
        self.llm.input_ids[:n] = slot.tokens
        self.llm.n_tokens = n
        self.llm._requires_eval = True
        self._slots.append(slot)  # still valid for later prompts, now most recent

    # --- description ---------------------------------------------------------------------
    def describe(self) -> dict:
        meta = self.metadata
        return {
            "path": str(self.model_path),
            "lora": str(self.lora_path) if self.lora_path else None,
            "size": self.model_path.stat().st_size,
            "architecture": meta.get("general.architecture", "unknown"),
            "n_ctx": self.n_ctx,
            "n_ctx_train": self.llm.n_ctx_train() if hasattr(self.llm, "n_ctx_train") else None,
            "n_params": self.llm._model.n_params(),
            "file_type": meta.get("general.file_type"),
            "cache_slots": self.cache_slots,
            "decoder": self.decoder,
        }

    def close(self) -> None:
        self._slots.clear()
        self.llm.close()


def lora_onto(llm, ctx) -> None:
    """Apply the Llama object's LoRA adapter to another context of the same model."""
    import llama_cpp

    adapter = getattr(llm, "_lora_adapter", None)
    if adapter is None:
        return
    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
    scales = (ctypes.c_float * 1)(llm.lora_scale)
    if llama_cpp.llama_set_adapters_lora(ctx.ctx, adapters, 1, scales):
        raise RuntimeError("could not apply the LoRA adapter to the batched context")
