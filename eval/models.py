"""Models under evaluation: a GGUF through llama-cpp-python, or any OpenAI-compatible server.

Both answer ``chat(messages)`` and ``fim(prefix, suffix)`` with a ``Generation``. A GGUF is
prompted in the project's prompt format (``csound_assistant.prompt_format``): the one named by
the stage folder holding it (``generation.format_for_gguf``), else the one its
architecture/name implies (``chatml`` for the embedded SmolLM2). ``llama_cpp`` is imported
only when a GGUF is loaded.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from csound_assistant.errors import ConfigError, ModelLoadError
from csound_assistant.opcode_reference import Lookups
from csound_assistant.prompt_format import get_format
from csound_assistant.runtime.fim_trim import trim_middle
from csound_assistant.sampling import TOP_K, TOP_P

from .generation import Generation, format_for_gguf

EMBEDDED = "embedded"  # a model spec naming the embedded base GGUF
DEFAULT_DECODER = "csound"  # serve's default (runtime/settings.py): the eval scores what it serves


def looping(tokens: list[int], window: int = 48, max_period: int = 16) -> bool:
    """The last ``window`` tokens repeat with a period of at most ``max_period`` tokens (the
    base model's "#Csound #Csound ..."): greedy decoding never leaves such a loop, so the rest
    of the answer would only cost time."""
    if len(tokens) < window + max_period:
        return False
    tail = tokens[-window:]
    return any(tail == tokens[-window - p:-p] for p in range(1, max_period + 1))


def resolve_spec(spec: str) -> str:
    """A model spec as a path or URL: ``embedded`` means the embedded base GGUF."""
    if spec == EMBEDDED:
        from csound_assistant.base.importer import embedded_gguf

        return str(embedded_gguf())
    return spec


def auto_threads() -> int:
    """llama.cpp threads spin while they wait: on a busy machine one thread is several times
    faster than two (measured on 2 cores at load 11: 16 tokens in 2.7 s vs 35 s). Busy is judged
    from the CPU's idle time over the next 0.3 s, not from the load average, which stays high for
    a minute after the pipeline's own training has finished."""
    cores = os.cpu_count() or 1
    if cores < 2:
        return 1
    idle = _idle_cores(0.3)
    busy = (idle < 1.0) if idle is not None else os.getloadavg()[0] > cores - 1
    return 1 if busy else min(cores, 4)


def _idle_cores(seconds: float) -> float | None:
    """Cores' worth of idle time over ``seconds`` (Linux /proc/stat), None elsewhere."""
    def sample():
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total (in clock ticks)

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 == total0:
        return None
    return (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)


def load_model(spec: str, *, prompt_format: str | None = None, n_ctx: int = 2048,
               n_threads: int | None = None, api_model: str | None = None,
               verify: int = 0, verify_seconds: float = 60.0, decoder: str | None = None):
    """A model for ``spec``. A GGUF answers through the server's own path (``RuntimeModel``)
    with ``decoder`` (None: serve's default, ``csound``) and, with ``verify`` N, N candidates
    checked per chat answer as ``serve --verify N`` does; ``decoder="plain"`` without
    ``verify`` is llama-cpp-python's own decode (``GGUFModel``, the same tokens). A URL is
    scored as that server answers: its decoder is the server's."""
    spec = resolve_spec(spec)
    if spec.startswith(("http://", "https://")):
        if verify or decoder:
            flag = "--verify N" if verify else f"--decoder {decoder}"
            raise ConfigError(f"{flag.split()[0]} needs a GGUF, not the server {spec}: start "
                              f"that server with `csound-assistant serve {flag}` instead")
        return OpenAIModel(spec, model=api_model)
    decoder = decoder or DEFAULT_DECODER
    if verify or decoder != "plain":
        from .runtime_model import RuntimeModel

        return RuntimeModel.from_gguf(Path(spec), prompt_format=prompt_format, n_ctx=n_ctx,
                                      n_threads=n_threads or auto_threads(), verify=verify,
                                      verify_seconds=verify_seconds, decoder=decoder)
    return GGUFModel(Path(spec), prompt_format=prompt_format, n_ctx=n_ctx,
                     n_threads=n_threads or auto_threads())


class GGUFModel:
    def __init__(self, path: Path, *, prompt_format: str | None = None, n_ctx: int = 2048,
                 n_threads: int = 2):
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path} (give a .gguf path, "
                                 f"'{EMBEDDED}', or an http(s)://.../v1 URL)")
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ModelLoadError(f"{path} is not a GGUF file")
        from csound_assistant.llamacpp import load

        llama_cpp = load()

        self.path, self.n_threads = path, n_threads
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                                   n_threads_batch=n_threads, verbose=False, seed=0)
        self.format = (get_format(prompt_format) if prompt_format
                       else format_for_gguf(path, self.llm.metadata))
        self.lookups = Lookups.of_gguf(self.llm.metadata)
        self.stop_ids = {self._one_token(t) for t in self.format.stop} | {self.llm.token_eos()}

    def describe(self) -> dict:
        from csound_assistant.artifacts import sha256_file

        return {"kind": "gguf", "path": str(self.path), "bytes": self.path.stat().st_size,
                "sha256": sha256_file(self.path), "prompt_format": self.format.name,
                "n_threads": self.n_threads,
                "opcode_reference": self.lookups.describe(), "lookups": self.lookups.names}

    def _one_token(self, text: str) -> int:
        ids = self.llm.tokenize(text.encode(), add_bos=False, special=True)
        if len(ids) != 1:
            raise ConfigError(f"prompt format {self.format.name!r} token {text!r} is not one "
                              f"token of {self.path.name} (got {ids}); pass --prompt-format")
        return ids[0]

    def _run(self, tokens: list[int], max_tokens: int, temperature: float,
             seed: int, repeat_penalty: float = 1.0) -> Generation:
        if len(tokens) + 1 >= self.llm.n_ctx():
            tokens = tokens[-(self.llm.n_ctx() - max_tokens - 1):]
        self.llm.set_seed(seed)
        start, out = time.monotonic(), []
        for token in self.llm.generate(tokens, temp=temperature, top_p=TOP_P, top_k=TOP_K,
                                       repeat_penalty=repeat_penalty, reset=True):
            if token in self.stop_ids:
                break
            out.append(token)
            if len(out) >= max_tokens or len(tokens) + len(out) >= self.llm.n_ctx() - 1:
                break
            if len(out) % 16 == 0 and ((temperature == 0 and looping(out))
                                       or self._csd_closed(out)):
                break
        text = self.llm.detokenize(out).decode("utf-8", errors="replace")
        return Generation(text, time.monotonic() - start, len(out), len(tokens))

    def _csd_closed(self, out: list[int]) -> bool:
        """A chat answer's CSD is complete: what follows cannot change its score."""
        return b"</CsoundSynthesizer>" in self.llm.detokenize(out[-24:])

    def chat_prompt(self, messages: list[dict]) -> str:
        """The text the model reads: the format's, with manual synopses where it was trained
        with them."""
        return self.format.chat_prompt(self.lookups.messages(messages))

    def chat(self, messages: list[dict], *, max_tokens: int = 256, temperature: float = 0.0,
             seed: int = 0, repeat_penalty: float = 1.0) -> Generation:
        tokens = self.llm.tokenize(self.chat_prompt(messages).encode(), add_bos=False,
                                   special=True)
        return self._run(tokens, max_tokens, temperature, seed, repeat_penalty)

    def fim(self, prefix: str, suffix: str, *, max_tokens: int = 256, temperature: float = 0.0,
            seed: int = 0, repeat_penalty: float = 1.0) -> Generation:
        def plain(text):  # code text never turns into special tokens
            return self.llm.tokenize(text.encode(), add_bos=False, special=False) if text else []
        f = self.format
        raw_prefix, prefix = prefix, self.lookups.fim_prefix(prefix, suffix)
        bos = [self._one_token(f.bos)] if f.bos else []
        tokens = [*bos, self._one_token(f.fim_prefix.strip()), *plain(prefix),
                  self._one_token(f.fim_suffix.strip()), *plain(suffix),
                  self._one_token(f.fim_middle.strip())]
        gen = self._run(tokens, max_tokens, temperature, seed, repeat_penalty)
        # the server's FIM routes trim the middle where an editor would cut it; so does this
        gen.text = trim_middle(raw_prefix, gen.text, suffix)
        return gen

    def close(self) -> None:
        self.llm.close()


def _penalty(repeat_penalty: float) -> dict:
    """llama.cpp's server (and ``csound-assistant serve``) read ``repeat_penalty``; it is left
    out at 1.0 so that strict OpenAI servers see only standard fields."""
    return {} if repeat_penalty == 1.0 else {"repeat_penalty": repeat_penalty}


class OpenAIModel:
    """Any server with OpenAI's /v1/chat/completions (and /v1/completions with ``suffix`` for
    FIM): llama.cpp's server, Ollama's /v1, vLLM, ``csound-assistant serve``."""

    def __init__(self, base_url: str, *, model: str | None = None, timeout: float = 300.0):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.timeout = timeout
        self.model = model or self._first_model()

    def describe(self) -> dict:
        return {"kind": "openai", "url": self.base_url, "model": self.model}

    def _request(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"{self.base_url}{path}: {exc}") from None

    def _first_model(self) -> str:
        models = self._request("/models").get("data") or []
        if not models:
            raise ModelLoadError(f"{self.base_url}/models lists no model; pass --api-model")
        return models[0]["id"]

    def chat(self, messages, *, max_tokens=256, temperature=0.0, seed=0,
             repeat_penalty=1.0) -> Generation:
        start = time.monotonic()
        reply = self._request("/chat/completions", {
            "model": self.model, "messages": messages, "max_tokens": max_tokens,
            "temperature": temperature, "seed": seed, **_penalty(repeat_penalty)})
        usage = reply.get("usage") or {}
        return Generation(reply["choices"][0]["message"]["content"] or "",
                          time.monotonic() - start, usage.get("completion_tokens", 0),
                          usage.get("prompt_tokens", 0))

    def fim(self, prefix, suffix, *, max_tokens=256, temperature=0.0, seed=0,
            repeat_penalty=1.0) -> Generation:
        start = time.monotonic()
        reply = self._request("/completions", {
            "model": self.model, "prompt": prefix, "suffix": suffix, "max_tokens": max_tokens,
            "temperature": temperature, "seed": seed, **_penalty(repeat_penalty)})
        usage = reply.get("usage") or {}
        return Generation(reply["choices"][0]["text"] or "", time.monotonic() - start,
                          usage.get("completion_tokens", 0), usage.get("prompt_tokens", 0))

    def close(self) -> None:
        pass
