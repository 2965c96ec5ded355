"""Check-and-repair (csound_assistant.repair): real Csound judges every answer; the model is a
scripted stand-in whose answers are fixed in advance, so each test knows what a repair should do.
Used by ``eval run --repair`` and ``serve --repair``; both are driven here."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from csound_assistant.eval.models import Generation
from csound_assistant.eval.runner import evaluate_model
from csound_assistant.eval.tasks import Item
from csound_assistant.fix_request import FIX_PROMPTS, fence
from csound_assistant.repair import REQUEST, diagnose, repaired
from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings

from runtime_helpers import BROKEN, GOOD, WORSE, FakeBackend



def answer(code: str) -> str:
    return f"Here it is.\n\n```csound\n{code}\n```"


def test_diagnose_uses_csounds_own_first_error():
    assert diagnose(answer(GOOD)) == (True, None)
    ok, problem = diagnose(answer(BROKEN))
    assert not ok and problem.code == BROKEN
    assert problem.error.startswith("error: line 8:") and "poscil" in problem.error
    assert diagnose("I don't know Csound.") == (False, None)  # nothing to repair
    refused = GOOD.replace("asig poscil 0.3, 440", 'system_i 1, "ls"\n  asig poscil 0.3, 440')
    assert diagnose(answer(refused)) == (False, None)  # never asked to "fix" a shell call


def test_the_request_is_a_fix_row_as_training_wrote_it():
    _, problem = diagnose(answer(BROKEN))
    (message,) = problem.request()
    assert REQUEST == FIX_PROMPTS[0]
    # data/rows.py: instruction, a blank line, then the input: fenced code and the error
    assert message["content"] == (f"{REQUEST}\n\n{fence(BROKEN)}\n\nError:\n```text\n"
                                  f"{problem.error}\n```")


def test_repaired_keeps_only_a_fix_that_compiles():
    asked = []

    def chat_with(*replies):
        queue = list(replies)

        def chat(messages):
            asked.append(messages[0]["content"])
            return queue.pop(0)
        return chat

    assert repaired(answer(GOOD), 2, chat_with()) == (None, 0)  # kept, nothing asked
    assert repaired(answer(BROKEN), 2, chat_with(answer(GOOD))) == (answer(GOOD), 1)
    # A second round fixes the first attempt's code, with that code's own error.
    asked.clear()
    assert repaired(answer(BROKEN), 2, chat_with(answer(WORSE), answer(GOOD))) == \
        (answer(GOOD), 2)
    assert "poscil 0.3, 440, 1, 2" in asked[0] and "posscil" in asked[1]
    # Fixes that never compile leave the first answer (None: no fix); rounds are a hard limit.
    assert repaired(answer(BROKEN), 1, chat_with(answer(WORSE), answer(GOOD))) == (None, 1)


class ScriptedModel:
    def __init__(self, *replies):
        self.replies, self.asked = list(replies), []

    def chat(self, messages, **kw):
        self.asked.append(messages)
        return Generation(self.replies.pop(0), latency=0.5, tokens=10)


def test_eval_scores_the_returned_answer_and_keeps_the_first():
    item = Item("sine", "synthesis", "tasks", messages=[{"role": "user", "content": "A sine."}],
                required_opcodes=["poscil"], seconds=1.0)
    model = ScriptedModel(answer(BROKEN), answer(GOOD))
    (row,) = evaluate_model(model, [item], label="m", repair=1, progress=False)
    assert (row["compiled"], row["sound"], row["answer"]) == (True, True, answer(GOOD))
    assert (row["first_compiled"], row["first_sound"], row["repairs"]) == (False, False, 1)
    assert row["latency"] == 1.0 and row["tokens"] == 20
    assert model.asked[1][0]["content"].startswith(REQUEST)
    (plain,) = evaluate_model(ScriptedModel(answer(BROKEN)), [item], label="m",
                              progress=False)
    assert not plain["compiled"] and "repairs" not in plain


class ScriptedBackend(FakeBackend):
    def __init__(self, *replies, n_ctx=4096):
        super().__init__(n_ctx=n_ctx)
        self.replies = list(replies)

    def generate(self, tokens, sampling):
        self.reply = self.replies.pop(0)
        return super().generate(tokens, sampling)


@pytest.mark.parametrize("rounds", [0, 1])
def test_server_repairs_non_streamed_chat(rounds):
    backend = ScriptedBackend(answer(BROKEN), answer(GOOD), answer(GOOD))
    app = create_app(Settings(prompt_format=None, repair=rounds), backend)
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "A sine."}], "max_tokens": 600})
        assert r.status_code == 200
        content = r.json()["choices"][0]["message"]["content"]
        assert content == answer(GOOD if rounds else BROKEN)
        assert r.headers.get("x-csound-repairs") == (str(rounds) if rounds else None)
        assert len(backend.prompts) == 1 + rounds
        if rounds:
            assert REQUEST in backend.detokenize(backend.prompts[-1])
            r = c.post("/api/chat", json={"model": "csound-assistant", "stream": False,
                                          "messages": [{"role": "user", "content": "Again."}]})
            assert r.status_code == 200 and len(backend.prompts) == 3  # compiled: no repair
            metrics = c.get("/metrics").text
            assert "csound_assistant_repair_requests_total 1" in metrics
            assert "csound_assistant_repaired_answers_total 1" in metrics


def test_a_repair_that_does_not_fit_the_context_leaves_the_answer():
    short = answer("instr 1\nasig posscil 0.3, 440\nouts asig, asig\nendin")
    backend = ScriptedBackend(short, answer(GOOD), n_ctx=400)
    with TestClient(create_app(Settings(prompt_format=None, repair=1), backend)) as c:
        r = c.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "A sine."}], "max_tokens": 100})
        assert r.status_code == 200
        assert r.json()["choices"][0]["message"]["content"] == short
        assert len(backend.prompts) == 1  # the fix request (code + error) did not fit
