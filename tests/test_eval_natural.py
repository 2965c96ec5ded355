"""The hand-written natural-request benchmark (eval/natural/): it loads, its split is the one
fixed rule's, it owes nothing to the manual's example files, and every reference plays."""

from __future__ import annotations

import gzip
import re
from collections import Counter

import pytest

from csound_assistant import sandbox
from csound_assistant.eval import natural_split
from csound_assistant.eval.tasks import NATURAL_KINDS, load_tasks
from csound_assistant.extract import opcodes_present
from csound_assistant.manual import MANUAL_EXAMPLES as EXAMPLES

KINDS = {*NATURAL_KINDS, "fix"}
# lines that say nothing about who wrote a file: CSD tags, <CsOptions> flags, the orchestra
# header, and lone block ends ("endin", "e"); every short file ends "outs a1, a1 / endin / e"
FRAME = re.compile(r"^(<[^>]*>|-\S.*|(sr|kr|ksmps|nchnls|nchnls_i|0dbfs)\s*=.*"
                   r"|endin|endop|endif|else|e|s)$")
RUN = 4
FILE_NAME = re.compile(r'"[^"\n]*\.(wav|aiff?|flac|ogg|mp3|sf2|pvx|het|lpc|ats|txt|dat|csv'
                       r'|mid|midi|orc|sco|udo|inc|csd)"', re.IGNORECASE)
FILE_OPCODES = {"soundin", "diskin", "diskin2", "mp3in", "fin", "fink", "fini", "readk",
                "readk2", "readk3", "readk4", "readks", "readf", "readfi", "ftload", "ftloadk",
                "sfload", "fluidLoad", "pvsfread", "lpread", "loscil", "loscil3", "filelen",
                "filesr", "filenchnls", "#include"}


@pytest.fixture(scope="module")
def halves():
    return {"dev": natural_split.read_items(natural_split.DEV_PATH),
            "heldout": natural_split.read_items(natural_split.HELDOUT_PATH)}


@pytest.fixture(scope="module")
def rows(halves):
    return halves["dev"] + halves["heldout"]


def test_every_item_loads_through_the_task_loader(halves):
    for path in (natural_split.DEV_PATH, natural_split.HELDOUT_PATH):
        items = load_tasks(path)
        assert items and {item.kind for item in items} == KINDS, path.name
        assert all(item.reference and item.messages for item in items), path.name
    assert len(halves["dev"]) + len(halves["heldout"]) >= 120


def test_ids_are_unique_and_the_halves_split_the_whole(halves, rows):
    dev, heldout = ({row["id"] for row in halves[h]} for h in ("dev", "heldout"))
    assert len({row["id"] for row in rows}) == len(rows)
    assert not dev & heldout
    assert dev | heldout == {row["id"] for row in rows}


def test_the_halves_are_the_fixed_seeded_split(halves, rows):
    # any item moved by hand from one half to the other (choosing on held-out items) fails here
    dev, heldout = natural_split.split(list(reversed(rows)))
    assert [r["id"] for r in dev] == [r["id"] for r in halves["dev"]]
    assert [r["id"] for r in heldout] == [r["id"] for r in halves["heldout"]]
    per_half = {h: Counter(r["kind"] for r in halves[h]) for h in halves}
    for kind in KINDS:
        assert 0 <= per_half["heldout"][kind] - per_half["dev"][kind] <= 1, kind


def _runs(text: str) -> set[tuple[str, ...]]:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    lines = [line for line in lines if line and not FRAME.match(line)]
    return {tuple(lines[i:i + RUN]) for i in range(len(lines) - RUN + 1)}


def _manual_examples() -> list[str]:
    texts = []
    for path in sorted(EXAMPLES.iterdir()):
        if path.name.endswith(".csd"):
            texts.append(path.read_text(errors="replace"))
        elif path.name.endswith(".csd.gz"):
            texts.append(gzip.decompress(path.read_bytes()).decode(errors="replace"))
    return texts


def test_no_item_shares_four_lines_with_a_manual_example(rows):
    """No prompt, reference or broken file has 4 consecutive lines (whitespace collapsed;
    blank and frame lines skipped) equal to 4 consecutive lines of any example CSD."""
    if not EXAMPLES.is_dir():
        pytest.skip(f"the Csound manual's examples are not installed ({EXAMPLES})")
    examples = _manual_examples()
    assert len(examples) > 1000, "fewer example files than the manual ships: check EXAMPLES"
    manual = set().union(*map(_runs, examples))
    shared = [(row["id"], field, run) for row in rows
              for field in ("prompt", "reference", "broken") if field in row
              for run in _runs(row[field]) & manual]
    assert not shared, shared[:5]


def test_the_overlap_check_finds_a_copied_example():
    if not EXAMPLES.is_dir():
        pytest.skip(f"the Csound manual's examples are not installed ({EXAMPLES})")
    example = (EXAMPLES / "moogladder.csd").read_text()
    assert _runs(example)
    assert _runs("a request that pastes\n\n" + example) & _runs(example)


def test_no_reference_reads_a_file(rows):
    for row in rows:
        code = row["reference"]
        assert not FILE_NAME.search(code), f"{row['id']}: names a file"
        words = set(re.findall(r"#?\w+", code))
        assert not words & FILE_OPCODES, f"{row['id']}: reads a file with {words & FILE_OPCODES}"


def test_references_use_the_opcodes_their_requests_name(rows):
    for row in rows:
        assert all(opcodes_present(row["reference"], row["required_opcodes"])), row["id"]
        if row["kind"] in ("opcode", "explain"):
            assert row["required_opcodes"], f"{row['id']} names an opcode but requires none"
        if row["kind"] == "describe":
            assert not row["required_opcodes"], f"{row['id']} names no opcode"


def test_fix_requests_paste_code_that_fails_with_its_error(rows):
    fixes = [row for row in rows if row["kind"] == "fix"]
    assert fixes
    for row, result in zip(fixes, sandbox.check_many([r["broken"] for r in fixes], workers=2)):
        assert row["broken"].rstrip() in row["prompt"], row["id"]
        if result.ok:  # an init error: only a render shows it
            result = sandbox.render(row["broken"], seconds=row.get("seconds", 2.0))
            assert not result.audible, f"{row['id']}: the broken file plays"
            assert "INIT ERROR" in row["prompt"] or "undefined" in row["prompt"], row["id"]
        else:
            assert "error" in row["prompt"].lower() or "sread" in row["prompt"], row["id"]


def test_every_reference_plays_without_input_files(rows):
    # no assets: a reference that needed fox.wav would fail here (issue 24, item 3)
    codes = [row["reference"] for row in rows]
    results = sandbox.render_many(codes, workers=2, seconds=4.0)
    for row, result in zip(rows, results):
        assert result.audible, f"{row['id']}: {result.category} {result.errors[:2]}"
        assert 0 < result.peak <= 1.0, f"{row['id']}: peak {result.peak}"
