"""The opcode table travels with the model (opcode_table.py ``to_gguf``, runtime/decoder_setup.py):
the server's Csound-aware decoder takes it from the GGUF, else from the installed manual, else
decodes plain and says why in /health, never failing to start. The real app on the embedded
SmolLM2 GGUF, with the manual made unreachable (CSOUND_ASSISTANT_SYNOPSES naming no file)."""

from __future__ import annotations

import base64
import gzip
import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from csound_assistant import constants as C
from csound_assistant.convert.gguf_convert import embed_metadata, read_metadata
from csound_assistant.opcode_table import OpcodeTable, model_table
from csound_assistant.prompt_format import get_format
from csound_assistant.runtime.backend import Sampling
from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings

# A manual of three opcodes, one of them made up: only the GGUF can have taught it.
SYNOPSES = {"oscili": ["ares oscili xamp, xcps[, ifn, iphs]"], "outs": ["outs asig1, asig2"],
            "emuls": ["ares emuls xamp"]}
PREFIX, SUFFIX = "instr 1\n  asig ", "\n  outs asig, asig\nendin\n"


def test_the_table_survives_its_gguf_value():
    table = OpcodeTable.from_manual()
    value = table.to_gguf()
    assert len(value) < 20_000  # gzipped JSON in base64; the synopses' JSON is 110 kB
    back = OpcodeTable.from_gguf(value)
    assert back.forms == table.forms and back.names == table.names
    assert back.no_output == table.no_output
    assert back.fitting(("a",)) == table.fitting(("a",))
    assert back.arg_bounds("outs", ()) == table.arg_bounds("outs", ())


def _packed(obj) -> str:
    return base64.b64encode(gzip.compress(json.dumps(obj).encode())).decode()


@pytest.mark.parametrize("value", [
    "not base64 at all!", base64.b64encode(b"not gzip").decode(), _packed([1, 2]),
    _packed({"version": 2, "forms": {"oscili": [[1, 1, "a", 2, 4]]}}),
    _packed({"version": 1, "forms": {}}), _packed({"version": 1, "forms": {"x": [[1]]}}),
])
def test_a_value_that_is_not_a_table_is_refused(value):
    with pytest.raises(ValueError, match="not an opcode table written by"):
        OpcodeTable.from_gguf(value)


def test_the_choice_is_the_gguf_then_the_manual_then_none(tmp_path, monkeypatch, no_manual):
    ours = OpcodeTable(SYNOPSES)
    choice = model_table({C.GGUF_OPCODE_TABLE: ours.to_gguf()})
    assert choice.source == "gguf" and choice.table.forms == ours.forms and not choice.note
    choice = model_table({C.GGUF_OPCODE_TABLE: "garbage"})
    assert choice.table is None and "cannot be read" in choice.note
    assert "nowhere.json" in choice.note  # and why there was no manual either
    monkeypatch.delenv(C.ENV_OPCODE_REFERENCE)
    choice = model_table({})
    assert choice.source == "manual" and "moogladder" in choice.table
    assert C.GGUF_OPCODE_TABLE in choice.note


@pytest.fixture(scope="module")
def gguf_with_table(embedded_gguf, tmp_path_factory):
    """The embedded GGUF with its metadata rewritten as ``export`` writes it, on a machine whose
    'manual' is SYNOPSES."""
    folder = tmp_path_factory.mktemp("table-gguf")
    saved = folder / "synopses.json"
    saved.write_text(json.dumps(SYNOPSES))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(C.ENV_OPCODE_REFERENCE, str(saved))
        embed_metadata(embedded_gguf, folder / "model.gguf", get_format("chatml"), {"name": "t"})
    return folder / "model.gguf"


def serve(gguf) -> TestClient:
    return TestClient(create_app(Settings(model_path=gguf, prompt_format="chatml", n_ctx=512,
                                          n_threads=1)))


def refuses(backend, tokens, text: str) -> bool:
    """Whether the decoder refuses ``text``'s first token where the model wants it most."""
    constraint = backend.constraint(tokens, Sampling(temperature=0))
    logits = np.zeros(backend.n_vocab, dtype=np.float32)
    token = backend.tokenize(text, special=False)[0]
    logits[token] = 30.0
    constraint.mask(logits)
    return logits[token] == -np.inf


def test_the_decoder_reads_its_opcodes_from_the_gguf(gguf_with_table, no_manual):
    assert OpcodeTable.from_gguf(read_metadata(gguf_with_table)[C.GGUF_OPCODE_TABLE]).forms \
        == OpcodeTable(SYNOPSES).forms
    with serve(gguf_with_table) as c:
        assert c.get("/health").json()["decoder"] == {
            "requested": "csound", "active": "csound", "opcode_table": "gguf", "opcodes": 3,
            "note": ""}
        svc = c.app.state.service
        tokens, _ = svc.prompts.fim_tokens(PREFIX, SUFFIX, budget=400)
        assert not refuses(svc.backend, tokens, "emuls")  # the GGUF's, not the manual's
        assert refuses(svc.backend, tokens, "moogladder")
        r = c.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX,
                                    "n_predict": 3, "temperature": 0})
        assert r.status_code == 200 and r.headers["x-csound-decoder"] == "csound"


def test_without_a_table_or_a_manual_it_decodes_plain_and_says_why(embedded_gguf, no_manual,
                                                                   caplog):
    assert C.GGUF_OPCODE_TABLE not in read_metadata(embedded_gguf)
    with caplog.at_level("WARNING", logger="csound_assistant.serve"), serve(embedded_gguf) as c:
        decoder = c.get("/health").json()["decoder"]
        r = c.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "A sine."}], "max_tokens": 3,
            "stream": True})
    assert decoder["requested"] == "csound" and decoder["active"] == "plain"
    assert decoder["opcode_table"] is None
    assert C.GGUF_OPCODE_TABLE in decoder["note"] and "nowhere.json" in decoder["note"]
    assert r.status_code == 200 and r.headers["x-csound-decoder"] == "plain"
    warnings = [m for m in caplog.messages if "decoding plain" in m]
    assert len(warnings) == 1 and "csound-doc" in warnings[0]


def test_a_backend_built_with_the_manuals_table_takes_the_ggufs(gguf_with_table):
    """``serve``'s CLI and the eval build their ``LlamaBackend`` themselves: its decoder starts
    from the installed manual, and the app swaps in the table the GGUF carries."""
    from csound_assistant.runtime.backend import LlamaBackend

    backend = LlamaBackend(gguf_with_table, n_ctx=512, n_threads=1, decoder="csound")
    assert "moogladder" in backend.decoding.table
    with TestClient(create_app(Settings(prompt_format="chatml"), backend)) as c:
        decoder = c.get("/health").json()["decoder"]
    backend.close()
    assert (decoder["active"], decoder["opcode_table"], decoder["opcodes"]) == ("csound", "gguf", 3)
    assert "emuls" in backend.decoding.table and "moogladder" not in backend.decoding.table
