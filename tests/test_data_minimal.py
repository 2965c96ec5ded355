"""Minimal programs written from the manual's synopses, judged by real Csound."""

import pytest

from csound_assistant import sandbox
from csound_assistant.data import minimal
from csound_assistant.data.examples import load_manual


@pytest.fixture(scope="module")
def pages():
    return load_manual(limit=1).pages


def body(code: str) -> list[str]:
    return [line.strip() for line in code.split("instr 1\n")[1].split("endin")[0].splitlines()]


def test_audio_envelope_and_stereo_opcodes_get_the_right_shape(pages):
    assert body(minimal.program(pages["moogladder"])) == [
        minimal.SOURCE, "aout moogladder asrc, 1000, 0.5", "outs aout, aout"]
    # an envelope shapes an oscillator at k-rate, even where its first synopsis is a-rate
    assert body(minimal.program(pages["madsr"]))[0].startswith("kval madsr ")
    assert body(minimal.program(pages["pan2"])) == [
        minimal.SOURCE, "aL, aR pan2 asrc, 0.5", "outs aL, aR"]
    foscili = minimal.program(pages["foscili"])
    assert minimal.SINE_TABLE in foscili and "giSine" in body(foscili)[0]


def test_opcodes_a_two_line_example_cannot_show_are_skipped(pages):
    for name in ("prints", "diskin2", "ftgen", "pvsanal"):  # strings, many outputs, i/f-rate
        assert minimal.program(pages[name]) is None, name


def test_programs_really_play_and_rows_carry_them(pages):
    names = ["moogladder", "madsr", "pan2", "foscili", "vco2", "butterlp"]
    codes = [minimal.program(pages[n]) for n in names]
    for name, result in zip(names, sandbox.render_many(codes, workers=2, seconds=1.0)):
        assert result.category == "ok", (name, result.category, result.errors)
    row = minimal.row(pages["vco2"], codes[4], "vco2", {"category": "ok"})
    assert "vco2" in row["instruction"] and f"```csound\n{codes[4]}" in row["output"]
    assert row["meta"]["task"] == "minimal" and row["meta"]["group"] == "vco2"
