"""FIM rows at the cursor positions editors use, repository context rendered as the server
renders it, and rows encoded with and without the manual lookups (issue 26, items 1 and 2)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from csound_assistant import sandbox
from csound_assistant.data import csdcode, rows
from csound_assistant.data.examples import Example
from csound_assistant.opcode_reference import Lookups, OpcodeReference
from csound_assistant.prompt_format import SNIPPET_SEPARATOR, get_format
from csound_assistant.runtime.prompts import PromptBuilder
from csound_assistant.train.encode import gets_lookups, with_reference

from runtime_helpers import FakeBackend

CSD = """<CsoundSynthesizer>
<CsOptions>
-d
</CsOptions>
<CsInstruments>
sr = 44100
ksmps = 32
nchnls = 2
0dbfs = 1

opcode Soft, a, a
  ain xin
  aout = tanh(ain)
  xout aout
endop

instr 1
  kenv madsr 0.01, 0.1, 0.6, 0.2
  asig vco2 0.4 * kenv, p4
  kcf linseg 4000, p3, 300
  aout moogladder asig, kcf, 0.5
  aout Soft aout
  outs aout, aout
endin
</CsInstruments>
<CsScore>
i 1 0 1 110
i 1 1 1 165
e
</CsScore>
</CsoundSynthesizer>
"""
KNOWN = {"madsr", "vco2", "linseg", "moogladder", "outs", "xin", "xout", "tanh", "oscili"}


def example(name="bass", code=CSD) -> Example:
    return Example(name=name, path=Path(f"{name}.csd"), code=code, opcode="moogladder",
                   opcodes=["madsr", "vco2", "linseg", "moogladder", "outs"])


def test_defaults_make_only_the_two_old_kinds_without_context():
    made = rows.fim_rows(example(), KNOWN, cuts=3)
    assert {r["meta"]["task"] for r in made} == {"fim-line", "fim-expression"}
    assert all(set(r) == {"prefix", "middle", "suffix", "meta"} for r in made)


def test_every_new_kind_cuts_a_file_that_plays():
    made = rows.fim_rows(example(), KNOWN, cuts=2, kinds=rows.NEW_FIM_KINDS)
    by_kind = {}
    for row in made:
        by_kind.setdefault(row["meta"]["task"], []).append(row)
    assert set(by_kind) == set(rows.NEW_FIM_KINDS)
    for row in made:
        whole = row["prefix"] + row["middle"] + row["suffix"]
        assert row["middle"].strip()
        if row["meta"]["task"] == "fim-snippet":
            assert row["meta"]["file"] == "udo" and "<Cs" not in whole
            assert whole.lstrip().startswith("opcode Soft")
        else:
            assert whole == CSD
    for row in by_kind["fim-opcode"]:  # the cursor after the output variables
        line = row["prefix"].rpartition("\n")[2]
        assert line.strip() and row["middle"].split()[0] in KNOWN
    for row in by_kind["fim-score"]:
        assert "<CsScore>" in row["prefix"] and "</CsScore>" in row["suffix"]
    assert all(row["suffix"] == "" for row in by_kind["fim-eof"])
    # Csound, not this module, says the cut files are programs: the CSD and the loose .udo
    wholes = {row["prefix"] + row["middle"] + row["suffix"] for row in made}
    for code in wholes:
        assert sandbox.check(code).ok, code


def test_orc_snippet_and_argument_cuts():
    plain = CSD.replace(CSD[CSD.index("opcode"):CSD.index("endop") + 6], "") \
        .replace("  aout Soft aout\n", "")
    ex = example("plain", plain)
    block = csdcode.main_instrument(plain, "moogladder", KNOWN)
    ext, text = csdcode.snippet(plain, block)
    assert ext == "orc" and text.startswith("instr 1") and text.rstrip().endswith("endin")
    st = next(s for s in csdcode.statements(plain, KNOWN, block) if s.opcode == "moogladder")
    for seed in range(20):
        prefix, middle, suffix = csdcode.fim_argument_split(plain, st, random.Random(seed))
        assert prefix + middle + suffix == plain
        assert prefix.rpartition("\n")[2].startswith("  aout moogladder a")
        assert middle and "\n" not in middle
    snippets = [r for r in rows.fim_rows(ex, KNOWN, cuts=4, kinds=("fim-snippet",))]
    assert snippets and all(r["meta"]["file"] == "orc" for r in snippets)
    assert sandbox.check(snippets[0]["prefix"] + snippets[0]["middle"]
                         + snippets[0]["suffix"]).ok


def test_context_is_other_files_and_rendered_as_the_server_renders_it():
    other = example("other", CSD.replace("moogladder asig, kcf, 0.5", "moogladder asig, kcf, 0.8"))
    pool = rows.fim_context_pool([example(), other], KNOWN)
    assert [c["filename"] for c in pool] == ["bass.udo", "other.udo"]
    other.group = "other"
    made = rows.fim_rows(example(), KNOWN, kinds=rows.FIM_KINDS + rows.NEW_FIM_KINDS,
                         context=pool, context_share=1.0)
    with_extra = [r for r in made if "input_extra" in r]
    assert with_extra and all(c["filename"] == "other.udo"  # never the row's own file
                              for r in with_extra for c in r["input_extra"])
    assert not any("input_extra" in r for r in rows.fim_rows(
        example(), KNOWN, kinds=rows.NEW_FIM_KINDS, context=pool, context_share=0.0))
    row = with_extra[0]
    fmt = get_format("chatml")
    text = "".join(t for t, trained in fmt.segments(row) if not trained)
    assert text.startswith(SNIPPET_SEPARATOR + row["input_extra"][0]["text"])
    backend = FakeBackend(n_ctx=4096)  # byte tokens: equal ids are equal text
    builder = PromptBuilder(backend, "chatml")
    extra = [(c["filename"], c["text"]) for c in row["input_extra"]]
    ids, truncated = builder.fim_tokens(row["prefix"], row["suffix"], extra, budget=4096)
    assert not truncated and ids == backend.tokenize(text, special=True)


REFERENCE = OpcodeReference({"moogladder": ["asig moogladder ain, kcf, kres[, istor]"],
                             "vco2": ["ares vco2 kamp, kcps[, imode]"]})


def chat_row(i: int) -> dict:
    return {"instruction": f"Show me moogladder, variant {i}.", "input": "",
            "output": f"Here it is ({i})."}


def test_lookup_share_keeps_a_fixed_share_of_rows_with_lookups():
    lookups = Lookups(chat=True, fim=True, reference=REFERENCE)
    many = [chat_row(i) for i in range(400)]
    shown = [with_reference(r, lookups, 0.5) for r in many]
    with_manual = sum("Csound manual:" in s["messages"][0]["content"]
                      for s in shown if "messages" in s)
    assert 150 < with_manual < 250
    assert shown == [with_reference(r, lookups, 0.5) for r in many]  # the same every epoch
    assert all("messages" in with_reference(r, lookups, 1.0) for r in many[:20])
    assert all(with_reference(r, lookups, 0.0) == r for r in many[:20])
    fim = {"prefix": "instr 1\n  aout moogladder ", "middle": "asig, 800, 0.5",
           "suffix": "\nendin\n"}
    got = with_reference(fim, lookups, 1.0)
    assert got["prefix"].startswith("; Csound manual:\n; asig moogladder")
    assert with_reference(fim, lookups, 0.0) == fim
    assert gets_lookups(fim, 0.5) == gets_lookups(dict(fim), 0.5)


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_lookup_share_out_of_range_is_refused(share):
    from csound_assistant.errors import ConfigError
    from csound_assistant.train.config import load_config

    with pytest.raises(ConfigError, match="lookup_share"):
        load_config(overrides={"lookup_share": share})
