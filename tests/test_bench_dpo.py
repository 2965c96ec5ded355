"""bench/dpo.py: preference pairs from the sandbox's verdicts, one per train prompt that has
both a kept answer and a failed one."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("dpo", ROOT / "bench" / "dpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _item(ident, prefix=None):
    return {"id": ident, "kind": "fim:fim-line" if prefix else "write", "prefix": prefix,
            "suffix": "" if prefix else None, "messages": [{"role": "user", "content": "x"}],
            "budget": 64}


def _verdict(ident, answer, sound, compiled=True, coverage=1.0):
    return {"key": ident, "id": ident, "kind": "write", "answer": answer, "sound": sound,
            "compiled": compiled, "coverage": coverage, "category": "ok" if sound else "x"}


def test_pairs_take_a_kept_answer_against_one_that_did_not_compile(tmp_path):
    items = [_item("a"), _item("b"), _item("c"), _item("f", prefix="instr 1\n")]
    verdicts = [
        _verdict("a", "plays", True), _verdict("a", "silent", False),
        _verdict("a", "broken", False, compiled=False),
        _verdict("b", "plays", True), _verdict("b", "plays too", True),  # nothing failed
        _verdict("c", "no opcode", True, coverage=0.5),  # plays, but not what was asked
        _verdict("c", "silent", False),
        _verdict("f", "a1 oscili 1, 440\n", True), _verdict("f", "a1 = \n", False, False),
        _verdict("zzz", "not an item", True), _verdict("zzz", "x", False),
    ]
    (tmp_path / "items.json").write_text(json.dumps(items))
    (tmp_path / "v.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts))
    pairs = _module().make_pairs([str(tmp_path / "v.jsonl")], [str(tmp_path / "items.json")],
                                 10, seed=0)
    got = {p["item"]["id"]: (p["chosen"], p["rejected"]) for p in pairs}
    assert got == {"a": ("plays", "broken"), "f": ("a1 oscili 1, 440\n", "a1 = \n")}
    long_first = _module().make_pairs([str(tmp_path / "v.jsonl")],
                                      [str(tmp_path / "items.json")], 1, seed=0)
    assert [p["item"]["id"] for p in long_first] == ["a"]
