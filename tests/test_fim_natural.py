"""The FIM benchmark cut from the natural requests' references (eval/natural/fim_*.jsonl): it
loads as eval tasks, covers every cursor kind, is what eval/natural_fim.py cuts, and plays."""

from __future__ import annotations

import collections

import pytest

from csound_assistant import sandbox
from csound_assistant.eval import natural_fim, natural_split
from csound_assistant.eval.tasks import load_tasks


@pytest.fixture(scope="module")
def sets():
    return {source: load_tasks(target) for source, target in natural_fim.FIM_PATHS.items()}


def test_both_sets_load_as_fim_tasks_with_every_cursor_kind(sets):
    heldout = sets[natural_split.HELDOUT_PATH]
    assert len(heldout) >= 60 and len(sets[natural_split.DEV_PATH]) >= 60
    for items in sets.values():
        assert all(item.is_fim and item.reference.strip() for item in items)
        kinds = collections.Counter(natural_fim.cursor_of(item.id) for item in items)
        assert set(kinds) == set(natural_fim.CURSORS) and min(kinds.values()) >= 8
    assert all(not i.suffix for i in heldout if natural_fim.cursor_of(i.id) == "fim-eof")
    snippets = [i for i in heldout if natural_fim.cursor_of(i.id) == "fim-snippet"]
    assert snippets and not any("<CsoundSynthesizer>" in i.prefix + i.suffix for i in snippets)


def test_the_files_are_what_the_cuts_give(sets):
    known = sandbox.installed_opcodes()
    for source, items in sets.items():
        references = {raw["id"]: raw["reference"] for raw in natural_split.read_items(source)}
        for item in items:
            cursor = natural_fim.cursor_of(item.id)
            original = references[item.id.removeprefix(cursor + "-")]
            parts = natural_fim.cut(original, cursor, known, natural_fim._rng(
                item.id.removeprefix(cursor + "-"), cursor))
            assert parts == (item.prefix, item.reference, item.suffix), item.id


def test_every_heldout_reference_middle_plays(sets):
    items = sets[natural_split.HELDOUT_PATH]
    results = sandbox.render_many([i.prefix + i.reference + i.suffix for i in items], workers=2,
                                  seconds=2.0)
    assert [i.id for i, r in zip(items, results) if not r.audible] == []
