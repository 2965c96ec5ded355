"""The manual's synopses travel with the model (``OpcodeReference.to_gguf``, key
``csound_assistant.synopses``): a model trained with lookups is served with them from its GGUF
on a machine without csound-doc, else from the installed manual, else without lookups, saying
why in the log and in /health, never failing to start. The real app (and ``serve`` in a
subprocess) on the embedded SmolLM2 GGUF, with the manual made unreachable
(CSOUND_ASSISTANT_SYNOPSES naming no file)."""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json

import httpx
import pytest
from starlette.testclient import TestClient

from csound_assistant import constants as C
from csound_assistant.convert.gguf_convert import embed_metadata, read_metadata
from csound_assistant.opcode_reference import HEADER, OpcodeReference, model_synopses
from csound_assistant.prompt_format import get_format
from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings

from runtime_helpers import serve_process

# A manual with a made-up opcode: only the GGUF can have taught it.
SYNOPSES = {"oscili": ["ares oscili xamp, xcps[, ifn, iphs]"], "outs": ["outs asig1, asig2"],
            "emuls": ["ares emuls xamp"]}
ASK = [{"role": "user", "content": "How do I use the emuls opcode?"}]
LOOKUP = f"{HEADER}\nares emuls xamp"


def test_the_synopses_survive_their_gguf_value():
    manual = OpcodeReference.from_manual()
    value = manual.to_gguf()
    assert len(value) < 50_000  # gzipped JSON in base64; the JSON is 110 kB
    assert OpcodeReference.from_gguf(value).synopses == manual.synopses
    assert manual.to_gguf() == value  # the same manual, the same bytes in every export


def _packed(obj) -> str:
    return base64.b64encode(gzip.compress(json.dumps(obj).encode())).decode()


@pytest.mark.parametrize("value", [
    "not base64 at all!", base64.b64encode(b"not gzip").decode(), _packed([1, 2]),
    _packed({"version": 2, "synopses": SYNOPSES}), _packed({"version": 1, "synopses": {}}),
    _packed({"version": 1, "synopses": {"oscili": "ares oscili xamp"}}),
])
def test_a_value_that_is_not_synopses_is_refused(value):
    with pytest.raises(ValueError, match="not synopses written by"):
        OpcodeReference.from_gguf(value)


def test_the_choice_is_the_gguf_then_the_manual_then_none(monkeypatch, no_manual):
    ours = OpcodeReference(SYNOPSES)
    choice = model_synopses({C.GGUF_SYNOPSES: ours.to_gguf()})
    assert (choice.source, choice.synopses, choice.note) == ("gguf", SYNOPSES, "")
    choice = model_synopses({C.GGUF_SYNOPSES: "garbage"})
    assert choice.reference is None and choice.synopses == {}
    assert "cannot be read" in choice.note and "nowhere.json" in choice.note
    monkeypatch.delenv(C.ENV_OPCODE_REFERENCE)
    choice = model_synopses({})
    assert choice.source == "manual" and "moogladder" in choice.synopses
    assert C.GGUF_SYNOPSES in choice.note


def _flagged(src, dst, synopses_file=None):
    """``src`` with its metadata written as ``export`` writes it for a model trained with chat
    and FIM lookups, on a machine whose manual is ``synopses_file`` (None: no manual)."""
    fmt = dataclasses.replace(get_format("chatml"), opcode_reference=True, fim_reference=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(C.ENV_OPCODE_REFERENCE, str(synopses_file or dst.with_name("nowhere.json")))
        embed_metadata(src, dst, fmt, {"name": "t"})
    return dst


@pytest.fixture(scope="module")
def gguf_with_synopses(embedded_gguf, tmp_path_factory):
    folder = tmp_path_factory.mktemp("synopses-gguf")
    saved = folder / "synopses.json"
    saved.write_text(json.dumps(SYNOPSES))
    return _flagged(embedded_gguf, folder / "model.gguf", saved)


@pytest.fixture(scope="module")
def gguf_without_synopses(embedded_gguf, tmp_path_factory):
    return _flagged(embedded_gguf, tmp_path_factory.mktemp("bare-gguf") / "model.gguf")


def serve(gguf) -> TestClient:
    return TestClient(create_app(Settings(model_path=gguf, prompt_format="chatml", n_ctx=512,
                                          n_threads=1)))


def prompts_seen(svc) -> list[str]:
    """Every chat prompt the app's builder makes from now on, as text."""
    seen, build = [], svc.prompts.chat_tokens

    def recording(messages):
        ids = build(messages)
        seen.append(svc.backend.llm.detokenize(ids, special=True).decode())
        return ids

    svc.prompts.chat_tokens = recording
    return seen


def test_a_model_gets_its_lookups_from_its_gguf_without_a_manual(gguf_with_synopses, no_manual):
    assert OpcodeReference.from_gguf(read_metadata(gguf_with_synopses)[C.GGUF_SYNOPSES]) \
        .synopses == SYNOPSES
    with serve(gguf_with_synopses) as c:
        health = c.get("/health").json()
        seen = prompts_seen(c.app.state.service)
        r = c.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2})
        fim, _ = c.app.state.service.prompts.fim_tokens(
            "instr 1\n  asig emuls ", "\n  outs asig, asig\nendin\n", budget=400)
        fim_text = c.app.state.service.backend.llm.detokenize(fim, special=True).decode()
    assert r.status_code == 200, r.text
    assert len(seen) == 1 and LOOKUP in seen[0]  # a made-up opcode: the GGUF's synopses
    assert f"; {HEADER}\n; ares emuls xamp\n" in fim_text
    assert health["lookups"] == ["chat", "fim"]
    reference = health["opcode_reference"]
    assert (reference["source"], reference["opcodes"], reference["note"]) == ("gguf", 3, "")
    assert health["decoder"]["opcode_table"] == "gguf"  # both travel in the GGUF


def test_without_synopses_or_a_manual_it_serves_without_lookups_and_says_why(
        gguf_without_synopses, no_manual, caplog):
    meta = read_metadata(gguf_without_synopses)
    assert meta[C.GGUF_OPCODE_REFERENCE] and C.GGUF_SYNOPSES not in meta
    with caplog.at_level("WARNING", logger="csound_assistant.serve"), \
            serve(gguf_without_synopses) as c:
        health = c.get("/health").json()
        seen = prompts_seen(c.app.state.service)
        r = c.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert len(seen) == 1 and HEADER not in seen[0]
    assert health["lookups"] == []
    reference = health["opcode_reference"]
    assert reference["source"] is None and reference["opcodes"] == 0
    assert C.GGUF_SYNOPSES in reference["note"] and "nowhere.json" in reference["note"]
    warnings = [m for m in caplog.messages if "no lookups" in m]
    assert len(warnings) == 1 and "csound-doc" in warnings[0]


def test_serve_from_the_command_line_needs_no_manual(gguf_with_synopses, no_manual, tmp_path):
    """``csound-assistant serve`` builds its backend as the app does: the decoder's table and
    the lookups' synopses from the GGUF, where the installed manual cannot be read."""
    with open(tmp_path / "server.log", "w+") as log:
        proc, url = serve_process([str(gguf_with_synopses), "--prompt-format", "chatml",
                                   "--n-ctx", "512", "--threads", "1", "--log-level", "warning"],
                                  log)
        try:
            health = httpx.get(f"{url}/health", timeout=30).json()
        finally:
            proc.terminate()
            proc.wait(20)
    assert (health["decoder"]["active"], health["decoder"]["opcode_table"]) == ("csound", "gguf")
    assert health["opcode_reference"]["source"] == "gguf" and health["lookups"] == ["chat", "fim"]
