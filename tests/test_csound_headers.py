"""Every answer says how it was made (runtime/headers.py): X-Csound-Decoder on every generating
route, streamed or not, chat or FIM, and the verify headers on verified streams. The model is
the fake backend; its ``decoder`` attribute stands for the one a ``LlamaBackend`` was given."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings

from runtime_helpers import GOOD, FakeBackend

MODEL = "csound-assistant"
MESSAGES = [{"role": "user", "content": "A sine."}]
PREFIX, SUFFIX = "instr 1\n  asig ", "\n  outs asig, asig\nendin\n"
ROUTES = {  # name: (path, body); "stream" is added as each case says
    "chat": ("/v1/chat/completions", {"messages": MESSAGES}),
    "completions": ("/v1/completions", {"prompt": "instr 1\n"}),
    "completions-fim": ("/v1/completions", {"prompt": PREFIX, "suffix": SUFFIX}),
    "ollama-chat": ("/api/chat", {"model": MODEL, "messages": MESSAGES}),
    "ollama-generate": ("/api/generate", {"model": MODEL, "prompt": "A sine."}),
    "ollama-generate-fim": ("/api/generate", {"model": MODEL, "prompt": PREFIX,
                                              "suffix": SUFFIX}),
    "infill": ("/infill", {"input_prefix": PREFIX, "input_suffix": SUFFIX}),
    "completion": ("/completion", {"prompt": "instr 1\n"}),
}


def client(backend, **settings) -> TestClient:
    return TestClient(create_app(Settings(prompt_format=None, **settings), backend))


def csound_backend(reply="oscili 0.3, 440", **kw) -> FakeBackend:
    backend = FakeBackend(reply, fim_metadata=True, **kw)
    backend.decoder = "csound"
    return backend


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("route", ROUTES)
def test_every_route_says_which_decoder_made_the_answer(route, stream):
    path, body = ROUTES[route]
    for backend, decoder in ((csound_backend(), "csound"),
                             (FakeBackend("oscili 0.3, 440", fim_metadata=True), "plain")):
        with client(backend) as c:
            r = c.post(path, json={**body, "stream": stream, "max_tokens": 8})
        assert r.status_code == 200, r.text
        assert r.headers["x-csound-decoder"] == decoder
        assert stream or "oscili" in r.text  # the answer itself came too


@pytest.mark.parametrize("body", [{"n_predict": 0}, {"n_cmpl": 2, "n_predict": 4}],
                         ids=["cache-warming", "two-completions"])
def test_infill_variants_carry_the_decoder_too(body):
    with client(csound_backend()) as c:
        r = c.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, **body})
        assert r.status_code == 200, r.text
        assert r.headers["x-csound-decoder"] == "csound"
        r = c.post("/complete", json={"prompt": "instr 1\n", "max_tokens": 4})
        assert r.headers["x-csound-decoder"] == "csound"


def test_health_says_the_fake_decodes_plain():
    with client(FakeBackend()) as c:
        decoder = c.get("/health").json()["decoder"]
    assert decoder["active"] == "plain" and decoder["opcode_table"] is None


CSD_PREFIX, CSD_SUFFIX = GOOD.split("  asig poscil 0.3, 440\n")


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": CSD_PREFIX, "suffix": CSD_SUFFIX, "stream": True}),
    ("/api/generate", {"model": MODEL, "prompt": CSD_PREFIX, "suffix": CSD_SUFFIX}),
], ids=["openai", "ollama"])
def test_a_verified_fim_stream_carries_the_verify_headers(path, body):
    backend = csound_backend("  asig poscil 0.3, 440\n", n_ctx=4096)
    with client(backend, verify=1) as c:
        r = c.post(path, json={**body, "max_tokens": 40})
        assert r.status_code == 200, r.text
        assert r.headers["x-csound-verified"] == "first"
        assert r.headers["x-csound-verdict"] == "compiles"
        assert r.headers["x-csound-decoder"] == "csound"
