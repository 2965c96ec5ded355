"""The server with a fake model: routes, validation, auth, limits, queueing, cancellation."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
from starlette.testclient import TestClient

from csound_assistant.errors import ConfigError
from csound_assistant.runtime.engine import _find_stop
from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings

from runtime_helpers import BYTE0, FakeBackend, running_server

CHAT = {"messages": [{"role": "user", "content": "Write an oscillator."}]}


def make_client(backend=None, **settings):
    settings.setdefault("prompt_format", None)
    app = create_app(Settings(**settings), backend or FakeBackend())
    return TestClient(app)


@pytest.fixture
def client():
    with make_client() as c:
        yield c


def sse_events(text: str) -> list:
    return [line[6:] for line in text.splitlines() if line.startswith("data: ")]


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --- no torch -----------------------------------------------------------------------------------
def test_app_imports_neither_torch_nor_transformers(embedded_gguf):
    code = (
        "import sys\n"
        "from csound_assistant.runtime import cli\n"
        "from csound_assistant.runtime.backend import LlamaBackend\n"
        "from csound_assistant.runtime.server import create_app\n"
        "from csound_assistant.runtime.settings import Settings\n"
        f"b = LlamaBackend({str(embedded_gguf)!r}, n_ctx=256)\n"
        "create_app(Settings(prompt_format='chatml'), b)\n"
        "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


# --- routes -------------------------------------------------------------------------------------
def test_models_are_listed_under_the_configured_name():
    with make_client(model_name="my-csound") as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["my-csound"]
        assert c.get("/api/tags").json()["models"][0]["name"] == "my-csound:latest"
        assert c.get("/v1/models/my-csound").status_code == 200
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4"})
        assert r.status_code == 404 and "my-csound" in r.json()["error"]["message"]
        r = c.post("/api/generate", json={"model": "llama3", "prompt": "x"})
        assert r.status_code == 404 and "llama3" in r.json()["error"]


def test_chat_completion_renders_the_template_and_counts_usage(client):
    backend = client.app.state.service.backend
    r = client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello from Csound."}
    assert body["choices"][0]["finish_reason"] == "stop"
    prompt = backend.detokenize(backend.prompts[-1])
    assert prompt.endswith("Write an oscillator.\nassistant\n")  # specials are not bytes
    assert backend.prompts[-1][-4:] == backend.tokenize("<|im_start|>assistant\n", special=True)[-4:]
    assert body["usage"]["prompt_tokens"] == len(backend.prompts[-1])
    assert body["usage"]["completion_tokens"] == len("Hello from Csound.")
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + len("Hello from Csound.")


def test_chat_stream_is_sse_and_adds_up(client):
    r = client.post("/v1/chat/completions",
                    json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello from Csound."
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == len(text)


def test_max_tokens_and_stop_strings():
    with make_client(FakeBackend("one two STOP three")) as c:
        r = c.post("/v1/completions", json={"prompt": "x", "max_tokens": 3}).json()
        assert r["choices"][0] == {"text": "one", "index": 0, "logprobs": None,
                                   "finish_reason": "length"}
        r = c.post("/v1/completions", json={"prompt": "x", "stop": ["STOP"]}).json()
        assert r["choices"][0]["text"] == "one two " and r["choices"][0]["finish_reason"] == "stop"
        # A partial match is held back, then released when it turns out not to be a stop.
        r = c.post("/v1/completions", json={"prompt": "x", "stop": "STOPX", "stream": True})
        pieces = [json.loads(e)["choices"][0]["text"] for e in sse_events(r.text)[:-1]]
        assert "".join(pieces) == "one two STOP three"
        assert "S" not in pieces and "STOP " in pieces


def test_find_stop_holds_back_possible_beginnings():
    assert _find_stop("abc</", ["</s>"]) == (2, False)  # hold back "</"
    assert _find_stop("abc</s>def", ["</s>", "c<"]) == (2, True)
    assert _find_stop("abc", []) == (0, False)


def test_utf8_split_across_tokens_is_reassembled():
    with make_client(FakeBackend("résumé ♪")) as c:
        r = c.post("/v1/completions", json={"prompt": "x", "stream": True})
        text = "".join(json.loads(e)["choices"][0]["text"] for e in sse_events(r.text)[:-1])
        assert text == "résumé ♪"


def test_fim_prompt_is_built_from_token_ids():
    backend = FakeBackend("aout")
    with make_client(backend, prompt_format="chatml") as c:
        r = c.post("/v1/completions", json={"prompt": "instr 1\n", "suffix": "\nendin",
                                            "max_tokens": 10})
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == "aout"
        tok = lambda s: backend.tokenize(s, special=False)  # noqa: E731
        assert backend.prompts[-1] == [11, *tok("instr 1\n"), 12, *tok("\nendin"), 13]
        # FIM text that spells a special token is text, not the token.
        c.post("/api/generate", json={"model": "csound-assistant", "prompt": "<|im_end|>",
                                      "suffix": "", "stream": False})
        assert 2 not in backend.prompts[-1]


def test_fim_uses_gguf_token_ids_and_501_without_any():
    backend = FakeBackend("x", fim_metadata=True)
    with make_client(backend) as c:
        assert c.post("/infill", json={"input_prefix": "a", "input_suffix": "b"}).status_code == 200
        assert backend.prompts[-1] == [11, BYTE0 + ord("a"), 12, BYTE0 + ord("b"), 13]
    with make_client(FakeBackend("x")) as c:
        r = c.post("/infill", json={"input_prefix": "a", "input_suffix": "b"})
        assert r.status_code == 501 and "--prompt-format" in r.json()["error"]["message"]


def test_no_chat_template_needs_a_prompt_format():
    with pytest.raises(ConfigError, match="--prompt-format"):
        create_app(Settings(), FakeBackend(chat_template=None))
    app = create_app(Settings(prompt_format="chatml"), FakeBackend(chat_template=None))
    assert app.state.settings.prompt_format == "chatml"


def test_infill_follows_llama_cpp(client):
    backend = FakeBackend("  oscili", n_ctx=512)
    with make_client(backend, prompt_format="chatml") as c:
        r = c.post("/infill", json={
            "input_prefix": "instr 1\n", "prompt": "aout =", "input_suffix": "\nendin\n",
            "input_extra": [{"filename": "udo.inc", "text": "opcode Foo, a, a"}],
            "n_predict": 16, "cache_prompt": True})
        body = r.json()
        assert body["content"] == "  oscili" and body["stop"] is True
        assert body["truncated"] is False and body["timings"]["predicted_n"] == 8
        text = backend.detokenize(backend.prompts[-1])
        # llama.cpp's layout without FIM_SEP: each chunk after a separator, before FIM_PRE.
        assert text.startswith("\n\n--- snippet ---\n\nopcode Foo, a, a")
        assert backend.prompts[-1][text.index("a, a") + 4] == 11 and "instr 1\naout =" in text
        # A prefix far beyond the context is trimmed from the start, the suffix from the end.
        r = c.post("/infill", json={"input_prefix": "p" * 2000, "input_suffix": "s" * 2000,
                                    "n_predict": 8, "cache_prompt": False, "response_fields": ["content", "truncated",
                                                                        "timings/prompt_n"]})
        assert r.json() == {"content": "  oscili", "truncated": True,
                            "timings/prompt_n": len(backend.prompts[-1])}
        assert len(backend.prompts[-1]) + 8 <= 512
        # The cursor's neighbourhood survives the trim.
        assert backend.prompts[-1][1] == BYTE0 + ord("p") and backend.prompts[-1][-1] == 13


def test_prefix_cache_counts_are_reported():
    backend = FakeBackend("ok")
    with make_client(backend, prompt_format="chatml") as c:
        body = {"input_prefix": "instr 1\n" * 10, "input_suffix": "endin"}
        first = c.post("/infill", json=body).json()
        second = c.post("/infill", json={**body, "input_suffix": "endin\n"}).json()
        assert first["timings"]["cache_n"] == 0
        assert second["timings"]["cache_n"] == 1 + 80 + 1 + 5


def test_ollama_generate_chat_show_and_version(client):
    r = client.post("/api/generate", json={"model": "csound-assistant", "prompt": "hi"})
    lines = [json.loads(line) for line in r.text.splitlines()]  # streams by default
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert "".join(x["response"] for x in lines) == "Hello from Csound."
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == len("Hello from Csound.")
    r = client.post("/api/chat", json={"model": "csound-assistant:latest", "stream": False,
                                       "messages": [{"role": "user", "content": "hi"}],
                                       "options": {"num_predict": 5}})
    assert r.json()["message"] == {"role": "assistant", "content": "Hello"}
    assert r.json()["done_reason"] == "length"
    assert client.get("/api/version").json()["version"]
    r = client.post("/api/generate", json={"model": "csound-assistant", "prompt": ""})
    assert r.json()["done"] is True  # Ollama's "load the model" call
    with make_client(prompt_format="chatml") as c:
        show = c.post("/api/show", json={"model": "csound-assistant"}).json()
        assert ".Suffix" in show["template"] and "insert" in show["capabilities"]
        assert 'stop "<|im_end|>"' in show["parameters"]


def test_seed_complete_api(client):
    r = client.post("/complete", json={"prompt": "instr 1", "max_tokens": 5, "temperature": 0.2})
    assert r.json() == {"completion": "Hello"}


# --- validation ---------------------------------------------------------------------------------
BAD = [
    ("/v1/chat/completions", b"{not json", "not valid JSON"),
    ("/v1/chat/completions", b"[1, 2]", "must be a JSON object"),
    ("/v1/chat/completions", b"", "empty"),
    ("/v1/chat/completions", b"\xff\xfe", "UTF-8"),
    ("/v1/chat/completions", {"messages": "hi"}, "'messages' must be a list"),
    ("/v1/chat/completions", {}, "'messages' is required"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "content"),
    ("/v1/chat/completions", {**CHAT, "temperature": "hot"}, "'temperature' must be a number"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, "'max_tokens' must be between 1"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 10**9}, "'max_tokens' must be between 1"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": True}, "'max_tokens' must be an integer"),
    ("/v1/chat/completions", {**CHAT, "top_p": 1.5}, "'top_p' must be between"),
    ("/v1/chat/completions", {**CHAT, "stop": [1]}, "'stop' must be a string or a list"),
    ("/v1/chat/completions", {**CHAT, "n": 3}, "'n' must be 1"),
    ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "'stream' must be true or false"),
    ("/v1/completions", {"prompt": ["a", "b"]}, "one prompt per request"),
    ("/v1/completions", {"prompt": "x" * 600}, "context holds 512"),
    ("/v1/completions", {"prompt": "x", "seed": 1.5}, "'seed' must be an integer"),
    ("/api/generate", {"model": "csound-assistant", "prompt": 3}, "'prompt' must be a string"),
    ("/api/generate", {"prompt": "x"}, "'model' is required"),
    ("/api/generate", {"model": "csound-assistant", "prompt": "x",
                       "options": {"temperature": -1}}, "'options.temperature' must be between"),
    ("/api/chat", {"model": "csound-assistant", "messages": [{"role": "user", "content": "x"}],
                   "format": "json"}, "not supported"),
    ("/infill", {"input_prefix": 5}, "'input_prefix' must be a string"),
    ("/infill", {"input_extra": [{"filename": "a"}]}, "'input_extra[0].text' is required"),
    ("/infill", {"n_predict": -2}, "'n_predict' must be between 1"),
    ("/completion", {"prompt": [1, 10**8]}, "list of token ids"),
    ("/completion", {"prompt": [600]}, "outside the vocabulary"),
    ("/complete", {"prompt": None}, "'prompt' is required"),
    ("/complete", {"prompt": "x", "temperature": "warm"}, "'temperature' must be a number"),
    ("/v1/csound/check", {"code": 42}, "'code' must be a string"),
    ("/v1/csound/check", {"code": "  "}, "'code' is empty"),
    ("/api/show", {}, "'model' is required"),
]


@pytest.mark.parametrize("path,body,message", BAD, ids=[f"{p}:{m}" for p, _, m in BAD])
def test_bad_input_is_a_clear_400(client, path, body, message):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    text = error if isinstance(error, str) else error["message"]
    assert message in text


def test_wrong_route_and_method_are_not_500(client):
    assert client.get("/v2/whatever").status_code == 404
    assert client.get("/v1/chat/completions").status_code == 405


def test_body_limit_is_413():
    with make_client(max_body_bytes=1000) as c:
        r = c.post("/v1/completions", json={"prompt": "x" * 2000})
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: counted while reading
            for _ in range(10):
                yield b"x" * 500
        r = c.post("/v1/completions", content=chunks(),
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 413


def test_api_key_guards_every_route_but_health():
    with make_client(api_key="s3cret") as c:
        assert c.get("/health").status_code == 200
        for path in ("/v1/models", "/api/tags", "/metrics"):
            assert c.get(path).status_code == 401
        r = c.post("/api/generate", json={"model": "csound-assistant", "prompt": "x"})
        assert r.status_code == 401 and "API key" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/v1/models", headers={"x-api-key": "s3cret"}).status_code == 200


@pytest.mark.parametrize("enabled", [True, False])
def test_a_model_trained_with_manual_lookups_gets_them(enabled):
    backend = FakeBackend()
    backend.metadata["csound_assistant.opcode_reference"] = "true"
    with make_client(backend, opcode_reference=enabled) as c:
        r = c.post("/v1/chat/completions", json={"messages": [
            {"role": "user", "content": "Write a CSD that uses dust2."}], "max_tokens": 4})
        assert r.status_code == 200
        prompt = bytes(t - BYTE0 for t in backend.prompts[-1] if t >= BYTE0).decode()
        assert ("Csound manual:\nares dust2 kamp, kdensity" in prompt) is enabled
        assert (c.get("/health").json()["opcode_reference"] is not None) is enabled
        assert c.get("/health").json()["lookups"] == (["chat"] if enabled else [])


def test_settings_come_from_options_then_environment():
    env = {"CSOUND_ASSISTANT_PORT": "9000", "CSOUND_ASSISTANT_API_KEY": "k",
           "CSOUND_ASSISTANT_REQUEST_TIMEOUT": "3.5"}
    s = Settings.from_env(env, port=9100)
    assert (s.port, s.api_key, s.request_timeout, s.host) == (9100, "k", 3.5, "127.0.0.1")
    with pytest.raises(ConfigError, match="CSOUND_ASSISTANT_PORT"):
        Settings.from_env({"CSOUND_ASSISTANT_PORT": "eighty"})
    assert Settings.from_env({}).opcode_reference is True
    assert Settings.from_env({"CSOUND_ASSISTANT_OPCODE_REFERENCE": "false"}).opcode_reference is False
    with pytest.raises(ConfigError, match="true or false"):
        Settings.from_env({"CSOUND_ASSISTANT_OPCODE_REFERENCE": "maybe"})
    with pytest.raises(ConfigError, match="max_tokens_limit"):
        Settings(default_max_tokens=10, max_tokens_limit=5)


def test_backend_failure_is_reported_and_the_worker_survives():
    backend = FakeBackend(fail=True)
    app = create_app(Settings(), backend)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/complete", json={"prompt": "x"})
        assert r.status_code == 500 and "simulated backend failure" in r.json()["error"]["message"]
        backend.fail = False
        assert c.post("/complete", json={"prompt": "x"}).json() == {"completion": "Hello from Csound."}


def test_feedback_route_is_off_without_a_database(client):
    r = client.post("/v1/feedback", json={"id": "1", "good": True})
    assert r.status_code == 501 and "--feedback-db" in r.json()["error"]["message"]


# --- concurrency (a real uvicorn on loopback) ---------------------------------------------------
def test_requests_run_one_at_a_time_in_arrival_order():
    backend = FakeBackend("abcdefghij", delay=0.01)
    app = create_app(Settings(max_queue=8), backend)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        results = {}

        def send(i):
            results[i] = http.post("/complete", json={"prompt": f"request {i}"}).json()
        threads = []
        for i in range(5):
            threads.append(threading.Thread(target=send, args=(i,)))
            threads[-1].start()
            wait_for(lambda: len(backend.prompts) + http.get("/health").json()["queue_depth"]
                     >= i + 1)
        for t in threads:
            t.join(30)
        order = [backend.detokenize(p)[-1] for p in backend.prompts]
        assert order == ["0", "1", "2", "3", "4"]
        assert all(results[i] == {"completion": "abcdefghij"} for i in range(5))
        assert backend.overlaps == 0


def test_full_queue_answers_503_with_retry_after():
    backend = FakeBackend("x", endless=True, delay=0.01)
    app = create_app(Settings(max_queue=1, max_tokens_limit=100_000), backend)
    with running_server(app) as url:
        def long_request():
            with httpx.Client(base_url=url, timeout=30) as h:
                h.post("/complete", json={"prompt": "a", "max_tokens": 100_000})
        threads = [threading.Thread(target=long_request) for _ in range(2)]
        threads[0].start()
        wait_for(lambda: backend.active == 1)
        threads[1].start()
        with httpx.Client(base_url=url, timeout=30) as h:
            wait_for(lambda: h.get("/health").json()["queue_depth"] == 1)
            r = h.post("/v1/completions", json={"prompt": "b"})
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert "queue is full" in r.json()["error"]["message"]
            assert h.get("/health").json()["counts"]["rejected_queue_full"] == 1
        backend.endless = False  # let the two requests finish
        for t in threads:
            t.join(30)


def test_client_disconnecting_mid_stream_frees_the_model():
    backend = FakeBackend("la ", endless=True, delay=0.005)
    app = create_app(Settings(max_tokens_limit=100_000), backend)
    with running_server(app) as url:
        with httpx.Client(base_url=url, timeout=30) as h:
            with h.stream("POST", "/v1/chat/completions",
                          json={**CHAT, "stream": True, "max_tokens": 100_000}) as r:
                for n, _ in enumerate(r.iter_lines()):
                    if n > 10:
                        break
            wait_for(lambda: backend.active == 0)
            assert backend.generated[-1] < 5000  # it stopped long before max_tokens
            counts = h.get("/health").json()["counts"]
            assert counts["finish_cancelled"] == 1
            assert h.post("/complete", json={"prompt": "y", "max_tokens": 3}).json() == \
                {"completion": "la "}


def test_client_leaving_while_queued_is_skipped():
    backend = FakeBackend("zz", endless=True, delay=0.005)
    app = create_app(Settings(max_tokens_limit=100_000), backend)
    with running_server(app) as url:
        def long_request():
            with httpx.Client(base_url=url, timeout=30) as h:
                h.post("/complete", json={"prompt": "first", "max_tokens": 100_000})
        first = threading.Thread(target=long_request)
        first.start()
        wait_for(lambda: backend.active == 1)
        with pytest.raises(httpx.ReadTimeout):  # gives up while queued
            httpx.post(f"{url}/complete", json={"prompt": "leaver"}, timeout=0.3)
        wait_for(lambda: httpx.get(f"{url}/health").json()["queue_depth"] == 0)
        backend.endless = False
        first.join(30)
        with httpx.Client(base_url=url, timeout=30) as h:
            assert h.post("/complete", json={"prompt": "last", "max_tokens": 2}).status_code == 200
            assert h.get("/health").json()["counts"]["cancelled_while_queued"] == 1
        assert [backend.detokenize(p)[-4:] for p in backend.prompts] == ["irst", "last"]


def test_request_timeout_stops_generation_and_queue_wait():
    # The first request reads its "prompt" for 1.5 s (uninterruptible, like llama.cpp's prompt
    # eval), then stops at its first token because its 0.5 s are up; the second one's deadline
    # passes while it waits: 503.
    backend = FakeBackend("t", endless=True, first_delay=1.5)
    app = create_app(Settings(request_timeout=0.5, max_tokens_limit=100_000), backend)
    with running_server(app) as url:
        results = {}

        def request(i):
            with httpx.Client(base_url=url, timeout=30) as h:
                results[i] = h.post("/v1/completions", json={"prompt": "p", "max_tokens": 1000})
        threads = [threading.Thread(target=request, args=(i,)) for i in range(2)]
        threads[0].start()
        wait_for(lambda: backend.active == 1)
        threads[1].start()
        for t in threads:
            t.join(30)
        assert results[0].status_code == 200
        done = results[0].json()
        assert done["choices"][0]["finish_reason"] == "length"
        assert done["usage"]["completion_tokens"] == 1
        assert results[1].status_code == 503 and "timed out" in results[1].json()["error"]["message"]
        assert int(results[1].headers["retry-after"]) >= 1

def test_ignore_eos_generates_exactly_max_tokens():
    with make_client(FakeBackend("ab")) as c:
        r = c.post("/completion", json={"prompt": "x", "n_predict": 6, "ignore_eos": True})
        assert r.json()["tokens_predicted"] == 6


# --- the Csound sandbox route (real Csound) -----------------------------------------------------
def test_csound_check_without_isolation_runs_nothing(client, monkeypatch, tmp_path):
    from csound_assistant import isolation

    monkeypatch.setattr(isolation, "probe", lambda csound: "bubblewrap is not installed")
    monkeypatch.delenv(isolation.ENV_OPT_IN, raising=False)
    marker = tmp_path / "ran"
    code = f'instr 1\n  prints "hi"\nendin\n; {marker}'
    r = client.post("/v1/csound/check", json={"code": code, "render": True, "seconds": 0.2})
    assert r.status_code == 503
    message = r.json()["error"]["message"]
    assert "without isolation" in message and isolation.ENV_OPT_IN in message
    assert not marker.exists()


def test_csound_check_returns_diagnostics_with_line_numbers(client):
    code = "instr 1\n  aout oscilx 0.5, 440\n  outs aout, aout\nendin\n"
    body = client.post("/v1/csound/check", json={"code": code}).json()
    assert body["ok"] is False and body["category"] in ("syntax", "unknown-opcode")
    assert any(d["line"] == 2 and "oscilx" in d["message"] for d in body["diagnostics"])
    refused = client.post("/v1/csound/check", json={
        "code": 'instr 1\n  system_i 1, "touch /tmp/pwned"\nendin\n'}).json()
    assert refused["category"] == "refused" and refused["refused"]
    good = "instr 1\n  aout oscili 0.3, 440\n  outs aout, aout\nendin\n"
    rendered = client.post("/v1/csound/check", json={"code": good, "render": True,
                                                     "seconds": 0.5}).json()
    assert rendered["ok"] is True and rendered["rendered"] is True
    assert 0.2 < rendered["audio"]["peak"] <= 0.31


def test_feedback_records_completions_and_marks_them(tmp_path):
    from csound_assistant.feedback_store import FeedbackStore

    db = tmp_path / "feedback.sqlite"
    with make_client(FakeBackend("aout oscili"), feedback_db=db, prompt_format="chatml") as c:
        r = c.post("/v1/completions", json={"prompt": "instr 1\n", "suffix": "endin"})
        plain_id = r.headers["x-completion-id"]
        assert r.json()["completion_id"] == plain_id
        r = c.post("/v1/chat/completions", json={**CHAT, "stream": True})
        final = [json.loads(e) for e in sse_events(r.text)[:-1]][-1]
        stream_id = final["completion_id"]
        r = c.post("/api/generate", json={"model": "csound-assistant", "prompt": "x",
                                          "stream": False})
        assert r.json()["completion_id"] == r.headers["x-completion-id"]
        ok = c.post("/v1/feedback", json={"id": plain_id, "good": False,
                                          "correction": "aout poscil 0.5, 440"})
        assert ok.status_code == 200 and ok.json()["recorded"] is True
        assert c.post("/v1/feedback", json={"id": int(stream_id), "good": True}).status_code == 200
        assert c.post("/v1/feedback", json={"id": "999", "good": True}).status_code == 404
        assert c.post("/v1/feedback", json={"id": "abc", "good": True}).status_code == 400
        assert c.post("/v1/feedback", json={"id": plain_id}).status_code == 400
    with FeedbackStore(db) as store:
        row = store.get(plain_id)
        assert json.loads(row["prompt"]) == {"prefix": "instr 1\n", "suffix": "endin"}
        assert row["output"] == "aout oscili" and row["endpoint"] == "/v1/completions"
        assert (row["good"], row["correction"]) == (0, "aout poscil 0.5, 440")
        streamed = store.get(stream_id)
        assert streamed["good"] == 1 and streamed["output"] == "aout oscili"
        assert json.loads(streamed["prompt"])[0]["content"] == "Write an oscillator."


def test_infill_n_indent_stops_at_a_dedented_line():
    with make_client(FakeBackend("a\n    b\n\n    c\nendin\nmore"), prompt_format="chatml") as c:
        body = {"input_prefix": "instr 1\n", "input_suffix": "", "n_indent": 4}
        assert c.post("/infill", json=body).json()["content"] == "a\n    b\n\n    c"
        r = c.post("/infill", json={**body, "stream": True})
        pieces = [json.loads(e)["content"] for e in sse_events(r.text)]
        assert "".join(pieces) == "a\n    b\n\n    c" and not any("endin" in p for p in pieces)
        assert c.post("/infill", json={**body, "n_indent": 0}).json()["content"] == \
            "a\n    b\n\n    c\nendin\nmore"


def test_cors_lets_listed_web_origins_call_the_api():
    """No CORS headers by default; a listed origin gets them, and its preflight passes the key
    check (browsers never send the key on OPTIONS) while the real request still needs it."""
    origin = {"Origin": "https://ide.example.org"}
    with make_client() as c:
        assert "access-control-allow-origin" not in c.get("/v1/models", headers=origin).headers
    origins = "https://ide.example.org, http://localhost:3000/"
    with make_client(api_key="k", cors_origins=origins) as c:
        pre = c.options("/v1/chat/completions", headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://ide.example.org"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = c.get("/v1/models", headers=origin)
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin["Origin"]
        r = c.get("/v1/models", headers={**origin, "Authorization": "Bearer k"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin["Origin"]
        other = c.get("/v1/models", headers={"Origin": "https://evil.example",
                                             "Authorization": "Bearer k"})
        assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
        assert c.get("/v1/models", headers={"Origin": "http://localhost:3000",
                                            "Authorization": "Bearer k"}).status_code == 200
    with pytest.raises(ConfigError, match="is not an origin"):
        Settings(cors_origins="https://ide.example.org/path")
