"""The Csound sandbox on real Csound: hostile inputs are contained, good ones measured."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from csound_assistant import sandbox
from csound_assistant.manual import MANUAL_EXAMPLES

SINE = "instr 1\n  a1 poscil 0.3, 440\n  outs a1, a1\nendin\n"


def csd(orchestra: str, score: str = "i 1 0 1", options: str = "") -> str:
    return (
        "<CsoundSynthesizer>\n<CsOptions>\n" + options + "\n</CsOptions>\n<CsInstruments>\n"
        "sr = 48000\nksmps = 64\nnchnls = 2\n0dbfs = 1\n" + orchestra +
        "</CsInstruments>\n<CsScore>\n" + score + "\ne\n</CsScore>\n</CsoundSynthesizer>\n"
    )


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "marker"
    yield path
    assert not path.exists(), "sandboxed code created a file outside its temp dir"


# --- hostile inputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    'instr 1\n  ires system_i 1, "touch {m}"\nendin\n',
    'instr 1\n  kres system 1, "touch {m}"\nendin\n',
    'instr 1\n  ires = system_i(1, "touch {m}")\nendin\n',
    '#define S #sys#\ninstr 1\n  ires $S.tem_i 1, "touch {m}"\nendin\n',
    'instr 1\n  pyinit\n  pyruni "open(\'{m}\', \'w\')"\nendin\n',
    'instr 1\n  ires compilestr "instr 2\\n ires system_i 1, \\"touch {m}\\"\\nendin"\nendin\n',
])
def test_shell_and_python_opcodes_are_refused_and_never_run(body, marker):
    code = body.format(m=marker)
    for result in (sandbox.check(code), sandbox.render(code, seconds=0.5),
                   sandbox.render(csd(code), seconds=0.5)):
        assert not result.ok
        assert result.category == "refused"
        assert result.refused and result.returncode is None
        assert all(d.severity == "error" for d in result.diagnostics)


def test_file_writing_outside_the_temp_dir_is_refused(marker):
    code = f'instr 1\n  a1 poscil 0.3, 440\n  fout "{marker}", 14, a1\nendin\n'
    result = sandbox.render(code, seconds=0.5)
    assert result.category == "refused"
    assert any("fout" in r for r in result.refused)
    sneaky = 'instr 1\n  a1 poscil 0.3, 440\n  fout strcat("/t", "mp/x.wav"), 14, a1\nendin\n'
    assert sandbox.render(sneaky, seconds=0.5).category == "refused"


@pytest.mark.parametrize("include", ["/etc/passwd", "../../etc/passwd",
                                     "https://example.com/x.orc"])
def test_include_outside_the_temp_dir_is_refused(include):
    code = f'#include "{include}"\n' + SINE
    for result in (sandbox.check(code), sandbox.render(code)):
        assert result.category == "refused"
        assert "root:" not in result.stderr


def test_embedded_file_cannot_escape_and_score_bin_is_refused(marker):
    escape = csd(SINE).replace("</CsoundSynthesizer>",
                               f'<CsFileB filename="{marker}">aGVsbG8=</CsFileB>\n'
                               "</CsoundSynthesizer>")
    assert sandbox.render(escape).category == "refused"
    binary = csd(SINE).replace("<CsScore>", f'<CsScore bin="touch {marker}">')
    assert sandbox.check(binary).category == "refused"


def test_infinite_loop_at_init_time_is_killed():
    code = "instr 1\n  icount = 0\n  while icount >= 0 do\n    icount += 1\n  od\nendin\n"
    result = sandbox.render(code, seconds=1, timeout=2)
    assert result.category == "timeout" and not result.ok
    # checking never executes it
    assert sandbox.check(code, timeout=5).category == "ok"


def test_infinite_loop_at_control_rate_is_killed():
    code = ("instr 1\n  kcount = 0\n  while kcount >= 0 do\n    kcount += 1\n  od\n"
            "  a1 poscil 0.3, 440\n  outs a1, a1\nendin\n")
    result = sandbox.render(code, seconds=1, timeout=2)
    assert result.category == "timeout" and not result.ok


def test_huge_table_hits_the_memory_limit():
    code = "giHuge ftgen 0, 0, 2^30, 10, 1\n" + SINE  # 8 GiB of doubles
    result = sandbox.render(code, memory_mb=512)
    assert not result.ok
    assert result.category in ("runtime-error", "crash")
    assert result.errors


def test_long_score_is_cut_to_the_requested_seconds():
    result = sandbox.render(csd(SINE, score="i 1 0 36000"), seconds=1.5)
    assert result.ok and result.category == "ok"
    assert 1.4 <= result.seconds <= 1.6


def test_enormous_output_is_capped_by_the_file_size_limit():
    header = "sr = 192000\nksmps = 64\nnchnls = 64\n0dbfs = 1\n"
    code = header + "instr 1\n  a1 poscil 0.3, 440\n  outch 1, a1\nendin\n"
    wrapped = sandbox.wrap_orchestra(code)
    assert wrapped.count("nchnls") == 1  # the fragment's own header is kept
    result = sandbox.render(code, seconds=3)
    assert not result.ok and result.category == "crash"
    assert "output size limit reached" in result.notes


def test_endless_printing_is_truncated():
    code = ('instr 1\n  icount = 0\n  while icount >= 0 do\n    prints "spam spam spam\\n"\n'
            "    icount += 1\n  od\nendin\n")
    result = sandbox.render(code, seconds=1, timeout=3)
    assert result.category == "timeout"
    assert len(result.stderr) < 2 << 20


def test_realtime_options_do_not_run():
    code = csd("instr 1\n  a1, a2 ins\n  outs a1, a2\nendin\n", options="-odac -iadc -M0")
    result = sandbox.render(code, seconds=1)
    assert result.category == "realtime"
    assert result.seconds == pytest.approx(1.0, abs=0.05)


def test_without_isolation_nothing_runs_unless_the_user_opts_in(monkeypatch, tmp_path):
    from csound_assistant import isolation
    from csound_assistant.errors import IsolationUnavailable

    monkeypatch.setattr(isolation, "probe", lambda csound: "bubblewrap is not installed")
    monkeypatch.delenv(isolation.ENV_OPT_IN, raising=False)
    before = set(Path(tempfile.gettempdir()).glob("csound-render-*"))
    with pytest.raises(IsolationUnavailable, match="bubblewrap is not installed"):
        sandbox.render(SINE, seconds=0.5)
    with pytest.raises(IsolationUnavailable, match=isolation.ENV_OPT_IN):
        sandbox.check(SINE)
    assert set(Path(tempfile.gettempdir()).glob("csound-render-*")) == before  # nothing written
    assert sandbox.check('instr 1\n  system_i 1, "id"\nendin\n').category == "refused"
    monkeypatch.setenv(isolation.ENV_OPT_IN, "1")  # the user trusts the code
    result = sandbox.render(SINE, seconds=0.5)
    assert result.ok and not result.network_isolated
    assert any("not isolated" in note for note in result.notes)


def test_runs_isolated():
    assert sandbox.isolation_status() == "bubblewrap"
    result = sandbox.render(SINE)
    assert result.network_isolated and result.ok


# --- good code, measured ----------------------------------------------------------------------

def test_sine_renders_audible_and_measured():
    result = sandbox.render(SINE, seconds=1)
    assert result.ok and result.audible and result.category == "ok"
    assert result.peak == pytest.approx(0.3, abs=0.01)
    assert result.rms == pytest.approx(0.3 / 2 ** 0.5, abs=0.01)
    assert result.channels == 2 and result.sample_rate == 48000
    assert not (result.silent or result.clipping or result.nan)


def test_bare_instrument_body_is_wrapped():
    result = sandbox.render("a1 vco2 0.2, 220\nouts a1, a1\n", seconds=1)
    assert result.audible


def test_named_instrument_and_pfields_get_a_score():
    code = ('instr Pluck\n  iamp = p4\n  ifreq = cpspch(p5)\n  a1 pluck iamp, ifreq, ifreq, 0, 1\n'
            "  outs a1, a1\nendin\n")
    wrapped = sandbox.wrap_orchestra(code)
    assert 'i "Pluck" 0 2 0.5 8.09' in wrapped
    assert sandbox.render(code).audible


def test_syntax_error_line_in_fragment_and_full_csd():
    broken = "instr 1\n  a1 poscil 0.3, 440\n  a2 = a1 *\n  outs a1, a1\nendin\n"
    fragment = sandbox.check(broken)
    assert not fragment.ok and fragment.category == "syntax"
    assert fragment.errors[0].line in (3, 4)  # Csound reports the statement's or the next line
    full = sandbox.check(csd(broken))
    offset = csd(broken).split("\n").index("instr 1")
    assert full.errors[0].line == fragment.errors[0].line + offset


def test_misspelled_opcode_is_named_with_its_line():
    code = "instr 1\n  a1 poscil 0.3, 440\n  a2 moogladdr a1, 1000, 0.5\n  outs a2, a2\nendin\n"
    result = sandbox.check(code)
    assert result.category == "unknown-opcode"
    assert result.errors[0].line == 3
    assert any("moogladdr" in n for n in result.notes)
    assert "\x00" not in result.stderr


def test_opcode_from_a_missing_plugin_is_told_apart():
    if "scans" in sandbox.installed_opcodes() or "scans" not in sandbox.manual_opcodes():
        pytest.skip("scans is installed here or the manual is missing")
    result = sandbox.check("instr 1\n  a1 scans 0.3, 440, 1, 2\n  outs a1, a1\nendin\n")
    assert result.category == "plugin"


def test_wrong_argument_types_are_syntax_errors_with_line():
    result = sandbox.check('instr 1\n  a1 poscil "loud", 440\n  outs a1, a1\nendin\n')
    assert result.category == "syntax" and result.errors[0].line == 2


def test_nan_silence_and_clipping_are_detected():
    nan = sandbox.render("k1 init -1\na1 = poscil(0.3, 440) * sqrt(k1)\nouts a1, a1\n")
    assert nan.nan and nan.category == "nan" and not nan.ok and not nan.audible
    silent = sandbox.render("a1 poscil 0, 440\nouts a1, a1\n")
    assert silent.silent and silent.category == "silent" and not silent.audible
    loud = sandbox.render("a1 poscil 1.5, 440\nouts a1, a1\n")
    assert loud.clipping and loud.category == "clipping" and loud.peak == pytest.approx(1.5)


def test_missing_input_file_and_init_error():
    missing = sandbox.render('a1 diskin2 "nofile.wav", 1\nouts a1, a1\n')
    assert missing.category == "needs-input-file"
    assert missing.errors[0].line == 1
    bad_table = sandbox.render("a1 oscili 0.3, 440, 99\nouts a1, a1\n")
    assert bad_table.category == "runtime-error" and bad_table.errors[0].line == 1


def test_many_keeps_order(tmp_path):
    codes = [SINE, "instr 1\n  a1 moogladdr 1\nendin\n", 'instr 1\n system_i 1, "ls"\nendin\n']
    checked = sandbox.check_many(codes, workers=2)
    assert [r.category for r in checked] == ["ok", "unknown-opcode", "refused"]
    rendered = sandbox.render_many(codes[:1], workers=2, seconds=0.5)
    assert rendered[0].audible and rendered[0].seconds == pytest.approx(0.5, abs=0.01)


def test_keep_wav_copies_the_render(tmp_path):
    out = tmp_path / "sine.wav"
    sandbox.render(SINE, seconds=0.5, keep_wav=out)
    samples, rate = sandbox.read_wav(out)
    assert rate == 48000 and samples.shape == (24000, 2)


def test_every_category_is_documented():
    assert {"ok", "refused", "syntax", "unknown-opcode", "needs-input-file", "realtime",
            "plugin", "timeout", "crash", "nan", "silent", "clipping"} <= set(sandbox.CATEGORIES)


def test_manual_assets_make_example_inputs_available(csound_examples):
    assets = sandbox.manual_assets(csound_examples)
    assert "fox.wav" in assets and assets["fox.wav"].name == "fox.wav.gz"
    code = 'a1 diskin2 "fox.wav", 1\nouts a1 * 0.5, a1 * 0.5\n'
    assert sandbox.render(code, seconds=1).category == "needs-input-file"
    result = sandbox.render(code, seconds=1, assets=assets)
    assert result.audible and result.category == "ok"
    inline = sandbox.render(code, seconds=1, assets={"fox.wav": assets["fox.wav"].read_bytes()})
    assert inline.category != "ok"  # still gzipped bytes: not a sound file


# --- plugin selection: only the libraries the code names, same verdicts -----------------------

PLUGIN_EXAMPLES = ["STKBowed.csd", "linear_algebra.csd", "tvconv.csd", "fluidEngine.csd",
                   "moogladder.csd", "pvsfilter.csd", "FLbutton.csd", "faustaudio.csd",
                   "imageload.csd", "hdf5read.csd"]


def test_heavy_plugins_load_only_for_code_that_names_their_opcodes():
    from csound_assistant import sandbox_plugins as sp

    if sp.heavy_opcodes(sandbox.CSOUND, tuple(sandbox.COMMON_FLAGS)) is None:
        pytest.skip("this Csound's plugin folder is not known")
    light = Path(sp.folder_for("instr 1\nasig oscili 0.3, 440\nouts asig, asig\nendin",
                               sandbox.CSOUND, sandbox.COMMON_FLAGS))
    stk = Path(sp.folder_for("instr 1\nasig STKBowed 440, 1\nendin", sandbox.CSOUND,
                             sandbox.COMMON_FLAGS))
    names = {p.name for p in light.iterdir()}
    assert "libfaustcsound.so" not in names and "libstkops.so" not in names
    assert "librtalsa.so" not in names and "libarrayops.so" in names  # light ones always load
    assert {p.name for p in stk.iterdir()} == names | {"libstkops.so"}
    everything = sp.folder_for('#include "x.orc"', sandbox.CSOUND, sandbox.COMMON_FLAGS)
    assert everything == sp.full_folder(sandbox.CSOUND, sandbox.COMMON_FLAGS)
    # included code cannot be scanned: every library loads but the never-loaded ones
    loaded = {p.name for p in Path(everything).iterdir()}
    assert {"libstkops.so", "libfaustcsound.so"} <= loaded
    assert not loaded & {"librtalsa.so", "libcontrol.so"}  # no devices; `wish` is a program


def test_selected_plugins_give_the_verdicts_of_the_full_folder(monkeypatch):
    from csound_assistant import sandbox_plugins as sp

    folder = sp.plugin_folder()
    if folder is None:
        pytest.skip("this Csound's plugin folder is not known")
    examples = MANUAL_EXAMPLES
    codes = [(examples / name).read_text(errors="replace") for name in PLUGIN_EXAMPLES
             if (examples / name).is_file()]
    assert len(codes) >= 6
    selected = [r.category for r in sandbox.render_many(codes, seconds=1.0)]
    monkeypatch.setattr(sandbox, "folder_for", lambda code, csound, flags: str(folder))
    everything = [r.category for r in sandbox.render_many(codes, seconds=1.0)]
    assert selected == everything
    assert "ok" in selected or "clipping" in selected  # some of them really play


@pytest.mark.parametrize("csd", [
    "<CsoundSynthesizer>\n<CsInstruments>\nsr = 44100,\ninstr = 1;\n</CsoundSynthesizer>\n",
    "<CsoundSynthesizer>\n<CsOptions>\n-odac\n</CsoundSynthesizer>\n",
    "<CsoundSynthesizer>\n<CsScore>\n<CsInstruments>\n</CsScore>\n</CsoundSynthesizer>\n",
    # a looping model's answer: an unclosed <CsOptions> swallows the rest
    "<CsoundSynthesizer>\n<CsOptions>\n" + "<CsInstruments>\n" * 9
    + "</CsInstruments>\n<CsScore>\n</CsScore>\n</CsoundSynthesizer>\n",
])
def test_malformed_csd_sections_are_syntax_errors_not_compiled_code(csd):
    """Csound exits 1 without a parser message for these; they must not count as compiled."""
    for result in (sandbox.check(csd), sandbox.render(csd, seconds=1.0)):
        assert result.category == "syntax", (result.category, result.stderr[-300:])
        assert not result.ok


def test_csd_without_its_opening_tag_is_judged_as_csound_judges_it(tmp_path):
    """Csound itself runs a .csd whose <CsoundSynthesizer> line is missing but not one that is
    never closed; the sandbox must agree with it rather than call the first a syntax error."""
    import subprocess

    whole = csd(SINE)
    assert whole.startswith("<CsoundSynthesizer>\n")
    no_opener = whole.split("\n", 1)[1]
    no_closer = no_opener.replace("</CsoundSynthesizer>\n", "")
    for code, works in ((no_opener, True), (no_closer, False)):
        path = tmp_path / "piece.csd"
        path.write_text(code)
        real = subprocess.run(["csound", "-n", str(path)], capture_output=True, text=True)
        assert ("new alloc for instr 1" in real.stderr) is works, real.stderr[-300:]
        rendered = sandbox.render(code, seconds=1.0)
        assert (rendered.category == "ok") is works, (rendered.category, rendered.errors)
        assert sandbox.check(code).ok is works
