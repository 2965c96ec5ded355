"""The Csound-aware decoder's rules that follow what a text assigned and what Csound's parser
takes (csound_assistant/csound_lexer.py, csound_scope.py, opcode_args.py): variables read before
they are assigned, argument rates against the synopsis, calls glued to an opcode, open
parentheses, ``[`` that indexes nothing, instr/endin nesting and the score's fields. Each case
is the shape of a dev-half answer that Csound refused; each is checked against real Csound
too, so a rule never refuses what Csound takes."""

from __future__ import annotations

import subprocess

import pytest

from csound_assistant.csound_document import Document
from csound_assistant.csound_scope import Scope, assigned
from csound_assistant.opcode_table import OpcodeTable

CSD = "<CsoundSynthesizer>\n<CsInstruments>\nsr = 48000\nksmps = 64\nnchnls = 2\n0dbfs = 1\n"
END = "</CsInstruments>\n<CsScore>\ni 1 0 1\ne\n</CsScore>\n</CsoundSynthesizer>\n"


@pytest.fixture(scope="module")
def table() -> OpcodeTable:
    return OpcodeTable.from_manual()


def in_instr(table, body: str = "") -> Document:
    doc = Document.for_chat(table)
    doc.feed("Here:\n```csound\n" + CSD + "instr 1\n" + body)
    return doc


def csound_accepts(tmp_path, orchestra: str, score: str = "i 1 0 1") -> bool:
    path = tmp_path / "t.csd"
    path.write_text(CSD + orchestra + "\n</CsInstruments>\n<CsScore>\n" + score
                    + "\ne\n</CsScore>\n</CsoundSynthesizer>\n")
    run = subprocess.run(["csound", "--syntax-check-only", "-d", "-+msg_color=0",
                          "-+rtaudio=null", "-+rtmidi=null", str(path)],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    err = run.stderr.replace(b"\0", b"").lower()
    return run.returncode == 0 and b"error:" not in err and b"sread: unexpected" not in err


@pytest.mark.parametrize("body, refused, fixed", [
    # describe-thunder, fix-moogladder-args, fix-deltap-no-delayr, explain-delayr-delayw
    ("", "  aout = thunder\n", "  aout = a(0)\n"),
    ("  afilt vco2 0.4, 110\n", "  aout = afilt * kenv\n", "  aout = afilt * 0.5\n"),
    ("  asrc vco2 0.4, 110\n", "  outs delayr, asrc\n", "  outs asrc, asrc\n"),
    ("  asrc vco2 0.4, 110\n", "  a2 delay wgpluck, 0.1\n", "  a2 delay asrc, 0.1\n"),
    # describe-kalimba, describe-fm-bell, opcode-squinewave, opcode-vdelayx (a-rate slots)
    ("", '  aout tone "flute.aiff", 100\n', "  aout tone a(0), 100\n"),
    ("", "  aout squinewave 0.3, 0.5, 0.5, 0.5\n", "  aout vco2 0.3, 440\n"),
    ("  asrc vco2 0.3, 220\n", "  aout vdelayx asrc, 0.5, 0.55, 0.5\n",
     "  aout vdelayx asrc, asrc, 0.55, 4\n"),
    ("  kenv linseg 0, 1, 1\n", "  aout tone kenv, 440\n", "  aout tone a(kenv), 440\n"),
    # describe-drum-pattern: a function as an opcode takes its output's rate
    ("", "  aout floor 0.5\n", "  kx floor 0.5\n"),
    # describe-tubular-bell, explain-streson: a call glued to an opcode after outputs
    ("", "  kenv expon(1), 1, 0.01\n", "  kenv expon (1), 1, 0.01\n"),
    ("", "  a1 oscili:a 0.5, 440\n", "  a1 = oscili:a(0.5, 440)\n"),
    # fix-unbalanced-paren
    ("", "  kcps = cpspch(p4\n", "  kcps = cpspch(p4)\n"),
    # fix-freeverb-outputs: brackets index a name
    ("  a1 vco2 0.3, 220\n", "  arev abs[], a1\n", "  arev = abs(a1)\n"),
    # nesting
    ("", "instr 2\n", "endin\n"),
    # a broken token glued to an opcode (describe-kalimba's ``tone\ufffd``)
    ("", "  aout tone\u00e9 a(0), 100\n", "  aout tone a(0), 100\n"),
    # a function as an opcode takes one argument (describe-drum-pattern, fix-freeverb-outputs)
    ("", "  kx floor 1, 2, 3\n", "  kx floor 1.5\n"),
    # an opcode's call has no space before ``(`` (explain-delayr-delayw, opcode-squinewave)
    ("", "  a1 = 1 + oscili (0.5, 440)\n", "  a1 = 1 + oscili(0.5, 440)\n"),
    # two operands with no operator between (fix-freeverb-outputs' ``outs arev a1``)
    ("  a1 vco2 0.3, 220\n", "  outs a1 a1, a1\n", "  outs a1 + a1, a1\n"),
    # a call's rate counts: aftouch is k-rate only (opcode-vdelayx)
    ("  asrc vco2 0.3, 220\n", "  aout vdelayx asrc, 0.5 + aftouch(1), 1, 4\n",
     "  aout vdelayx asrc, a(0.5), 1, 4\n"),
    # an S slot takes a string (explain-streson)
    ("", '  kpos strindexk "fox.wav", 1\n', '  kpos strindexk "fox.wav", "x"\n'),
    # a typed call names one rate (explain-streson's ``oscilikt:kfr``)
    ("", "  a1 = oscili:ak(0.5, 440)\n", "  a1 = oscili:a(0.5, 440)\n"),
    # no assignment among an opcode's arguments (opcode-squinewave's ``-nchnls=0``)
    ("  kx init 1\n", "  a1 oscili 0.5, kx=440\n", "  a1 oscili 0.5, kx*440\n"),
    # a condition word needs its condition (fix-if-no-then)
    ("  kx init 1\n", "  if\n", "  if kx = 1 then\n  endif\n"),
    # a ``?`` needs its ``:`` before the statement ends (opcode-vdelayx)
    ("  kx init 1\n", "  ky = kx > 1 ? 1\n", "  ky = kx > 1 ? 1 : 0\n"),
    # a quote mark outside a string (opcode-squinewave's ``-nchnls=='``)
    ("  kx init 1\n", "  ky = kx + 'a'\n", '  ky = kx + strlen("a")\n'),
])
def test_a_refused_statement_is_one_csound_refuses(table, tmp_path, body, refused, fixed):
    doc = in_instr(table, body)
    assert not doc.allows(refused)
    assert doc.allows(fixed)
    tail = "" if fixed == "endin\n" else "endin\n"
    assert not csound_accepts(tmp_path, "instr 1\n" + body + refused + "endin")
    assert csound_accepts(tmp_path, "instr 1\n" + body + fixed + tail)


def test_a_variable_is_known_after_its_assignment_and_where_csound_sees_it(table):
    doc = in_instr(table, "  kenv linseg 0, 1, 1\n  aL, aR pan2 a(0), 0.5\n")
    assert doc.allows("  aout = aL * kenv + p4 * sr / ksmps\n")
    assert doc.allows("  aout = aL * ke")  # a prefix of kenv: may go on
    assert not doc.allows("  aout = aL * kx\n")
    doc.feed("  kx init 0\n  kx += 1\n  gkcount = kx\nendin\n\ninstr 2\n")
    assert not doc.allows("  ky = kx\n")  # instr 1's kx is not instr 2's
    assert doc.allows("  ky = gkcount\n")  # a global is known everywhere after it


def test_header_names_stay_in_the_header_and_globals_cross(table):
    doc = Document.for_chat(table)
    doc.feed("```csound\n" + CSD + "ifoo = 3\ngiSine ftgen 0, 0, 8192, 10, 1\n")
    assert doc.allows("ibar = ifoo\n")
    doc.feed("instr 1\n")
    assert not doc.allows("  a1 oscili 0.5, 440 * ifoo\n")  # Csound: used before defined
    assert doc.allows("  a1 oscili 0.5, 440, giSine\n")


def test_nothing_is_judged_where_names_may_come_from_elsewhere(table):
    fragment = Document.for_chat(table)
    fragment.feed("Put this in your instrument:\n```csound\n")
    assert fragment.allows("  aout moogladder asig, kcut, 0.5\n")  # a fragment
    included = in_instr(table)
    included.feed('#include "setup.orc"\n')
    assert included.allows("  aout = asig\n")
    macro = in_instr(table)
    macro.feed("  $SETUP\n")
    assert macro.allows("  aout = asig\n")
    fim = Document.for_fim(table, "  aout moogladder asig, kcut, ")
    assert fim.allows("0.5\n")  # a FIM prefix that starts mid-instrument
    fim_whole = Document.for_fim(table, "instr 1\n  aout moogladder ")
    assert not fim_whole.allows("asig, 1000, 0.5\n")


def test_labels_and_gotos_are_no_variables(table):
    doc = in_instr(table, "  kx init 0\n")
    for ok in ("  if kx > 0 kgoto skip\n", "  if (kx == 1) igoto done\n",
               "  cggoto kx > 1, skip\n", "  timout 0, 1, later\n", "  loop_lt ki, 1, 4, top\n"):
        assert doc.allows(ok), ok


def test_midi_opcodes_that_write_their_arguments_assign_them():
    assert assigned("midinoteonpch p4, p5") == ["p4", "p5"]
    assert assigned("  aL, aR pan2 asig, 0.5") == ["aL", "aR"]
    assert assigned("kArr[] init 4") == ["kArr"]
    assert assigned("loop: kx += 1") == ["kx"]
    assert assigned("  outs a1, a1") == ["outs"]  # an opcode looks like an output: harmless
    assert assigned("kx == 1") == []
    scope = Scope.file().after("instr 1").after("midinoteoncps kcps, kvel")
    assert scope.defines("kvel") and scope.block == "instr"


def test_instr_and_endin_nest(table):
    doc = Document.for_chat(table)
    doc.feed("```csound\n" + CSD)
    assert not doc.allows("endin\n")  # no instrument is open
    assert not doc.allows("endop\n")
    doc.feed("instr 1\n")
    assert not doc.allows("instr 2\n") and not doc.allows("opcode Foo, a, a\n")
    assert not doc.allows("endop\n") and doc.allows("endin\n")
    doc.feed("endin\nopcode Foo, a, a\n  ain xin\n  xout ain\n")
    assert not doc.allows("endin\n") and doc.allows("endop\n")


def test_the_score_refuses_words_in_fields(table, tmp_path):
    doc = Document.for_chat(table)
    doc.feed("```csound\n" + CSD + "instr Bass\nendin\n</CsInstruments>\n<CsScore>\n")
    assert doc.judging
    assert not doc.allows("i Bass 0 1 6.00\n")  # fix-unquoted-instr-name
    assert not doc.allows("  aout oscili 0.5, 440\n")  # orchestra code in the score
    for ok in ('i "Bass" 0 1 6.00\n', "i 1 0 z\n", "i 1 + . np4\n", "f 1 0 8192 10 1\n",
               "i 1 [2 * 3] 1\n", "t 0 120\n", "m verse\n", "r 3 NN\n", "{ 4 CNT\n", "}\n",
               "; a comment\n", "e\n", "s\n"):
        assert doc.allows(ok), ok
    assert not csound_accepts(tmp_path, "instr Bass\nendin", "i Bass 0 1 6.00")
    assert csound_accepts(tmp_path, "instr Bass\nendin", 'i "Bass" 0 1 6.00')


def test_slots_csound_takes_any_rate_in_are_not_judged(table, tmp_path):
    """The manual says ``ares tablei andx, ifn``; Csound takes a constant there (measured, see
    CSOUND_TAKES_ANY) and so does the decoder."""
    body = "  giT ftgen 0, 0, 8, 10, 1\n"
    doc = Document.for_chat(table)
    doc.feed("```csound\n" + CSD + "giT ftgen 0, 0, 8, 10, 1\ninstr 1\n")
    assert doc.allows("  asig tablei 0.5, giT, 1\n")
    assert csound_accepts(tmp_path, body.strip() + "\ninstr 1\n  asig tablei 0.5, giT, 1\n"
                          "  outs asig, asig\nendin")
    # k where the manual says i: judged as Csound judged each slot (csound_slot_types.json):
    # schedkwhen's instrument takes it, oscili's table does not (test_decoder_measured.py)
    assert doc.allows("  kx init 1\n  schedkwhen kx, 0, 0, kx, 0, 1\n")
    assert csound_accepts(tmp_path, "instr 1\n  kx init 1\n  schedkwhen kx, 0, 0, kx, 0, 1\n"
                          "endin\ninstr 2\nendin")
