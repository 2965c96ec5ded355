"""Verified answers (runtime/verify.py): ``serve --verify N`` through the real app, each candidate
judged by real Csound in the sandbox; the model is a scripted stand-in whose candidates are fixed
in advance, so each test knows which one should win."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from csound_assistant.errors import ConfigError
from csound_assistant.repair import REQUEST
from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings
from csound_assistant.runtime.verify import CANDIDATE_TEMPERATURE, whole_program

from runtime_helpers import BROKEN, GOOD, WORSE, FakeBackend

SILENT = GOOD.replace("poscil 0.3, 440", "poscil 0, 440")  # compiles, renders silence
CHAT = {"messages": [{"role": "user", "content": "A sine."}], "max_tokens": 600,
        "temperature": 0}


def answer(code: str) -> str:
    return f"Here it is.\n\n```csound\n{code}\n```"


class ScriptedBackend(FakeBackend):
    """Answers the scripted replies in the order generations start; records their sampling."""

    def __init__(self, *replies, **kw):
        super().__init__(n_ctx=kw.pop("n_ctx", 4096), **kw)
        self.replies, self.samplings = list(replies), []

    def generate(self, tokens, sampling):
        self.reply = self.replies.pop(0)
        self.samplings.append(sampling)
        return super().generate(tokens, sampling)


def client(backend, **settings) -> TestClient:
    return TestClient(create_app(Settings(prompt_format=None, **settings), backend))


def content(r) -> str:
    return r.json()["choices"][0]["message"]["content"]


def test_the_first_candidate_that_plays_is_returned():
    backend = ScriptedBackend(answer(BROKEN), answer(GOOD), answer(GOOD), answer(GOOD))
    with client(backend, verify=4) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert content(r) == answer(GOOD)
        assert r.headers["x-csound-verified"] == "candidate-2"
        assert r.headers["x-csound-verdict"] == "plays"
        metrics = c.get("/metrics").text
    assert "csound_assistant_verified_candidate_2_total 1" in metrics
    first, second = backend.samplings[:2]
    assert first.temperature == 0  # the request itself: what an unverified server returns
    assert second.temperature == CANDIDATE_TEMPERATURE and second.seed != first.seed


@pytest.mark.parametrize("replies, path", [
    ((GOOD, BROKEN, BROKEN), "first"),
    ((BROKEN, SILENT, GOOD, BROKEN), "candidate-3"),
    ((WORSE, BROKEN, SILENT, GOOD), "candidate-4"),
])
def test_code_that_does_not_play_is_never_returned_when_some_plays(replies, path):
    backend = ScriptedBackend(*map(answer, replies))
    with client(backend, verify=4) as c:
        r = c.post("/api/chat", json={"model": "csound-assistant", "stream": False,
                                      "messages": CHAT["messages"]})
    assert r.status_code == 200
    assert r.json()["message"]["content"] == answer(GOOD)
    assert r.headers["x-csound-verified"] == path and r.json()["csound_verified"] == path


def test_when_none_plays_repair_is_tried_then_the_best_candidate_is_unverified():
    backend = ScriptedBackend(answer(BROKEN), answer(SILENT), answer(WORSE))
    with client(backend, verify=2) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    # the silent one compiled, the broken one did not: compiling ranks higher
    assert content(r) == answer(SILENT)
    assert r.headers["x-csound-verified"] == "unverified"
    assert r.headers["x-csound-verdict"] == "silent"
    assert len(backend.prompts) == 3
    fix_request = backend.detokenize(backend.prompts[-1])
    assert REQUEST in fix_request and "poscil 0.3, 440, 1, 2" in fix_request  # Csound's error


def test_a_repair_that_plays_is_returned():
    backend = ScriptedBackend(answer(BROKEN), answer(WORSE), answer(GOOD))
    with client(backend, verify=2) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
        metrics = c.get("/metrics").text
    assert content(r) == answer(GOOD) and r.headers["x-csound-verified"] == "repair"
    assert "csound_assistant_verified_repair_total 1" in metrics


def test_prose_first_is_replaced_only_by_code_that_plays():
    text = "poscil is a high-precision oscillator: give it an amplitude and a frequency."
    backend = ScriptedBackend(text, answer(BROKEN), answer(GOOD))
    with client(backend, verify=3) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert content(r) == answer(GOOD) and r.headers["x-csound-verified"] == "candidate-3"
    backend = ScriptedBackend(text, answer(BROKEN), answer(SILENT))
    with client(backend, verify=3) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert content(r) == text  # no code that fails in place of the explanation, no repair
    assert (r.headers["x-csound-verified"], r.headers["x-csound-verdict"]) == \
        ("unverified", "no-code")
    assert len(backend.prompts) == 3


def test_the_budget_bounds_the_extra_work_never_the_first_answer():
    # 3 ms a token: a candidate of ~330 characters takes a second; the budget is 0.4 s
    backend = ScriptedBackend(*[answer(GOOD)] * 4, delay=0.003)
    with client(backend, verify=4, verify_seconds=0.4) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200
    # the first candidate is what the server says without --verify: whole, not cut
    assert content(r) == answer(GOOD) and r.json()["choices"][0]["finish_reason"] == "stop"
    assert r.headers["x-csound-verified"] == "unverified"
    assert r.headers["x-csound-verdict"] == "unchecked"  # no time was left to judge it
    assert len(backend.prompts) <= 2  # no candidate started after the budget ran out


def test_streaming_clients_get_the_verified_answer():
    backend = ScriptedBackend(answer(BROKEN), answer(GOOD), answer(BROKEN), answer(GOOD))
    with client(backend, verify=2) as c:
        with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
            assert r.headers["x-csound-verified"] == "candidate-2"
            events = [json.loads(line[6:]) for line in r.iter_lines()
                      if line.startswith("data: {")]
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events
                       if e["choices"])
        assert text == answer(GOOD)
        assert events[-1]["choices"][0]["finish_reason"] == "stop"
        with c.stream("POST", "/api/chat", json={"model": "csound-assistant",
                                                 "messages": CHAT["messages"]}) as r:
            lines = [json.loads(line) for line in r.iter_lines() if line]
        assert "".join(x["message"]["content"] for x in lines) == answer(GOOD)
        assert lines[-1]["done"] and lines[-1]["csound_verified"] == "candidate-2"


PREFIX, SUFFIX = GOOD.split("  asig poscil 0.3, 440\n")


def test_fim_inside_a_whole_csd_is_compiled():
    assert whole_program(PREFIX, SUFFIX)
    assert not whole_program(PREFIX, "")  # the file is not closed: nothing to compile
    assert whole_program("instr 1\n", "  outs a1, a1\nendin\n")
    backend = ScriptedBackend("  asig posscil 0.3, 440\n", "  asig poscil 0.3, 440\n",
                              fim_metadata=True)
    with client(backend, verify=2) as c:
        r = c.post("/v1/completions", json={"prompt": PREFIX, "suffix": SUFFIX,
                                            "max_tokens": 40})
        assert r.status_code == 200
        assert r.json()["choices"][0]["text"] == "  asig poscil 0.3, 440\n"
        assert r.headers["x-csound-verified"] == "candidate-2"
        assert r.headers["x-csound-verdict"] == "compiles"
        backend.replies = ["  asig posscil 0.3, 440\n"]
        r = c.post("/api/generate", json={"model": "csound-assistant", "prompt": PREFIX,
                                          "suffix": "  outs asig", "stream": False})
        assert r.json()["response"] == "  asig posscil 0.3, 440\n"  # not a whole file
        assert r.headers["x-csound-verified"] == "unverified"
        assert r.headers["x-csound-verdict"] == "not-a-whole-program"


def test_verify_off_adds_no_header_and_one_generation():
    backend = ScriptedBackend(answer(BROKEN))
    with client(backend) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert content(r) == answer(BROKEN) and "x-csound-verified" not in r.headers
    assert len(backend.prompts) == 1


@pytest.mark.parametrize("bad", [{"verify": 9}, {"verify": -1}, {"verify_seconds": 0}])
def test_settings_refuse_bad_values(bad):
    with pytest.raises(ConfigError, match="verify"):
        Settings(**bad)


# --- eval run --verify N: the eval asks through the same Service ---------------------------------
def test_the_eval_scores_what_the_server_returns():
    from csound_assistant.eval.runner import evaluate_model
    from csound_assistant.eval.runtime_model import RuntimeModel
    from csound_assistant.eval.tasks import Item

    item = Item("sine", "describe", "natural", messages=CHAT["messages"],
                required_opcodes=["poscil"], seconds=1.0)
    backend = ScriptedBackend(answer(BROKEN), answer(GOOD), answer(GOOD))
    model = RuntimeModel(backend, Settings(prompt_format="chatml", verify=3))
    try:
        (row,) = evaluate_model(model, [item], label="m", max_new_tokens=600, progress=False)
    finally:
        model.close()
    assert (row["answer"], row["sound"], row["verified"]) == (answer(GOOD), True, "candidate-2")
    assert (row["first_answer"], row["first_sound"]) == (answer(BROKEN), False)
    assert row["tokens"] >= 2 * len(answer(GOOD))  # both candidates' tokens are counted


def test_the_embedded_gguf_through_the_runtime_path(embedded_gguf):
    from csound_assistant.eval.models import GGUFModel
    from csound_assistant.eval.runtime_model import RuntimeModel

    messages = [{"role": "user", "content": "Write a Csound instrument that plays a sine."}]
    model = RuntimeModel.from_gguf(embedded_gguf, prompt_format="chatml", n_ctx=512,
                                   n_threads=1, verify=2, verify_seconds=20)
    try:
        gen = model.chat(messages, max_tokens=12)
        batched = model.service.engine.metrics.counts["batched_steps"]
    finally:
        model.close()
    assert gen.verified in ("first", "candidate-2", "repair", "unverified")
    assert batched > 0  # the two candidates decoded together
    plain = GGUFModel(embedded_gguf, prompt_format="chatml", n_ctx=512, n_threads=1)
    try:  # the first candidate is the eval's own greedy answer: one way to ask the model
        assert gen.first_text == plain.chat(messages, max_tokens=12).text
    finally:
        plain.close()
