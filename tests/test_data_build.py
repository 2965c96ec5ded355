"""``data build`` on a handful of real manual examples, checked by real Csound in the sandbox."""

import json
import re

import pytest

from csound_assistant.artifacts import read_record
from csound_assistant.data.build import build_dataset
from csound_assistant.data.rows import code_answers
from csound_assistant.data.split import split_dataset
from csound_assistant.data.validate import validate_file
from csound_assistant.errors import DataError
from csound_assistant.manual import DEFAULT_MANUAL_DIR as MANUAL

# a few ordinary examples, plus ones that must be dropped or flagged for a known reason
EXAMPLES = ["moogladder", "foscili", "oscili", "vco2", "pluck", "reverb", "butterlp", "expseg",
            "adsr", "printk", "diskin2", "ATSaddnz", "scans"]


@pytest.fixture(scope="module")
def mini_manual(tmp_path_factory):
    """The real manual's pages with only a few examples (symlinks: nothing is copied)."""
    from pathlib import Path

    src = Path(MANUAL)
    root = tmp_path_factory.mktemp("manual")
    for page in src.glob("*.html"):
        (root / page.name).symlink_to(page)
    (root / "examples").mkdir()
    for asset in (src / "examples").iterdir():  # sound and table files the examples read
        if not asset.name.endswith((".csd", ".csd.gz")):
            (root / "examples" / asset.name).symlink_to(asset)
    for name in EXAMPLES:
        path = src / "examples" / f"{name}.csd"
        if not path.exists():
            path = src / "examples" / f"{name}.csd.gz"
        (root / "examples" / path.name).symlink_to(path)
    return root


@pytest.fixture(scope="module")
def built(mini_manual, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "data"
    cache = tmp_path_factory.mktemp("cache")
    record = build_dataset(out, manual_dir=mini_manual, workers=2, cache_dir=cache,
                           patch_count=40, log=lambda m: None)
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    return out, cache, record, rows


def test_rows_validate_and_carry_provenance(built):
    out, _, record, rows = built
    assert record["rows"] == len(rows) > 40
    report = validate_file(out / "rows.jsonl")
    assert set(report.kinds) == {"instruction", "chat", "completion", "fim"} or \
        {"instruction", "completion", "fim"} <= set(report.kinds)
    for row in rows:
        meta = row["meta"]
        assert meta["group"] and meta["task"] and meta["category"]
        assert meta["source"].startswith("examples/") or meta["source"].endswith(".html") or \
            (meta["task"], meta["source"]) == ("patch", "data/patches.py")
    groups = {row["meta"]["group"] for row in rows if row["meta"]["task"] == "write"}
    assert {"moogladder", "foscili"} <= groups
    assert any(r["meta"]["opcode"] == "moogladder" and r["meta"]["task"] == "write" for r in rows)


def test_drops_are_counted_by_reason(built):
    _, _, record, rows = built
    counts = record["counts"]
    assert counts["example_render"]["refused"] >= 1  # ATSaddnz runs `system_i`: never run
    assert counts["example_dropped"]["refused"] >= 1
    assert sum(counts["example_dropped"].values()) >= 2  # scans: not in Debian's build
    assert "ATSaddnz" not in {r["meta"]["group"] for r in rows}
    flagged = {r["meta"]["group"]: r["meta"]["render"] for r in rows if r["meta"].get("render")}
    assert flagged["diskin2"]["category"] == "ok"  # fox.wav is staged from the manual
    write = next(r for r in rows if r["meta"]["group"] == "diskin2" and r["meta"]["task"] == "write")
    assert "`beats.wav`" in write["output"]
    assert flagged["printk"]["silent"] is True
    assert flagged["moogladder"]["category"] in ("ok", "clipping")


def test_every_code_answer_compiles_in_the_sandbox(built):
    from csound_assistant import sandbox

    _, _, record, rows = built
    codes = list(dict.fromkeys(code for row in rows for code in code_answers(row)))
    assert record["code_answers_checked"] >= len(codes) > 20
    results = sandbox.check_many(codes, workers=2)
    failing = [(r.category, c[:80]) for r, c in zip(results, codes) if not r.ok]
    assert not failing
    for row in rows:
        if "middle" in row:
            assert row["middle"].strip() and row["prefix"] and row["suffix"]


def test_fix_rows_break_for_real_and_the_fix_compiles(built):
    from csound_assistant import sandbox

    _, _, record, rows = built
    fixes = [r for r in rows if r["meta"]["task"].startswith("fix-")]
    assert len({r["meta"]["bug"] for r in fixes}) >= 4
    broken = [re.search(r"```csound\n(.*?)\n```", r["input"], re.S).group(1) for r in fixes]
    fixed = [code_answers(r)[0] for r in fixes]
    for row, b, f, rb, rf in zip(fixes, broken, fixed, sandbox.check_many(broken, workers=2),
                                 sandbox.check_many(fixed, workers=2)):
        assert not rb.ok, row["meta"]
        assert rf.ok, row["meta"]
        assert row["meta"]["error"] and row["meta"]["error"] in row["input"]
    assert sum(record["counts"]["fix_verified"].values()) == len(fixes)


def test_rebuild_uses_the_cache_and_refuses_to_overwrite(built, mini_manual, tmp_path):
    out, cache, record, rows = built
    with pytest.raises(DataError, match="--force"):
        build_dataset(out, manual_dir=mini_manual, cache_dir=cache, log=lambda m: None)
    again = build_dataset(tmp_path / "again", manual_dir=mini_manual, cache_dir=cache,
                          patch_count=40, log=lambda m: None)
    assert again["cache"]["misses"] == 0
    assert (tmp_path / "again" / "rows.jsonl").read_text() == (out / "rows.jsonl").read_text()
    assert read_record(out)["eval_opcodes"]


def test_split_of_built_rows_has_no_leakage(built, tmp_path):
    out, _, _, _ = built
    split_dataset(out / "rows.jsonl", tmp_path / "splits", seed=0, ratios=(0.6, 0.2, 0.2))
    group_sets = []
    for name in ("train", "validation", "test"):
        lines = (tmp_path / "splits" / f"{name}.jsonl").read_text().splitlines()
        group_sets.append({json.loads(line)["meta"]["group"] for line in lines})
    assert all(group_sets)
    assert not (group_sets[0] & group_sets[2]) and not (group_sets[0] & group_sets[1])
    assert not (group_sets[1] & group_sets[2])


@pytest.mark.slow
def test_full_build_from_the_installed_manual(tmp_path):
    record = build_dataset(tmp_path / "data", workers=2, cache_dir=tmp_path / "cache",
                           log=lambda m: None)
    assert record["rows_with_code"] >= 2000
    assert sum(record["counts"]["fix_verified"].values()) >= 200
    assert record["rows_by_task"]["fim-line"] >= 200
    validate_file(tmp_path / "data" / "rows.jsonl")


def test_cli_build_with_limit_then_stats(mini_manual, built, tmp_path):
    from click.testing import CliRunner

    from csound_assistant.data.cli import cli

    _, cache, _, _ = built
    result = CliRunner().invoke(cli, ["build", "--manual-dir", str(mini_manual), "--limit", "3",
                                      "--out", str(tmp_path / "data"), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert "rows by task:" in result.output and "wall" in result.output
    record = read_record(tmp_path / "data")
    assert record["examples"]["total"] == 3 and record["limit"] == 3
    result = CliRunner().invoke(cli, ["stats", str(tmp_path / "data" / "rows.jsonl"),
                                      "--manual-dir", str(mini_manual)])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "data" / "stats" / "stats.json").read_text())
    assert stats["rows"] == record["rows"]
    assert 0 < stats["opcode_coverage"]["covered"] < stats["opcode_coverage"]["known"]


HOSTILE_TO_TIDY = '''<CsoundSynthesizer>
<CsOptions>
; Select audio/midi flags here according to platform
-odac     ;;;realtime audio out
;-iadc    ;;;uncomment -iadc if realtime audio input is needed too
</CsOptions>
<CsInstruments>

sr = 44100   ; rate
ksmps = 32
/* a block comment
   over two lines */
nchnls = 2
0dbfs = 1


instr 1   // the only one
  prints "a;b // not a comment\\n"
  asig oscili 0.3, 440   ; sine
  outs asig, asig
endin

</CsInstruments>
<CsScore>
i 1 0 1 ; one note
</CsScore>
</CsoundSynthesizer>
'''


def test_tidy_keeps_flags_code_and_strings_and_drops_boilerplate():
    from csound_assistant.data.csdcode import tidy_csd

    tidy = tidy_csd(HOSTILE_TO_TIDY)
    assert "<CsOptions>\n-odac     ;;;realtime audio out\n</CsOptions>" not in tidy
    assert "<CsOptions>\n-odac\n</CsOptions>" in tidy  # only the flags are left
    assert "Select audio/midi" not in tidy and "; rate" in tidy  # comments elsewhere stay
    assert "\n\n\n" not in tidy
    stripped = tidy_csd(HOSTILE_TO_TIDY, strip_comments=True)
    for gone in ("; rate", "block comment", "over two lines", "// the only one", "; sine",
                 "; one note"):
        assert gone not in stripped
    assert 'prints "a;b // not a comment\\n"' in stripped  # comment marks inside a string stay
    assert "instr 1\n" in stripped and "asig oscili 0.3, 440\n" in stripped
    assert len(stripped) < 0.6 * len(HOSTILE_TO_TIDY)


def test_stripped_examples_still_compile_and_sound(mini_manual):
    from csound_assistant import sandbox
    from csound_assistant.data.examples import load_manual

    manual = load_manual(mini_manual, strip_comments=True)
    codes = [manual.examples[name].code for name in ("moogladder", "foscili", "pluck", "reverb")]
    assert all(";" not in code for code in codes)
    results = sandbox.render_many(codes, workers=2, seconds=1.0)
    assert all(r.audible for r in results), [(r.category, r.errors) for r in results]


def test_patches_that_play_become_rows(built):
    _, _, record, rows = built
    patch_rows = [r for r in rows if r["meta"]["task"] == "patch"]
    renders = record["counts"]["patch_render"]
    assert sum(renders.values()) == 40 and renders["ok"] == len(patch_rows) >= 30
    for row in patch_rows:
        (code,) = code_answers(row)
        assert row["meta"]["render"]["category"] == "ok" and "instr 1\n  ifreq = " in code


def test_minimal_programs_play_and_share_their_opcodes_split_group(built):
    _, _, record, rows = built
    syntax = {r["meta"]["opcode"]: r["meta"]["group"] for r in rows
              if r["meta"]["task"] == "syntax"}
    mins = [r for r in rows if r["meta"]["task"] == "minimal"]
    assert len(mins) >= 100 and record["counts"]["minimal_render"]["ok"] == len(mins)
    for row in mins:
        (code,) = code_answers(row)
        assert re.search(rf"^  \w+(, \w+)? {re.escape(row['meta']['opcode'])}\b", code, re.M)
        assert row["meta"]["render"]["category"] == "ok"
        assert row["meta"]["group"] == syntax.get(row["meta"]["opcode"], row["meta"]["group"])
    moog = next(r for r in mins if r["meta"]["opcode"] == "moogladder")
    assert moog["meta"]["group"] == "moogladder"  # with the example: held out together


def test_fim_cuts_add_training_rows_at_other_statements():
    """More FIM cuts keep the first cut's rows as they were (the held-out splits and the
    shipped starter's row hashes depend on them) and add rows at other places in the file."""
    from pathlib import Path

    from csound_assistant.data.examples import Example
    from csound_assistant.data.rows import fim_rows

    code = ("<CsoundSynthesizer>\n<CsInstruments>\nsr = 44100\nksmps = 32\nnchnls = 2\n"
            "0dbfs = 1\n\ninstr 1\nkenv linseg 0, 0.1, 1, p3 - 0.2, 1, 0.1, 0\n"
            "kcf expseg 4000, p3, 200\nasig vco2 0.3, p4\nafil moogladder asig, kcf, 0.5\n"
            "aout = afil * kenv\nouts aout, aout\nendin\n</CsInstruments>\n<CsScore>\n"
            "i 1 0 2 220\n</CsScore>\n</CsoundSynthesizer>\n")
    known = {"linseg", "expseg", "vco2", "moogladder", "outs"}
    ex = Example("moogladder-x", Path("moogladder-x.csd"), code, opcode="moogladder",
                 category="Filters", opcodes=sorted(known))
    one, five = fim_rows(ex, known), fim_rows(ex, known, 5)
    assert {r["meta"]["task"] for r in one} == {"fim-line", "fim-expression"}
    assert five[:len(one)] == one and "cut" not in one[0]["meta"]
    extra = five[len(one):]
    assert extra and all(1 <= r["meta"]["cut"] <= 4 for r in extra)
    assert all(r["prefix"] + r["middle"] + r["suffix"] == code for r in five)
    places = [(r["meta"]["task"], len(r["prefix"]), r["middle"]) for r in five]
    assert len(places) == len(set(places))  # every row asks for another middle
    assert len({p[1] for p in places if p[0] == "fim-line"}) >= 2
