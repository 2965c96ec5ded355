"""FIM middles end where an editor expects and never repeat the suffix: the rules
(runtime/fim_trim.py) and the real server app's /infill, /v1/completions and /api/generate."""

from __future__ import annotations

import json
import random

import pytest
from starlette.testclient import TestClient

from csound_assistant.runtime.fim_trim import StreamTrim, cursor_kind, trim_middle
from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings

from runtime_helpers import FakeBackend

HEAD = "instr 1\n  kenv madsr 0.01, 0.1, 0.7, 0.2\n"


@pytest.mark.parametrize("prefix, middle, suffix, want", [
    # after an output variable, end of line: the opcode's statement only
    (HEAD + "  asig ", "oscili kenv, 440\n  outs asig, asig\nendin\n", "\n  outs asig, asig\n",
     "oscili kenv, 440"),
    # mid-argument, code after the cursor: up to the new line, the repeated ", 0.5" goes
    (HEAD + "  aout moogladder asig, ", "kcf, 0.5\n  outs aout", ", 0.5\n", "kcf"),
    # a repeated closing parenthesis is a repeat too
    ("  icps = cpspch(", "p4)", ")\n", "p4"),
    # at the start of a line: whole lines, up to the one the suffix already has
    (HEAD, "  asig oscili kenv, 440\n  outs asig, asig\nendin\ninstr 2\n",
     "  outs asig, asig\nendin\n", "  asig oscili kenv, 440\n"),
    # end of a line, the middle opens a new line: that one line, not the suffix's again
    (HEAD + "  asig oscili kenv, 440", "\n  outs asig, asig\nendin\n", "\n  outs asig, asig\n",
     ""),
    # end of file (empty suffix): several lines are kept
    (HEAD + "  asig oscili kenv, 440\n", "  outs asig, asig\nendin\n", "",
     "  outs asig, asig\nendin\n"),
    # inside <CsScore>, after the instrument number
    ("<CsScore>\ni 1 ", "0 2 440\ni 1 2 2 440\n", "\ne\n</CsScore>\n", "0 2 440"),
    # one repeated letter is not a repeat: "a1" then "1, a1" stays as written
    ("  outs a", "1", "1\n", "1"),
])
def test_trim_middle(prefix, middle, suffix, want):
    assert trim_middle(prefix, middle, suffix) == want


def test_a_streamed_middle_is_the_whole_middle_trimmed():
    rng = random.Random(26)
    lines = ["  asig oscili kenv, 440", "  outs asig, asig", "endin", "", "i 1 0 2", ")", ", 0.5"]
    for _ in range(400):
        prefix = rng.choice(["instr 1\n", "  asig ", "  aout moogladder asig, ", "i 1 "])
        middle = "".join(rng.choice(lines) + rng.choice(["\n", "", " "]) for _ in range(4))
        suffix = "".join(rng.choice(lines) + "\n" for _ in range(rng.randrange(4)))
        trim, sent, i = StreamTrim(prefix, suffix), "", 0
        while i < len(middle):
            size = rng.randint(1, 5)
            sent += trim.feed(middle[i:i + size])
            i += size
        assert sent + trim.finish() == trim_middle(prefix, middle, suffix)


def test_cursor_kinds():
    assert cursor_kind("  asig ", "\n") == "line-end"
    assert cursor_kind("  aout moogladder asig, ", " kcf\n") == "inside"
    assert cursor_kind("instr 1\n", "  outs a1, a1\n") == "line-start"
    assert cursor_kind("instr 1\n", "") == "line-start"


def client(reply: str) -> TestClient:
    return TestClient(create_app(Settings(prompt_format="chatml"), FakeBackend(reply)))


def test_infill_trims_at_the_line_end_and_drops_the_repeat():
    with client("oscili kenv, 440\n  outs asig, asig\n") as c:
        body = c.post("/infill", json={"input_prefix": HEAD, "prompt": "  asig ",
                                       "input_suffix": "\n  outs asig, asig\nendin\n",
                                       "n_predict": 64}).json()
        assert body["content"] == "oscili kenv, 440"
        # several completions (llama.vscode's n_cmpl) are each trimmed
        bodies = c.post("/infill", json={"input_prefix": HEAD + "  asig ",
                                         "input_suffix": "\nendin\n", "n_cmpl": 2,
                                         "n_predict": 64}).json()
        assert [b["content"] for b in bodies] == ["oscili kenv, 440"] * 2


def test_v1_completions_with_suffix_is_trimmed_and_without_is_not():
    reply = "  asig oscili kenv, 440\n  outs asig, asig\nendin\n"
    with client(reply) as c:
        fim = c.post("/v1/completions", json={"prompt": HEAD, "suffix": "  outs asig, asig\n",
                                              "max_tokens": 64}).json()
        assert fim["choices"][0]["text"] == "  asig oscili kenv, 440\n"
        plain = c.post("/v1/completions", json={"prompt": HEAD, "max_tokens": 64}).json()
        assert plain["choices"][0]["text"] == reply


def test_ollama_generate_with_suffix_is_trimmed():
    with client("kcf, 0.5\n") as c:
        body = c.post("/api/generate", json={
            "model": "csound-assistant", "prompt": HEAD + "  aout moogladder asig, ",
            "suffix": ", 0.5\n", "stream": False}).json()
        assert body["response"] == "kcf"


def test_streamed_answers_are_the_whole_answers_trimmed():
    reply = "oscili kenv, 440\n  outs asig, asig\n"
    prefix, suffix = HEAD + "  asig ", "\n  outs asig, asig\nendin\n"
    with client(reply) as c:
        r = c.post("/infill", json={"input_prefix": prefix, "input_suffix": suffix,
                                    "n_predict": 64, "stream": True})
        events = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: ")]
        assert "".join(e["content"] for e in events) == "oscili kenv, 440"
        r = c.post("/v1/completions", json={"prompt": prefix, "suffix": suffix,
                                            "max_tokens": 64, "stream": True})
        chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
        assert "".join(ch["choices"][0]["text"] for ch in chunks if ch["choices"]) \
            == "oscili kenv, 440"
        r = c.post("/api/generate", json={"model": "csound-assistant", "prompt": prefix,
                                          "suffix": suffix, "stream": True})
        lines = [json.loads(line) for line in r.text.splitlines() if line.strip()]
        assert "".join(x["response"] for x in lines) == "oscili kenv, 440"
        assert lines[-1]["done"] is True
