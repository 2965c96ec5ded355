"""Patches assembled from a source, envelope, filter and effect, judged by real Csound."""

import dataclasses
import re

from csound_assistant import sandbox
from csound_assistant.data import patches as P
from csound_assistant.data.rows import code_answers

BASE = P.Patch(P.SOURCES[2], P.ENVELOPES[0], P.FILTERS[0], P.CUTOFFS[0], P.EFFECTS[0], "hz",
               ("440",), "0.3")


def variants() -> dict[str, list[P.Patch]]:
    """Every part of every kind, each swapped into one base patch (filters with every cutoff)."""
    out = {}
    for s in P.SOURCES:
        out[f"source:{s.name}"] = [dataclasses.replace(BASE, source=s, filter=None, cutoff=None)]
    for e in P.ENVELOPES:
        out[f"envelope:{e.name}"] = [dataclasses.replace(BASE, envelope=e)]
    for f in P.FILTERS:
        out[f"filter:{f.name}"] = [dataclasses.replace(BASE, filter=f, cutoff=c) for c in P.CUTOFFS]
    for e in P.EFFECTS:
        out[f"effect:{e.name}"] = [dataclasses.replace(BASE, effect=e)]
    for k, (_, notes, _) in P.PITCHES.items():
        out[f"pitch:{k}"] = [dataclasses.replace(BASE, pitch=k, notes=tuple(notes[:3]))]
    return out


def test_every_part_plays_in_csound():
    parts = variants()
    flat = [(name, p) for name, ps in parts.items() for p in ps]
    results = sandbox.render_many([P.program(p) for _, p in flat], workers=2, seconds=1.0)
    playing = {name for (name, _), r in zip(flat, results) if r.category == "ok"}
    assert playing == set(parts), {n: [(r.category, r.errors[:1]) for (m, _), r in
                                       zip(flat, results) if m == n] for n in set(parts) - playing}
    # the filters with a fixed cutoff play in every case; a sweep may clip and is then dropped
    fixed = [r for (name, p), r in zip(flat, results) if name.startswith("filter:")
             and p.cutoff[2] == ()]
    assert all(r.category == "ok" for r in fixed)


def test_program_shape_names_and_score():
    p = dataclasses.replace(BASE, effect=next(e for e in P.EFFECTS if e.name == "freeverb"),
                            pitch="pch", notes=("8.00", "8.04"))
    code = P.program(p)
    body = code.split("instr 1\n")[1].split("endin")[0].splitlines()
    assert body[0] == "  ifreq = cpspch(p4)" and body[1].startswith("  kenv madsr ")
    assert "  asig vco2 0.3, ifreq" in body and "  aout = afilt * kenv" in body
    # a global reverb: the variable is declared, a second instrument reads it for the whole score
    assert "gaRev init 0" in code and "instr 99" in code and "i 99 0 4\n" in code
    assert re.findall(r"^i 1 .*$", code, re.M) == ["i 1 0 1 8.00", "i 1 1 1 8.04"]


def test_candidates_are_distinct_deterministic_and_rows_carry_their_code():
    a, b = P.candidates(300, seed=5), P.candidates(300, seed=5)
    assert a == b and len(a) == 300
    assert len({(p.name, p.cutoff, p.pitch, p.notes) for p in a}) == 300
    assert P.candidates(50, seed=6) != a[:50]
    kinds = {p.filter is None for p in a}, {p.effect.name == "none" for p in a}
    assert kinds == ({True, False}, {True, False})
    p = a[0]
    row = P.row(p, P.program(p), {"category": "ok"}, 5)
    (code,) = code_answers(row)
    assert code == P.program(p).rstrip("\n")
    assert row["meta"]["task"] == "patch" and row["meta"]["group"] == f"patch:{p.name}"
    assert all(op in code for op in row["meta"]["opcodes"])
    assert row == P.row(p, P.program(p), {"category": "ok"}, 5)  # the wording is seeded
    assert p.source.words.split(" (")[0] in row["instruction"]
