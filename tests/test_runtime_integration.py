"""The real server (``csound-assistant serve`` in a subprocess) on the embedded SmolLM2 GGUF,
driven by the official openai and ollama clients and raw HTTP; plus a load test on loopback."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time

import httpx
import ollama
import openai
import psutil
import pytest

from csound_assistant.runtime.backend import LlamaBackend
from csound_assistant.runtime.prompts import PromptBuilder

from runtime_helpers import serve_process

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CSOUND_PREFIX = "".join(
    f"instr {i}\n  kenv linseg 0, 0.1, 1, p3 - 0.2, 1, 0.1, 0\n  aout oscili 0.2 * kenv, "
    f"{220 * i}\n  outs aout, aout\nendin\n\n" for i in range(1, 5))


@pytest.fixture(scope="module")
def server(embedded_gguf, tmp_path_factory):
    log = open(tmp_path_factory.mktemp("serve") / "server.log", "w+")
    proc, url = serve_process(
        [str(embedded_gguf), "--prompt-format", "chatml", "--n-ctx", "2048", "--max-queue", "64",
         "--api-key", KEY, "--threads", "1", "--log-level", "warning"], log)
    yield url, proc
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def oai(server):
    return openai.OpenAI(base_url=f"{server[0]}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def olla(server):
    return ollama.Client(host=server[0], headers=AUTH, timeout=120)


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server[0], headers=AUTH, timeout=120) as client:
        yield client


def test_prompt_builder_on_the_real_vocabulary(embedded_gguf):
    backend = LlamaBackend(embedded_gguf, n_ctx=512, cache_slots=0)
    try:
        chatml = PromptBuilder(backend, "chatml")
        ids = {t: backend.tokenize(t, special=True)
               for t in ("<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<|im_end|>",
                         "<|endoftext|>")}
        assert [chatml.fim.pre, chatml.fim.suf, chatml.fim.mid] == \
            ids["<jupyter_start>"] + ids["<jupyter_text>"] + ids["<jupyter_code>"]
        assert chatml.stop_ids == set(ids["<|im_end|>"] + ids["<|endoftext|>"])
        assert all(backend.is_eog(t) for t in ids["<|im_end|>"])
        tokens = chatml.chat_tokens([{"role": "user", "content": "hi"}])
        assert tokens[-4:] == backend.tokenize("<|im_start|>assistant\n", special=True)
        # Without --prompt-format: the GGUF's own template, and no FIM tokens to use.
        own = PromptBuilder(backend, None)
        assert own.template_source == "gguf" and own.fim is None
        assert "SmolLM" in own.chat_text([{"role": "user", "content": "hi"}])
    finally:
        backend.close()


def test_openai_chat_plain_and_streaming(oai):
    assert [m.id for m in oai.models.list().data] == ["csound-assistant"]
    messages = [{"role": "user", "content": "Write a Csound instrument that plays a sine."}]
    reply = oai.chat.completions.create(model="csound-assistant", messages=messages,
                                        max_tokens=8, temperature=0)
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 8 and reply.usage.prompt_tokens > 20
    stream = oai.chat.completions.create(model="csound-assistant", messages=messages,
                                         max_tokens=8, temperature=0, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content  # greedy: the same answer either way
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


def test_openai_fim_completion_and_seed(oai):
    kw = dict(model="csound-assistant", prompt="instr 1\n  aout oscili 0.5, 440\n",
              suffix="\nendin\n", max_tokens=8, temperature=1.0, seed=7)
    first, second = oai.completions.create(**kw), oai.completions.create(**kw)
    assert first.choices[0].text == second.choices[0].text
    assert first.usage.prompt_tokens > 10
    # The second identical prompt was read from the prefix cache.
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1
    stream = oai.completions.create(**{**kw, "stream": True})
    assert "".join(c.choices[0].text for c in stream) == first.choices[0].text
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        oai.completions.create(**{**kw, "max_tokens": 0})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=oai.base_url, api_key="wrong", max_retries=0).models.list()


def test_ollama_client(olla):
    assert [m.model for m in olla.list().models] == ["csound-assistant:latest"]
    show = olla.show("csound-assistant")
    assert ".Suffix" in show.template and "insert" in show.capabilities
    fim = olla.generate(model="csound-assistant", prompt="instr 1\n  aout oscili 0.5, 440\n",
                        suffix="\nendin\n", options={"num_predict": 8, "temperature": 0})
    assert fim.done and fim.eval_count <= 8
    parts = list(olla.generate(model="csound-assistant", prompt="What is Csound?", stream=True,
                               options={"num_predict": 8, "temperature": 0}))
    assert parts[-1].done and "".join(p.response for p in parts).strip()
    messages = [{"role": "user", "content": "Name one Csound opcode."}]
    reply = olla.chat(model="csound-assistant", messages=messages,
                      options={"num_predict": 8, "temperature": 0})
    streamed = list(olla.chat(model="csound-assistant", messages=messages, stream=True,
                              options={"num_predict": 8, "temperature": 0}))
    assert "".join(p.message.content for p in streamed) == reply.message.content
    with pytest.raises(ollama.ResponseError):
        olla.generate(model="other-model", prompt="x")


def test_infill_reuses_the_prefix_cache_across_files(http):
    def infill(prefix, suffix="\nendin\n", typed=""):
        r = http.post("/infill", json={"input_prefix": prefix, "input_suffix": suffix,
                                       "prompt": typed, "n_predict": 4, "temperature": 0})
        assert r.status_code == 200, r.text
        return r.json()

    file_a = CSOUND_PREFIX + "instr 99\n  aout "
    file_b = "; another file\n" + CSOUND_PREFIX.replace("oscili", "poscil") + "instr 7\n"
    cold = infill(file_a)
    assert cold["timings"]["prompt_n"] > 150 and isinstance(cold["content"], str)
    warm = infill(file_a, typed="oscili")  # the user typed on: only the new tail is read
    assert warm["timings"]["cache_n"] >= cold["tokens_evaluated"] - 10
    assert warm["timings"]["prompt_n"] < 20
    infill(file_b)  # another file evicts the live cache...
    back = infill(file_a)  # ...but file A's prefix comes back from a saved slot
    assert back["timings"]["cache_n"] >= cold["tokens_evaluated"] - 10
    assert back["content"] == cold["content"]  # the restored KV state is the right one
    streamed = http.post("/infill", json={"input_prefix": file_a, "input_suffix": "",
                                          "n_predict": 4, "stream": True, "temperature": 0})
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1]["stop"] is True and all(not e["stop"] for e in events[:-1])


def test_seed_complete_route(http):
    r = http.post("/complete", json={"prompt": "<csoundsynthesizer>", "max_tokens": 5,
                                     "temperature": 0.1})
    assert r.status_code == 200 and set(r.json()) == {"completion"}
    assert isinstance(r.json()["completion"], str)
    assert httpx.post(http.base_url.join("/complete"), json={"prompt": "x"}).status_code == 401


def _mixed_request(url: str, i: int) -> str:
    """One client of the load test; returns what happened."""
    kind = i % 8
    with httpx.Client(base_url=url, headers=AUTH, timeout=180) as h:
        if kind == 7:  # leaves in the middle of a long stream
            with h.stream("POST", "/v1/completions", json={
                    "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 400, "stream": True}) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        return "left"
            return "left"
        if kind == 0:
            r = h.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": f"Csound question {i}"}],
                "max_tokens": 6})
            assert r.json()["choices"][0]["message"]["content"] is not None
        elif kind == 1:
            r = h.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
                "stream": True})
            assert r.text.rstrip().endswith("data: [DONE]")
        elif kind == 2:
            r = h.post("/v1/completions", json={"prompt": f"instr {i}\n", "suffix": "endin\n",
                                                "max_tokens": 6})
            assert "choices" in r.json()
        elif kind == 3:
            r = h.post("/api/generate", json={"model": "csound-assistant", "prompt": "hi",
                                              "options": {"num_predict": 6}})
            assert json.loads(r.text.splitlines()[-1])["done"] is True
        elif kind == 4:
            r = h.post("/api/chat", json={"model": "csound-assistant", "stream": False,
                                          "messages": [{"role": "user", "content": "hi"}],
                                          "options": {"num_predict": 6}})
            assert r.json()["done"] is True
        elif kind == 5:
            r = h.post("/infill", json={"input_prefix": CSOUND_PREFIX[: 200 + i],
                                        "input_suffix": "endin", "n_predict": 6})
            assert "content" in r.json()
        else:
            r = h.post("/complete", json={"prompt": "instr 1\n", "max_tokens": 6})
            assert "completion" in r.json()
        assert r.status_code == 200, r.text
        return "done"


def _load_round(url: str, n: int = 50) -> list[str]:
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(_mixed_request, url, i) for i in range(n)]
        return [f.result(timeout=300) for f in futures]


def test_concurrent_mixed_requests_with_a_disconnect(server, http):
    # A quick version of the load test below for the default suite: 8 clients, one leaves.
    outcomes = _load_round(server[0], 8)
    assert outcomes.count("done") == 7 and outcomes.count("left") == 1
    deadline = time.monotonic() + 60
    while (h := http.get("/health").json())["busy"] or h["queue_depth"]:
        assert time.monotonic() < deadline, "the server is still busy after the load"
        time.sleep(0.1)
    assert h["counts"].get("errors", 0) == 0


@pytest.mark.slow
def test_load_50_concurrent_mixed_requests_with_disconnects(server, http):
    url, proc = server
    process = psutil.Process(proc.pid)
    _load_round(url, 8)  # warm up every route and the prefix cache slots
    rss = [process.memory_info().rss]
    for _ in range(2):
        outcomes = _load_round(url, 50)
        assert outcomes.count("done") == 44 and outcomes.count("left") == 6
        deadline = time.monotonic() + 60
        while (h := http.get("/health").json())["busy"] or h["queue_depth"]:
            assert time.monotonic() < deadline, "the server is still busy after the load"
            time.sleep(0.1)
        rss.append(process.memory_info().rss)
    counts = http.get("/health").json()["counts"]
    assert counts.get("finish_cancelled", 0) >= 6  # clients that left stopped their streams
    assert counts.get("errors", 0) == 0
    growth = [(b - a) / 2**20 for a, b in zip(rss, rss[1:])]
    print(f"server RSS MiB: {[round(r / 2**20) for r in rss]}")
    assert growth[1] < 64, f"RSS grew {growth[1]:.0f} MiB in the second round"
    assert (rss[-1] - rss[0]) / 2**20 < 256


# --- several sequences in one batch (serve --parallel) ------------------------------------------
@pytest.fixture(scope="module")
def parallel_url(embedded_gguf):
    from csound_assistant.runtime.server import create_app
    from csound_assistant.runtime.settings import Settings

    from runtime_helpers import running_server

    backend = LlamaBackend(embedded_gguf, n_ctx=2048, n_threads=1, parallel=3)
    app = create_app(Settings(prompt_format="chatml", parallel=3, n_ctx=2048), backend)
    with running_server(app) as url:
        yield url
    backend.close()


def test_parallel_requests_share_batches(parallel_url):
    prompts = ["instr 3\n  aout oscili", "instr 3\n  aout oscili", "<CsoundSynthesizer>\n",
               "; a reverb\ninstr 2\n"]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda p: httpx.post(
            f"{parallel_url}/v1/completions", timeout=300,
            json={"prompt": p, "max_tokens": 10, "temperature": 0, "ignore_eos": True}).json(),
            prompts))
    assert all(r["usage"]["completion_tokens"] == 10 for r in replies)
    # The same prompt decoded beside other requests starts with the same greedy token ("ator",
    # 0.31 logits ahead of the next candidate; later near-ties may flip with batch shapes).
    first, second = (r["choices"][0]["text"] for r in replies[:2])
    assert first.startswith("ator") and second.startswith("ator")
    health = httpx.get(f"{parallel_url}/health").json()
    assert health["counts"]["batched_steps"] > 0  # steps that decoded several requests at once
    assert not health["busy"] and health["queue_depth"] == 0
    # A free sequence that holds a prompt's prefix is reused for the next one. (Sent alone:
    # among the concurrent requests above, the one that queued may land on any free sequence,
    # overwriting whichever prefix it held.)
    httpx.post(f"{parallel_url}/v1/completions", timeout=300,
               json={"prompt": "; a reverb\ninstr 2\n", "max_tokens": 2})
    again = httpx.post(f"{parallel_url}/v1/completions", timeout=300,
                       json={"prompt": "; a reverb\ninstr 2\n  aL, aR reverbsc", "max_tokens": 2})
    assert again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 6


def test_parallel_disconnect_frees_the_sequence(parallel_url):
    with httpx.Client(base_url=parallel_url, timeout=300) as h:
        with h.stream("POST", "/v1/completions", json={
                "prompt": "1, 2, 3,", "max_tokens": 1000, "ignore_eos": True,
                "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break
        deadline = time.monotonic() + 60
        while (health := h.get("/health").json())["busy"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert health["counts"]["finish_cancelled"] >= 1
        fim = h.post("/infill", json={"input_prefix": "instr 1\n", "input_suffix": "endin\n",
                                      "n_predict": 3})
        assert fim.status_code == 200 and fim.json()["tokens_predicted"] <= 3


@pytest.mark.slow
def test_parallel_full_kv_cache_stops_one_request_not_the_server(embedded_gguf):
    from csound_assistant.runtime.server import create_app
    from csound_assistant.runtime.settings import Settings

    from runtime_helpers import running_server

    # Two sequences share 256 KV cells (llama.cpp's minimum); each asks for more than half.
    backend = LlamaBackend(embedded_gguf, n_ctx=256, n_threads=1, parallel=2)
    app = create_app(Settings(prompt_format="chatml", parallel=2, n_ctx=256), backend)
    try:
        with running_server(app) as url, concurrent.futures.ThreadPoolExecutor(2) as pool:
            body = {"prompt": "instr 1\n" * 10, "max_tokens": 180, "ignore_eos": True}
            replies = list(pool.map(lambda _: httpx.post(f"{url}/v1/completions", json=body,
                                                         timeout=300), range(2)))
            assert [r.status_code for r in replies] == [200, 200]
            counts = sorted(r.json()["usage"]["completion_tokens"] for r in replies)
            # One is stopped when the cells run out; its cells freed, the other one finishes.
            assert counts[0] < 180 and counts[1] == 180
            assert all(r.json()["choices"][0]["finish_reason"] == "length" for r in replies)
            assert httpx.post(f"{url}/complete", json={"prompt": "x", "max_tokens": 2},
                              timeout=60).status_code == 200
    finally:
        backend.close()
