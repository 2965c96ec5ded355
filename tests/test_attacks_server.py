"""Attacks on the local server (issue 29), each answered by a clear refusal or a contained result:
cross-site and DNS-rebinding requests, bodies that are not JSON, deep or huge JSON, junk fields,
junk feedback ids, and sandbox checks that would outlast the server's --timeout or its queue.

Through the real app: starlette's TestClient with the fake model, a real uvicorn on 127.0.0.1
where connections or concurrency matter, and real Csound in the sandbox.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time

import httpx
import ollama
import openai
import pytest
from starlette.testclient import TestClient

from csound_assistant.runtime.engine import ServiceTimes
from csound_assistant.runtime.guard import HostPolicy, is_json_type
from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings
from csound_assistant.runtime.validation import MAX_JSON_DEPTH, json_depth

from runtime_helpers import FakeBackend, running_server

MODEL = "csound-assistant"
CHAT = {"messages": [{"role": "user", "content": "Write an oscillator."}]}
BODIES = {  # one valid body per JSON route
    "/v1/chat/completions": {**CHAT, "max_tokens": 4},
    "/v1/completions": {"prompt": "instr 1\n", "max_tokens": 4},
    "/api/generate": {"model": MODEL, "prompt": "instr 1\n", "stream": False},
    "/api/chat": {"model": MODEL, **CHAT, "stream": False},
    "/api/show": {"model": MODEL},
    "/infill": {"input_prefix": "instr 1\n", "input_suffix": "endin\n", "n_predict": 4},
    "/completion": {"prompt": "instr 1\n", "n_predict": 4},
    "/complete": {"prompt": "instr 1\n", "max_tokens": 4},
    "/v1/csound/check": {"code": "instr 1\n aout oscili 0.1, 440\n outs aout, aout\nendin\n"},
    "/v1/feedback": {"id": 1, "good": True},
}
JSON_ROUTES = list(BODIES)
GENERATING = ["/v1/chat/completions", "/v1/completions", "/api/generate", "/api/chat", "/infill",
              "/completion", "/complete"]
ITIME_LOOP = "instr 1\n i1 = 0\n while i1 < 1000000000 do\n i1 += 1\n od\nendin\n"


def app_for(backend=None, **settings):
    settings.setdefault("prompt_format", "chatml")
    return create_app(Settings(**settings), backend or FakeBackend("aout oscili 0.1, 440"))


@pytest.fixture
def backend():
    return FakeBackend("aout oscili 0.1, 440")


@pytest.fixture
def client(backend, tmp_path):
    with TestClient(app_for(backend, feedback_db=tmp_path / "feedback.sqlite")) as c:
        yield c


def message(r) -> str:
    error = r.json()["error"]
    return error if isinstance(error, str) else error["message"]


# --- cross-site requests ------------------------------------------------------------------------
@pytest.mark.parametrize("path", JSON_ROUTES)
def test_a_foreign_page_cannot_post_text_plain_to_any_route(client, backend, path, tmp_path):
    """The issue's exploit: a page's no-preflight POST carrying a Csound escape, render on."""
    marker = tmp_path / "pwned"
    escape = {**BODIES[path], "render": True,
              "code": f'instr 1\n system_i 1, "touch {marker}"\nendin\n'}
    r = client.post(path, content=json.dumps(escape), headers={
        "Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert r.status_code == 403
    assert "'http://evil.example'" in message(r) and "--cors-origins" in message(r)
    assert "access-control-allow-origin" not in r.headers
    assert backend.prompts == [] and not marker.exists()


@pytest.mark.parametrize("path", ["/v1/models", "/api/tags", "/api/ps", "/health", "/metrics"])
def test_a_foreign_page_cannot_read_get_routes(client, path):
    """GET routes tell what is served (model names, file sizes, queue): refused too."""
    r = client.get(path, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "--cors-origins" in message(r)
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("origin", ["null", "file://", "app://x", "tauri://localhost",
                                    "vscode-webview://abc", "http://localhost:3000",
                                    "http://127.0.0.1:8081", "http://localhost.evil.example:8080",
                                    "garbage"])
def test_origins_outside_the_default_list_are_refused(client, origin):
    r = client.post("/complete", json=BODIES["/complete"], headers={"Origin": origin})
    assert r.status_code == 403


def test_own_and_configured_origins_pass_and_preflights_follow():
    origins = "https://ide.example.org, vscode-webview://*"
    with TestClient(app_for(cors_origins=origins, port=8080)) as c:
        for origin in ("http://127.0.0.1:8080", "http://localhost:8080", "http://[::1]:8080",
                       "https://ide.example.org", "vscode-webview://0a1b2c"):
            r = c.post("/complete", json=BODIES["/complete"], headers={"Origin": origin})
            assert r.status_code == 200, origin
        r = c.get("/v1/models", headers={"Origin": "vscode-webview://0a1b2c"})
        assert r.headers["access-control-allow-origin"] == "vscode-webview://0a1b2c"
        ask = {"Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type"}
        good = c.options("/v1/chat/completions",
                         headers={**ask, "Origin": "https://ide.example.org"})
        assert good.status_code == 200
        bad = c.options("/v1/chat/completions", headers={**ask, "Origin": "https://evil.example"})
        assert bad.status_code == 403 and "access-control-allow-origin" not in bad.headers
        assert "access-control-allow-methods" not in bad.headers


def test_a_cross_site_request_without_origin_is_refused(client):
    r = client.get("/v1/models", headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403 and "cross-site" in message(r)
    assert client.get("/v1/models", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200


# --- DNS rebinding ------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example",
                                  "localhost.evil.example", "localhost.evil.example:8080",
                                  "127.0.0.1:80@evil.example", "[::1].evil.example", "::1",
                                  "localhost:http", ""])
def test_a_rebound_host_is_refused_on_every_kind_of_route(client, backend, host):
    for method, path in (("POST", "/v1/chat/completions"), ("POST", "/api/generate"),
                         ("POST", "/infill"), ("GET", "/v1/models"), ("GET", "/health")):
        r = client.request(method, path, json=BODIES.get(path), headers={"Host": host})
        assert r.status_code == 403, (host, path)
        assert "--allowed-hosts" in message(r) and "rebinding" in message(r)
    assert backend.prompts == []


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "LOCALHOST.", "127.0.0.1",
                                  "127.0.0.1:8080", "127.9.9.9:1", "[::1]", "[::1]:8080",
                                  "[::ffff:127.0.0.1]:8080", "app.localhost:8080"])
def test_loopback_hosts_pass(client, host):
    assert client.post("/complete", json=BODIES["/complete"],
                       headers={"Host": host}).status_code == 200


def test_configured_hosts_and_the_bind_address_pass():
    with TestClient(app_for(allowed_hosts="csound.lan, *.studio.example")) as c:
        for host, status in (("csound.lan:8080", 200), ("a.studio.example", 200),
                             ("studio.example", 403), ("csound.lan.evil.example", 403)):
            assert c.get("/v1/models", headers={"Host": host}).status_code == status, host
    with TestClient(app_for(host="192.168.1.5")) as c:
        assert c.get("/v1/models", headers={"Host": "192.168.1.5:8080"}).status_code == 200
        assert c.get("/v1/models", headers={"Host": "192.168.1.6:8080"}).status_code == 403
    with TestClient(app_for(allowed_hosts="*")) as c:
        assert c.get("/v1/models", headers={"Host": "anything.example"}).status_code == 200


def test_host_policy_accepts_the_address_the_connection_reached():
    policy = HostPolicy.from_settings([], "0.0.0.0")
    assert policy.allows("10.1.2.3:8080", "10.1.2.3")  # a LAN client typed the IP
    assert not policy.allows("10.1.2.4:8080", "10.1.2.3")
    assert not policy.allows("box.example:8080", "10.1.2.3")  # a name needs --allowed-hosts


# --- content types ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [None, "text/plain", "application/x-www-form-urlencoded",
                                  "multipart/form-data; boundary=x", "text/json",
                                  "application/json; charset=utf-16", "application/jsonx",
                                  "text/plain; application/json"])
@pytest.mark.parametrize("path", ["/v1/completions", "/api/generate", "/infill",
                                  "/v1/csound/check"])
def test_post_bodies_must_be_declared_json(client, backend, path, kind):
    headers = {"Content-Type": kind} if kind else {}
    r = client.post(path, content=json.dumps(BODIES[path]).encode(), headers=headers)
    assert r.status_code == 415 and "'Content-Type: application/json'" in message(r)
    assert backend.prompts == []


def test_json_content_types_that_pass():
    for kind in ("application/json", "Application/JSON; charset=UTF-8",
                 'application/json;charset="utf-8"', "application/vnd.api+json"):
        assert is_json_type(kind), kind


def test_the_official_clients_still_work():
    """openai and ollama (the real packages) send application/json and no Origin."""
    with running_server(app_for()) as url:
        oai = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
        answer = oai.chat.completions.create(model=MODEL, max_tokens=8, **CHAT)
        assert answer.choices[0].message.content == "aout osc"
        reply = ollama.Client(host=url, timeout=30).generate(
            model=MODEL, prompt="x", stream=False, options={"num_predict": 4})
        assert reply["response"] == "aout"


# --- malformed JSON -----------------------------------------------------------------------------
def nested(depth: int) -> str:
    return '{"messages": ' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_deep_nesting_is_a_400_that_names_the_limit(client, path):
    r = client.post(path, content=nested(5000), headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert f"{MAX_JSON_DEPTH} levels" in message(r)


def test_nesting_is_counted_outside_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    assert json_depth(b'{"a": "\\"[[[[", "b": []}') == 2
    assert json_depth(nested(MAX_JSON_DEPTH).encode()) == MAX_JSON_DEPTH
    assert json_depth(b'"unterminated [[[[') == 0


def test_deep_nesting_keeps_the_keep_alive_connection():
    """The issue: a RecursionError's 500 also reset the client's connection."""
    with running_server(app_for()) as url:
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
        conn.request("POST", "/v1/chat/completions", body=nested(5000),
                     headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        assert first.status == 400 and b"levels" in first.read()
        sock = conn.sock
        conn.request("POST", "/complete", body=json.dumps(BODIES["/complete"]),
                     headers={"Content-Type": "application/json"})
        second = conn.getresponse()
        assert second.status == 200 and json.loads(second.read())["completion"] == "aout"
        assert conn.sock is sock  # the same connection served both
        conn.close()


@pytest.mark.parametrize("patch, expected", [
    ({"max_tokens": 10**30}, "between 1 and"),
    ({"seed": 2**70}, "'seed' must be at most"),
    ({"top_k": -10**40}, "'top_k' must be between"),
])
def test_huge_numbers_are_a_400(client, backend, patch, expected):
    r = client.post("/v1/completions", json={**BODIES["/v1/completions"], **patch})
    assert r.status_code == 400 and expected in message(r)
    assert backend.prompts == []


@pytest.mark.parametrize("raw, expected", [
    ('{"prompt": "x", "max_tokens": ' + "9" * 5000 + "}", "too long to read"),
    ('{"prompt": "x", "temperature": 1e999}', "finite"),
    ('{"prompt": "x", "temperature": NaN}', "NaN is not a JSON number"),
    ('{"prompt": "x", "temperature": -Infinity}', "-Infinity is not a JSON number"),
])
def test_unreadable_numbers_are_a_400(client, raw, expected):
    r = client.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and expected in message(r)


@pytest.mark.parametrize("path", ["/infill", "/completion"])
@pytest.mark.parametrize("fields", [[1], "content", [None], [["content"]], {"a": 1},
                                    ["c"] * 65])
def test_bad_response_fields_are_refused_before_generating(client, backend, path, fields):
    r = client.post(path, json={**BODIES[path], "response_fields": fields})
    assert r.status_code == 400 and "'response_fields'" in message(r)
    assert backend.prompts == []


JUNK = [None, True, -1, 0, 10**30, 1e308, "", "x" * 300, [], {}, [[[]]], {"a": {"b": []}},
        ["x", 1], "\u0000"]


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_junk_in_any_field_is_never_a_500(client, path):
    """Every field of a valid body replaced by each junk value: a 4xx or a normal answer."""
    body = BODIES[path]
    if path == "/v1/csound/check":  # refused before Csound runs: the junk is what is tested
        body = {"code": 'instr 1\n system_i 1, "true"\nendin\n', "render": False, "seconds": 1}
    for name in list(body) + ["options", "messages", "input_extra", "stop", "stream_options"]:
        for junk in JUNK:
            r = client.post(path, json={**body, name: junk})
            assert r.status_code < 500 or r.status_code == 501, (name, junk, r.text[:300])


# --- feedback ids -------------------------------------------------------------------------------
@pytest.mark.parametrize("junk", [" 7 ", "\u0663", "\u0661\u0662", 2**63, -1, 1.5, True, "",
                                  "+7", "7.0", "0x7", 0, [7], "9" * 5000])
def test_junk_feedback_ids_mark_nothing(client, junk):
    ids = [client.post("/complete", json=BODIES["/complete"]).json()["completion_id"]
           for _ in range(12)]
    assert ids[-1] == "12"
    r = client.post("/v1/feedback", json={"id": junk, "good": False})
    assert r.status_code == 400 and "whole number from 1 to" in message(r)
    store = client.app.state.service.feedback
    marked = client.app.state.service._feedback_pool.submit(
        lambda: [store.get(i)["good"] for i in ids]).result()
    assert marked == [None] * 12
    assert client.post("/v1/feedback", json={"id": "7", "good": False}).status_code == 200
    assert client.post("/v1/feedback", json={"id": 2**63 - 1, "good": True}).status_code == 404


# --- sandbox checks: the queue and --timeout ----------------------------------------------------
def test_a_check_that_would_run_forever_answers_within_the_timeout():
    """An i-time loop rendered with the sandbox's own 30 s limit; the server's --timeout is 2 s:
    the answer is a contained 'timeout' result well before 30 s."""
    with running_server(app_for(request_timeout=2.0)) as url:
        start = time.monotonic()
        r = httpx.post(f"{url}/v1/csound/check", json={"code": ITIME_LOOP, "render": True},
                       timeout=60)
        took = time.monotonic() - start
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is False and body["category"] == "timeout"
    assert any("--timeout of 2 s" in note for note in body["notes"])
    assert took < 2.0 + 15  # generous: the point is that it is not the sandbox's 30 s


def test_a_check_beyond_the_queue_gets_503_with_retry_after():
    app = app_for(request_timeout=3.0, check_workers=1, max_queue=0)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as http_client:
        first = threading.Thread(target=lambda: httpx.post(
            f"{url}/v1/csound/check", json={"code": ITIME_LOOP, "render": True}, timeout=60))
        first.start()
        deadline = time.monotonic() + 20
        while http_client.get("/health").json()["checks"]["running"] < 1:
            assert time.monotonic() < deadline, "the first check never started"
            time.sleep(0.02)
        r = http_client.post("/v1/csound/check", json=BODIES["/v1/csound/check"])
        assert r.status_code == 503 and "Csound check queue is full" in message(r)
        assert int(r.headers["retry-after"]) >= 1
        first.join(60)
        assert http_client.get("/health").json()["checks"]["counts"]["rejected_queue_full"] == 1


# --- an honest Retry-After ----------------------------------------------------------------------
def test_retry_after_is_the_measured_drain_time():
    times = ServiceTimes(prior=2.0)
    assert times.retry_after(1) == 2  # nothing measured yet
    for seconds in (0.4, 0.6, 0.5):
        times.add(seconds)
    assert times.retry_after(1) == 1 and times.retry_after(3) == 2
    assert times.retry_after(40) == 20 and times.retry_after(40, slots=4) == 5


@pytest.mark.parametrize("max_queue", [1, 6])
def test_retry_after_of_a_full_queue_grows_with_it(max_queue):
    backend = FakeBackend("abcd", delay=0.1)  # 5 tokens: about 0.5 s a request
    app = create_app(Settings(max_queue=max_queue, max_tokens_limit=100_000), backend)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as h:
        for _ in range(3):  # measured service times
            assert h.post("/complete", json={"prompt": "x"}).status_code == 200
        backend.endless = True
        threads = [threading.Thread(target=lambda: httpx.post(
            f"{url}/complete", json={"prompt": "a", "max_tokens": 100_000}, timeout=60))
            for _ in range(max_queue + 1)]
        deadline = time.monotonic() + 20
        threads[0].start()  # running first, or the last one could find the queue full
        while not backend.active:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for t in threads[1:]:
            t.start()
        while h.get("/health").json()["queue_depth"] < max_queue:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        mean = h.get("/health").json()["service_s"]["mean"]
        r = h.post("/complete", json={"prompt": "b"})
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) == max(1, math.ceil(mean * (max_queue + 1)))
        backend.endless, backend.delay = False, 0.0
        for t in threads:
            t.join(60)
