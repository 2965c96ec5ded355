"""A fake model for the server's unit tests, and a uvicorn server run in a thread.

``FakeBackend`` follows ``LlamaBackend``'s interface: bytes are tokens (id = 256 + byte), a few
special tokens spelled as in SmolLM2's vocabulary, and a scripted reply. It records every
prompt it was given and fails the test if two generations ever overlap.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn

from csound_assistant.prompt_format import get_format
from csound_assistant.runtime.backend import common_prefix

SPECIAL = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "<jupyter_start>": 11,
           "<jupyter_text>": 12, "<jupyter_code>": 13, "<empty_output>": 16}
BYTE0 = 256


class FakeBackend:
    def __init__(self, reply: str = "Hello from Csound.", *, delay: float = 0.0,
                 endless: bool = False, n_ctx: int = 512, chat_template: str | None = "chatml",
                 fim_metadata: bool = False, fail: bool = False, first_delay: float = 0.0):
        self.reply, self.delay, self.endless, self.fail = reply, delay, endless, fail
        self.first_delay = first_delay  # a long prompt read: nothing can interrupt it
        self.n_ctx, self.n_vocab = n_ctx, 512
        self.metadata = {"general.architecture": "llama", "general.file_type": "3",
                         "tokenizer.ggml.eos_token_id": "2", "general.license": "apache-2.0"}
        if chat_template == "chatml":
            chat_template = get_format("chatml").jinja_chat_template()
        if chat_template:
            self.metadata["tokenizer.chat_template"] = chat_template
        if fim_metadata:
            self.metadata.update({"tokenizer.ggml.fim_pre_token_id": "11",
                                  "tokenizer.ggml.fim_suf_token_id": "12",
                                  "tokenizer.ggml.fim_mid_token_id": "13"})
        self.prompts: list[list[int]] = []
        self.generated: list[int] = []  # tokens produced per generation
        self.active = 0
        self.overlaps = 0
        self.last_cached_tokens = 0
        self._previous: list[int] = []
        self.model_path = "fake.gguf"

    # tokenizer
    def tokenize(self, text: str, *, special: bool) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            for name, tid in SPECIAL.items():
                if special and text.startswith(name, i):
                    ids.append(tid)
                    i += len(name)
                    break
            else:
                ids += [BYTE0 + b for b in text[i].encode()]
                i += 1
        return ids

    def token_bytes(self, token: int) -> bytes:
        return bytes([token - BYTE0]) if token >= BYTE0 else b""

    def token_text(self, token: int) -> str:
        for name, tid in SPECIAL.items():
            if tid == token:
                return name
        return self.token_bytes(token).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return token in (0, 2)

    def detokenize(self, ids) -> str:
        return b"".join(self.token_bytes(t) for t in ids).decode("utf-8", errors="replace")

    # generation
    def generate(self, tokens, sampling):
        self.prompts.append(list(tokens))
        self.last_cached_tokens = min(common_prefix(self._previous, tokens), len(tokens) - 1)
        self._previous = list(tokens)
        self.generated.append(0)
        return self._tokens()

    def _tokens(self):
        self.active += 1
        if self.active > 1:
            self.overlaps += 1
        try:
            if self.fail:
                raise RuntimeError("simulated backend failure")
            reply = [BYTE0 + b for b in self.reply.encode()]
            i = 0
            while True:
                if i < len(reply):
                    token = reply[i]
                elif self.endless:
                    token = reply[i % len(reply)]
                else:
                    token = 2
                if self.delay:
                    time.sleep(self.delay)
                if i == 0 and self.first_delay:
                    time.sleep(self.first_delay)
                self.generated[-1] += 1
                yield token
                i += 1
        finally:
            self.active -= 1

    def clear_cache(self):
        self._previous = []

    def describe(self) -> dict:
        return {"path": "fake.gguf", "lora": None, "size": 1234, "architecture": "llama",
                "n_ctx": self.n_ctx, "n_ctx_train": self.n_ctx, "n_params": 135_000_000,
                "file_type": "3", "cache_slots": 0}

    def close(self):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(app, *, timeout: float = 30.0):
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)



@contextlib.contextmanager
def embedded_server(gguf, **settings):
    """The real app on the embedded GGUF (chatml, 1,024 tokens, 1 thread) on a loopback port;
    yields its base URL. ``settings``: further ``Settings`` fields (``api_key``...)."""
    from csound_assistant.runtime.server import create_app
    from csound_assistant.runtime.settings import Settings

    app = create_app(Settings(model_path=gguf, prompt_format="chatml", n_ctx=1024,
                              n_threads=1, **settings))
    with running_server(app, timeout=120) as url:
        yield url


def serve_process(args: list[str], log) -> tuple[subprocess.Popen, str]:
    """``csound-assistant serve ARGS`` in a subprocess on a free port, its output to the open
    file ``log``; returns (process, base URL) once /health answers, or fails the test with the
    server's last output."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "csound_assistant.cli", "serve", *args, "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the server exited: {log.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the server did not become healthy in 120 s")
        time.sleep(0.2)

# A CSD that plays, and two that Csound refuses (repair and --verify tests)
GOOD = """<CsoundSynthesizer>
<CsInstruments>
sr = 44100
ksmps = 32
nchnls = 2
0dbfs = 1
instr 1
  asig poscil 0.3, 440
  outs asig, asig
endin
</CsInstruments>
<CsScore>
i 1 0 1
</CsScore>
</CsoundSynthesizer>"""
BROKEN = GOOD.replace("poscil 0.3, 440", "poscil 0.3, 440, 1, 2, 3, 4, 5")  # too many arguments: does not compile
WORSE = GOOD.replace("asig poscil", "asig posscil")  # misspelled: does not compile either
