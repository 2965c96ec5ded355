"""Answers that make their own sound (issue 24, item 3): ``data/self_source.py`` turns an example
that reads ``fox.wav`` into one that synthesizes its source, ``data build`` uses it in place of
the original, and verification never counts an answer that reads a missing file as playing.
Real Csound in the sandbox throughout, rendered without the manual's sound files (as a user
has none)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from csound_assistant import sandbox
from csound_assistant.data import self_source
from csound_assistant.data.build import build_dataset
from csound_assistant.data.examples import read_csd
from csound_assistant.data.rows import code_answers
from csound_assistant.manual import DEFAULT_MANUAL_DIR as MANUAL
from csound_assistant.runtime.server import create_app
from csound_assistant.runtime.settings import Settings

from runtime_helpers import FakeBackend

HEAD = """<CsoundSynthesizer>
<CsInstruments>
sr = 44100
ksmps = 32
nchnls = 2
0dbfs = 1
"""
FOX = HEAD + """instr 1
  Sfile = "fox.wav"
  asig diskin2 Sfile, 1     ; "fox.wav" is a man's voice
  afilt moogladder asig, 1500, 0.4
  outs afilt, afilt
endin
</CsInstruments>
<CsScore>
i 1 0 1
</CsScore>
</CsoundSynthesizer>
"""


def test_a_file_read_becomes_a_source_with_the_same_outputs():
    code = FOX.replace('  Sfile = "fox.wav"\n', "").replace(
        'asig diskin2 Sfile, 1     ; "fox.wav" is a man\'s voice', 'aL, aR soundin "beats.wav"')
    found = self_source.variant(code)
    assert "beats.wav" not in found.code and not self_source.reads_file(found.code)
    assert "  kBurst lfo 1, 4, 5\n  aL noise 0.3*kBurst, 0\n  aR = aL\n" in found.code
    assert found.replaced == {"soundin": 1}
    assert found.description == {"replaces": ["beats.wav"], "with": "noise bursts, four a second"}
    # the string variable that only named the file goes, and so does the comment naming it
    found = self_source.variant(FOX)
    assert "Sfile" not in found.code and "fox.wav" not in found.code
    assert "  asig vco2 0.3, 220\n  afilt moogladder" in found.code
    # an orchestra at Csound's default 0dbfs (32768) gets a source at the same level
    assert "asig vco2 9830, 220" in self_source.variant(FOX.replace("0dbfs = 1\n", "")).code


def test_gen01_tables_become_tables_of_generated_sound():
    code = HEAD + """gitab ftgen 0, 0, 0, -1, "drumsMlp.wav", 0, 0, 0
instr 1
  ilen = nsamp(1)
  asig loscil 0.5, 1, 1, 1
  outs asig, asig
endin
</CsInstruments>
<CsScore>
f 1 0 0 1 "fox.wav" 0 0 0
f 2 0 65536 1 "marimba.aif" 0 0 0
f 3 0 256 1 "fwavblnk.aiff" 0 0 0
i 1 0 1
</CsScore>
</CsoundSynthesizer>
"""
    found = self_source.variant(code)
    assert "gitab ftgen 0, 0, 131072, -21, 3, 0.5" in found.code  # drums: noise
    # a deferred size (0) gets 2^17 samples; partial 654 of them sounds at 220 Hz at 44.1 kHz
    assert "f 1 0 131072 -9 654 0.24 0 1308 0.12 0 1962 0.08 0 2616 0.06 0" in found.code
    assert "f 2 0 65536 -9 327 0.3 0 654 0.12 0 981 0.06 0" in found.code  # a plucked sound
    assert "ftlen(1)" in found.code and "nsamp" not in found.code
    assert "f 3 0 256 -9 1 0.24 0 2 0.12 0 3 0.08 0 4 0.06 0" in found.code  # a waveform
    assert found.replaced == {"GEN01": 4}
    assert found.description["with"] == ("a table of noise and a table holding a 220 Hz tone "
                                         "and a table holding one cycle of a wave")
    # GEN -1 keeps the file's samples in the orchestra's 0dbfs (32768 by default); GEN 1
    # normalises them: the generated tables follow, and a quieter try scales both
    quiet = self_source.variant(code.replace("0dbfs = 1\n", ""), scale=0.25).code
    assert "gitab ftgen 0, 0, 131072, -21, 3, 4096" in quiet
    assert "f 1 0 131072 -9 654 0.06 0 1308 0.03 0 1962 0.02 0 2616 0.015 0" in quiet


def test_a_file_name_from_the_score_goes_with_the_read():
    code = FOX.replace('  Sfile = "fox.wav"\n', "").replace("diskin2 Sfile, 1", "diskin2 p4, 1") \
        .replace("i 1 0 1", 'i 1 0 1 "fox.wav"\ni 1 1 1 "beats.wav"\ni 2 0 1 5')
    found = self_source.variant(code)
    assert "i 1 0 1\ni 1 1 1\ni 2 0 1 5\n" in found.code and "asig vco2 0.3, 220" in found.code
    assert found.files == ["fox.wav", "beats.wav"]
    with pytest.raises(self_source.NotConverted) as caught:  # p4 is read again: it must stay
        self_source.variant(code.replace("  outs afilt", "  prints p4\n  outs afilt"))
    assert caught.value.reason == "file-name-from-the-score-still-used"


@pytest.mark.parametrize("code, reason", [
    (FOX.replace('Sfile = "fox.wav"', 'Sfile sprintf "fox%d.wav", 1'), "file-name-not-replaced"),
    (FOX.replace('"fox.wav"', '"fox.pvx"'), "reads-an-analysis-or-data-file"),
    (FOX.replace('Sfile = "fox.wav"', "").replace("diskin2 Sfile, 1", "vco2 0.3, 220"),
     "reads-no-file"),
])
def test_what_cannot_be_replaced_says_why(code, reason):
    with pytest.raises(self_source.NotConverted) as caught:
        self_source.variant(code)
    assert caught.value.reason == reason


def test_a_request_about_the_reader_itself_asks_for_the_file():
    known = {"diskin2", "vco2", "pvsanal", "ftchnls"}
    assert self_source.asks_for_file("diskin2", "Reads audio data from a file", ["vco2"], known)
    assert self_source.asks_for_file("GEN01", "Transfers data from a soundfile into a function "
                                     "table.", [], known)
    assert not self_source.asks_for_file("pvsanal", "Generate an fsig from a mono audio source "
                                         "ain, using phase vocoder overlap-add analysis.",
                                         ["vco2", "pvsanal"], known)


@pytest.mark.parametrize("name", ["pvsanal", "flooper2", "dam", "PartikkelExample1"])
def test_manual_examples_play_without_their_sound_file(name, csound_examples):
    path = next(csound_examples.glob(f"{name}.csd*"))
    original = read_csd(path)
    assert sandbox.render(original, seconds=1).category == "needs-input-file"
    found = self_source.variant(original)
    result = sandbox.render(found.code, seconds=1)  # no assets: nothing to read
    assert result.category == "ok" and result.audible, result.errors


# --- data build ---------------------------------------------------------------------------------

EXAMPLES = ["pvsanal", "flooper2", "diskin2", "moogladder"]


@pytest.fixture(scope="module")
def mini_manual(tmp_path_factory) -> Path:
    """The real manual's pages with four examples and every sound file (symlinks)."""
    src = Path(MANUAL)
    root = tmp_path_factory.mktemp("manual")
    for page in src.glob("*.html"):
        (root / page.name).symlink_to(page)
    (root / "examples").mkdir()
    for path in (src / "examples").iterdir():
        stem = path.name.removesuffix(".gz").removesuffix(".csd")
        if not path.name.endswith((".csd", ".csd.gz")) or stem in EXAMPLES:
            (root / "examples" / path.name).symlink_to(path)
    return root


def _build(manual: Path, out: Path, cache: Path, **kw) -> tuple[dict, list[dict]]:
    record = build_dataset(out, manual_dir=manual, limit=len(EXAMPLES), cache_dir=cache,
                           patch_count=0, log=lambda m: None, **kw)
    return record, [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def builds(mini_manual, cache, tmp_path_factory):
    on = _build(mini_manual, tmp_path_factory.mktemp("on") / "data", cache)
    off = _build(mini_manual, tmp_path_factory.mktemp("off") / "data", cache, self_source=False)
    return on, off


def _by_group(rows, group):
    """The rows made from one manual example (not its page's syntax or minimal rows)."""
    return [r for r in rows if r["meta"]["group"] == group
            and r["meta"]["source"].startswith("examples/")]


def test_build_answers_with_the_variant_where_the_original_reads_a_file(builds):
    (record, rows), _ = builds
    assert record["self_source"] is True
    assert record["counts"]["self_source"]["replaced"] == 2  # pvsanal, flooper2
    assert record["counts"]["self_source"]["original-kept:asks-for-a-file"] == 1  # diskin2
    for group in ("pvsanal", "flooper2"):
        made = _by_group(rows, group)
        assert {"write", "complete", "fim-line"} <= {r["meta"]["task"] for r in made}
        for row in made:
            assert row["meta"]["self_source"]["replaces"] == ["fox.wav"]
            for code in code_answers(row):
                assert not re.search(r"fox\.wav", code)
        write = next(r for r in made if r["meta"]["task"] == "write")
        assert "Instead of reading `fox.wav`, it makes its own source" in write["output"]
        # what the build verified: it plays here with no sound file staged
        code = code_answers(write)[0]
        assert sandbox.render(code, seconds=1).audible
    # a request about diskin2 asks for a file: the original, which names it, stays
    diskin2 = next(r for r in _by_group(rows, "diskin2") if r["meta"]["task"] == "write")
    assert "beats.wav" in diskin2["output"] and "self_source" not in diskin2["meta"]
    assert all("self_source" not in r["meta"] for r in _by_group(rows, "moogladder"))


def test_build_keeps_the_originals_when_turned_off(builds):
    (on_record, on_rows), (record, rows) = builds
    assert record["self_source"] is False and "self_source" not in record["counts"]
    write = next(r for r in _by_group(rows, "pvsanal") if r["meta"]["task"] == "write")
    assert "fox.wav" in code_answers(write)[0]
    assert len(rows) == len(on_rows)  # the same row kinds, one answer in place of another


def test_data_build_no_self_source_flag(builds, mini_manual, cache, tmp_path):
    from click.testing import CliRunner

    from csound_assistant.cli import main

    out = tmp_path / "data"
    args = ["data", "build", "--manual-dir", str(mini_manual), "--limit", str(len(EXAMPLES)),
            "--patches", "0", "--cache-dir", str(cache), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--no-self-source"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "record.json").read_text())["self_source"] is False
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == len(builds[1][1])  # what build_dataset(self_source=False) made
    result = CliRunner().invoke(main, [*args, "--force"])
    assert result.exit_code == 0 and "self_source: " in result.output  # on by default
    assert json.loads((out / "record.json").read_text())["self_source"] is True


# --- verification: serve --verify and the eval's score ------------------------------------------

class ScriptedBackend(FakeBackend):
    """Answers the scripted replies in the order generations start."""

    def __init__(self, *replies):
        super().__init__(n_ctx=4096)
        self.replies = list(replies)

    def generate(self, tokens, sampling):
        self.reply = self.replies.pop(0)
        return super().generate(tokens, sampling)


def _answer(code: str) -> str:
    return f"Here it is.\n\n```csound\n{code}```"


CHAT = {"messages": [{"role": "user", "content": "Filter a voice through a Moog ladder."}],
        "max_tokens": 800, "temperature": 0}


def test_serve_verify_never_counts_an_answer_reading_a_missing_file_as_playing():
    variant = self_source.variant(FOX).code
    app = create_app(Settings(prompt_format=None, verify=2),
                     ScriptedBackend(_answer(FOX), _answer(variant)))
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert r.json()["choices"][0]["message"]["content"] == _answer(variant)
    assert r.headers["x-csound-verified"] == "candidate-2"
    app = create_app(Settings(prompt_format=None, verify=2),
                     ScriptedBackend(_answer(FOX), _answer(FOX)))
    with TestClient(app) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
    assert (r.headers["x-csound-verified"], r.headers["x-csound-verdict"]) == \
        ("unverified", "needs-input-file")


def test_the_eval_scores_the_variant_as_playing():
    from csound_assistant.eval.runner import score_answer
    from csound_assistant.eval.tasks import Item

    item = Item(id="fox", kind="write", source="test", messages=CHAT["messages"])
    assert score_answer(item, _answer(self_source.variant(FOX).code))["sound"] is True


def test_the_eval_never_counts_an_answer_reading_a_missing_file_as_playing():
    from csound_assistant.eval.runner import score_answer
    from csound_assistant.eval.tasks import Item

    item = Item(id="fox", kind="write", source="test", messages=CHAT["messages"])
    assert score_answer(item, _answer(FOX))["sound"] is False
