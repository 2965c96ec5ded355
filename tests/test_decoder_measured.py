"""The decoder's rules that come from asking Csound itself (``csound_assistant/
csound_slot_types.json``, made by ``bench/csound_slot_types.py``) and the shapes of answers to
generated describe-the-sound requests that Csound refused: each statement is judged by the
decoder and compiled by real Csound, and the two must agree."""

from __future__ import annotations

import json

import pytest

from csound_assistant import opcode_args
from csound_assistant.csound_document import Document
from csound_assistant.opcode_args import ArgForms
from csound_assistant.opcode_table import OpcodeTable
from test_decoder_scope import CSD, csound_accepts

PRELUDE = "asig = a(0)\nkx init 1\nfs pvsanal asig, 1024, 256, 1024, 1\n"

# (statement in an instrument, whether Csound 6.18 takes it)
CASES = [
    ("a1 oscili 0.5, 440, kx", False),  # a k variable where Csound wants an i-time table
    ("a1 oscili 0.5, 440, 1", True),
    ("a1 oscil 0.5, 440, kx", False),
    ("k1 trigger kx, 0.5, \"x\"", False),  # a string in a k slot
    ("k1 trigger kx, 0.5, 0", True),
    ("a2 pvsynth 0.5", False),  # a number for an fsig
    ("a2 pvsynth fs", True),
    ("kf pvsanal asig, 1024, 256, 1024, 1", False),  # an fsig opcode's output as k
    ("a3 butbp asig, 1000, asig", True),  # an a-rate bandwidth, a slot the manual calls k
    ("a3 butbp asig, 1000, 100", True),
    ("a4 = delayr(asig)", False),  # an opcode's argument inside a call
    ("a4 = tone(asig, 1000)", True),
    ("a4 = oscili(0.5, 440, 1, 0, 3)", False),  # more arguments than any form takes
    ("a4 = oscili(0.5, (440), 1)", True),
    ("k5 = 1 + 2)", False),  # a parenthesis that closes nothing
    ("k5 = (1 + 2)", True),
    ("a6 = asig.", False),  # a dot outside a number
    ("a6 = asig * .5", True),
    ("cpspch(8.00)", False),  # a call that makes an output, as a statement
    ("outs(asig, asig)", True),
    ("nchnls = 2", False),  # a header setting inside an instrument
    ("ix = nchnls", True),
    ("k7 = 1\x0bk8 = 2", False),  # a vertical tab ends no line for Csound
    ("a8 balance asig, 0.5  # a comment", False),  # # is xor, not a comment
    ("k9 = 3 # 5", True),
    ("a5, a6 exp kx", False),  # a function as an opcode makes one output
    ("kc = cpspch(8.00, 1)", False),  # and takes one argument
    ("kc = cpspch(8.00)", True),
    ("if kx > 0\nkx = 1\nendif", False),  # a condition with no then
    ("if kx > 0 then\nkx = 1\nendif", True),
    ("a9 oscili 0.5,\n  440, kx", False),  # a statement continued on the next line
    ("a9 oscili 0.5, \\\n  440, 1", True),
    ("kThisNameIsLongButStillFine_0123456789 = 1", True),  # 40 characters
    # shapes of the generated set's answers that Csound refused (eighteenth session)
    ("a9 oscili 0.5,\\n 440, 1", False),  # a backslash-n written out is no line break
    ("a9 oscili 0.5, \\ 440, 1", False),  # nothing but a comment follows a backslash
    ("a9 oscili 0.5, \\ ; the rest\n  440, 1", True),
    ("k1 = kx .5", False),  # an operand, then a number: a comma or operator is missing
    ("k1 = kx (1)", False),  # an operand, then a parenthesis
    ("k1 = 1 + 1()", False),
    ("k1 = abs (kx)", True),  # a function may have a space before its parenthesis
    ("k1 = kx * (1)", True),
    ("a1 tone * asig, 100", False),  # an operator with nothing before it
    ("a1 tone asig, * 100", False),
    ("k1 = -kx", True),
    ("k1 = kx ? 1 : 0", False),  # ``?`` follows a comparison
    ("k1 = (kx + 1) ? 1 : 0", False),
    ("k1 = (kx > 1 ? 2 : 3)", True),
    ("k1 = kx == 1 && kx > 0 ? 1 : 0", True),
    ('prints "abc', False),  # a string ends on its line
    ("e", False),  # a score statement in the orchestra
    ("e outs asig, asig", False),
    ("cpspch 8.00", False),  # a function makes an output: it is no statement
    ("k1 = ampmidi:i(0.5, 1, 120, 2, 1)", False),  # a typed call's arguments are counted
    ("i1 = ampmidi:i(0.5)", True),
    ("k1 = rndseed", False),  # an opcode that makes no output is no value
    ("k1 = 800/2:a(1)", False),  # a typed call follows a name, not a number
    ("k1 = kx {{a}}", False),  # a string after an operand
    ("a1 oscili 0.5, 440, kx + 1", False),  # a k expression in an i-time slot
    ("if asig > 0 then\nkx = 1\nendif", False),  # a condition reads no a-rate variable
    ("if k(asig) > 0 then\nkx = 1\nendif", True),  # ... but may convert one
    ("if abs(kx) > 0 then\nkx = 1\nendif", True),
    ("a1 tone k(asig), 100", False),  # a conversion's rate is its name
    ("endin 0\ninstr 2", False),  # nothing follows endin
    ("endin ; the end\ninstr 2", True),
]


@pytest.fixture(scope="module")
def table() -> OpcodeTable:
    return OpcodeTable.from_manual()


def decoder_allows(table, statement: str) -> bool:
    doc = Document.for_chat(table)
    doc.feed("Here:\n```csound\n" + CSD + "instr 1\n" + PRELUDE)
    return doc.allows(statement + "\n")


@pytest.mark.parametrize("statement,takes", CASES, ids=[c[0] for c in CASES])
def test_the_decoder_refuses_what_csound_refuses(table, tmp_path, statement, takes):
    assert csound_accepts(tmp_path, f"instr 1\n{PRELUDE}{statement}\nendin") == takes
    assert decoder_allows(table, statement) == takes


def test_a_statement_the_decoder_refuses_is_refused_as_it_is_written(table):
    """A number cannot start an fsig argument: refused at its first digit, so the model never
    writes digits it cannot end."""
    doc = Document.for_chat(table)
    doc.feed("Here:\n```csound\n" + CSD + "instr 1\n" + PRELUDE)
    assert doc.allows("a2 pvsynth f")
    assert not doc.allows("a2 pvsynth 0")
    assert not doc.allows("k1 trigger kx, 0.5, \"")


def test_a_text_that_leaves_no_way_on_is_refused_where_it_is_written(table):
    """Csound refuses ``kcps.5`` at the ``5``, but after ``kcps.`` nothing is valid: the
    decoder refuses the ``.`` (``goes_on``), so the model is never left with no valid token
    and the rest of its line unjudged; the same for an i-time slot given a k expression."""
    doc = Document.for_chat(table)
    doc.feed("Here:\n```csound\n" + CSD + "instr 1\n" + PRELUDE)
    assert doc.allows("k1 = kx") and doc.goes_on("k1 = kx")
    assert not doc.allows("k1 = kx.")
    assert not doc.allows("a1 oscili 0.5, 440, kx +")  # a k expression only rises
    assert doc.allows("a1 oscili 0.5, 440, 1 +")
    assert doc.goes_on("a1 oscili") and doc.goes_on("a1 oscili 0.5, 440, 1 ")
    doc.feed("a1 oscili 0.5, 440, ")
    # no k variable fits this i-time slot: a name that can only become one is refused as
    # it is written (``kx``), one that may yet be a call or ``ksmps`` is not (``k``)
    assert not doc.allows("kx") and not doc.allows("kx ")
    assert doc.allows("k") and doc.goes_on("k") and doc.goes_on("1")


def test_an_orchestra_holds_no_tag_but_its_end(table, tmp_path):
    """``<`` alone, or any tag but ``</CsInstruments>``, inside the orchestra is Csound's
    S_LT: an answer stopping at ``<`` (or writing ``<CsScore>`` too early) is refused."""
    orchestra = "instr 1\nendin\n<\n"
    assert not csound_accepts(tmp_path, orchestra)
    doc = Document.for_chat(table)
    doc.feed("Here:\n```csound\n" + CSD + "instr 1\nendin\n")
    assert doc.allows("<") and doc.allows("</Cs") and doc.allows("</CsInstruments>\n")
    assert not doc.allows("<\n") and not doc.allows("<;>") and not doc.allows("<CsScore>")
    assert not doc.allows("eNdIn\n")  # Csound's keywords are written in lower case
    untagged = Document.for_chat(table)
    untagged.feed("Here:\n```csound\n")
    assert untagged.allows("<CsoundSynthesizer>\n")  # a fenced block may open a CSD
    assert untagged.allows("instr 1\nendin\ne\n")  # and a score word is fine outside one


def test_the_header_still_takes_its_settings(table):
    doc = Document.for_chat(table)
    doc.feed("Here:\n```csound\n<CsoundSynthesizer>\n<CsInstruments>\n")
    assert doc.allows("nchnls = 2\n") and doc.allows("0dbfs = 1\n")


def test_the_measured_table_says_what_made_it():
    doc = json.loads(opcode_args.SLOT_TYPES_FILE.read_text())
    assert doc["made_by"].startswith("python bench/csound_slot_types.py")
    assert doc["csound"].startswith("6.")
    assert doc["kinds"] == "".join(opcode_args.KINDS)
    assert all(set("".join(slots)) <= set(opcode_args.KINDS) for slots in doc["forms"].values())


@pytest.mark.parametrize("content", [None, "{not json", '{"version": 1}'])
def test_a_missing_or_broken_table_is_said_in_the_log(tmp_path, monkeypatch, caplog, content):
    path = tmp_path / "csound_slot_types.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setattr(opcode_args, "SLOT_TYPES_FILE", path)
    opcode_args.load_slot_types.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="csound_assistant.decoder"):
            assert opcode_args.load_slot_types() == {}
    finally:
        opcode_args.load_slot_types.cache_clear()
    assert "judged by the manual's loose rule" in caplog.text and str(path) in caplog.text


def test_without_the_table_every_slot_is_judged_loosely(table, monkeypatch):
    """The loose rule takes a k variable in an i slot; the measured table knows oscili's
    table number is i-time only."""
    reference = ArgForms.from_manual()
    loose = ArgForms(reference.forms, reference.function_only)
    assert not loose.refuses("oscili", ("a",), 2, "k")
    assert reference.refuses("oscili", ("a",), 2, "k")
    # a slot measured as refusing its own rate (a statement Csound refused for another
    # reason) is judged loosely
    key = opcode_args.form_key("oscili", *reference.forms["oscili"][0])
    odd = ArgForms(reference.forms, reference.function_only,
                   {key: ("ci", "ci", "", "ci")})
    assert not odd.refuses("oscili", ("a",), 2, "k")


def test_a_name_longer_than_any_in_the_manual_is_cut_off(table, tmp_path):
    """The one rule Csound does not have: a name over 40 characters (none in the manual's
    examples passes 30) is refused, so a runaway "identifier" ends instead of filling the
    answer's budget."""
    runaway = "kThisNameRunsOnAndOnAsASmallModelsDoes_0123456789"
    assert csound_accepts(tmp_path, f"instr 1\n{runaway} = 1\nendin")
    assert not decoder_allows(table, f"{runaway} = 1")
    assert not decoder_allows(table, "reverbcsreamscaleagnegaL_i2dulence2u4gaR_i2dlifting")


def test_a_lone_carriage_return_is_refused_though_csound_reads_it_as_a_line_end(table,
                                                                               tmp_path):
    """The decoder reads lines at ``\\n``; Csound also ends one at a lone ``\\r``, so a
    ``\\r`` in the middle of a line would hide the next statement from the judge (a generated
    answer's ``k9\\rigoto FastTables`` left its ``oscil`` unjudged). No answer needs one."""
    assert csound_accepts(tmp_path, "instr 1\nkx = 1\rky = 2\nendin")
    assert not decoder_allows(table, "kx = 1\rky = 2")
    assert decoder_allows(table, "kx = 1\r")  # a Windows line end


def test_an_answer_near_its_budget_writes_only_what_closes_the_file(table):
    doc = Document.for_chat(table)
    doc.feed("Here:\n```csound\n<CsoundSynthesizer>\n<CsInstruments>\nsr = 48000\n"
             "instr 1\n  asig oscili 0.5, 440\n")
    assert not doc.winds_down("  outs", 30) and doc.winds_down("endin", 30)
    assert not doc.winds_down("e\n", 30)  # a lone "e" is no endin
    assert not doc.winds_down("eNd", 30)  # nor is a word only spelled like one
    # a line that can no longer close anything when the room runs short (a label being
    # written) goes on, or the answer would have no valid token left
    late = Document.for_chat(table)
    late.feed("Here:\n```csound\n<CsoundSynthesizer>\n<CsInstruments>\ninstr 1\nendinx")
    assert late.winds_down("y", 30) and late.winds_down(":", 30)
    assert doc.winds_down("  outs", 60)  # enough room: anything
    doc.feed("  kx = 1")
    assert not doc.winds_down(" + 2", 20) and doc.winds_down("\n", 20)  # the line ends now
    doc.feed("\n  outs asig, asig\nendin\n")
    assert not doc.winds_down("in", 80) and not doc.winds_down("gi", 80)
    assert doc.winds_down("</", 80) and doc.winds_down("instr", 100)
    doc.feed("</CsInstruments>\n<CsScore>\n")
    assert not doc.winds_down("i", 20) and doc.winds_down("e", 20) and doc.winds_down("</", 20)
    fim = Document.for_fim(table, "instr 1\n  asig oscili 0.5, 440\n")
    assert fim.winds_down("  outs", 5)  # a FIM middle is not wound down


def test_winding_down_writes_the_closing_tags_whole(table):
    doc = Document.for_chat(table)
    doc.feed("Here:\n```csound\n<CsoundSynthesizer>\n<CsInstruments>\ninstr 1\nendin\n")
    assert doc.winds_down("</Cs", 80) and not doc.winds_down("<CsScore>", 80)
    doc.feed("</")
    assert not doc.winds_down("\n", 80)  # "</" alone is no closing tag
    assert not doc.winds_down("CsScore>", 80) and doc.winds_down("CsInstruments>\n", 80)
    doc.feed("CsInstruments>\n<CsScore>\ni 1 0 2")
    assert doc.winds_down(" 3", 20)  # a score line begun is not cut short
    doc.feed("\n")
    assert not doc.winds_down("</\n", 20) and doc.winds_down("</CsScore>\n", 20)
    assert doc.winds_down("e ; the end\n", 20)
