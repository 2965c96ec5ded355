"""The decoder's argument counts follow Csound where the manual's synopsis asks for more
(CSOUND_ARG_COUNTS): the fewest arguments it allows compile, one fewer does not."""

import pytest

from csound_assistant import sandbox
from csound_assistant.opcode_table import CSOUND_ARG_COUNTS, OpcodeTable

ARGS = ["0.3", "220", "1", "1", "2", "1", "0", "0", "0", "0"]


def _csd(line: str) -> str:
    out = "out a1\n" if line.startswith("a1") else ""
    return ("<CsoundSynthesizer>\n<CsInstruments>\nsr=44100\nksmps=32\nnchnls=1\n0dbfs=1\n"
            f"instr 1\n{line}\n{out}endin\n</CsInstruments>\n<CsScore>\nf1 0 8192 10 1\n"
            "i1 0 1\n</CsScore>\n</CsoundSynthesizer>\n")


@pytest.mark.parametrize("name,rate", sorted(CSOUND_ARG_COUNTS))
def test_the_fewest_arguments_csound_takes_are_allowed_and_no_fewer(name, rate):
    table = OpcodeTable.from_manual()
    fewest, _ = table.arg_bounds(name, (rate,))
    assert fewest == CSOUND_ARG_COUNTS[(name, rate)][0]
    call = f"{rate}1 {name} " + ", ".join(ARGS[:fewest])
    short = f"{rate}1 {name} " + ", ".join(ARGS[:fewest - 1])
    assert sandbox.check(_csd(call)).category == "ok", call
    assert sandbox.check(_csd(short)).category == "syntax", short


def test_a_table_read_back_from_a_gguf_keeps_the_corrections():
    table = OpcodeTable.from_manual()
    again = OpcodeTable.from_gguf(table.to_gguf())
    assert again.arg_bounds("foscili", ("a",)) == (5, 7)
