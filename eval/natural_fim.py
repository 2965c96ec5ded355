"""FIM items cut from the natural benchmark's references (issue 26's FIM table): the cursor
positions editors use, at code the model was never trained on.

Each reference of ``eval/natural/{dev,heldout}.jsonl`` gives one item, its cursor kind taken in
turn from ``CURSORS`` (the next one where the code has no such place): after an output variable,
inside an argument list, inside ``<CsScore>``, in a loose ``.udo``/``.orc`` file, at the end of
the file, and a whole line (the kind training always had, for comparison). The cuts are those of
the data build (``data/csdcode.py``), drawn with a seed per item, and an item is kept only if
prefix + reference middle + suffix plays in the sandbox. Written in the eval's task format
(kind ``fim``; the cursor kind is the id's first part), so ``eval run --tasks`` loads it:

    python -m csound_assistant.eval.natural_fim     # writes eval/natural/fim_{dev,heldout}.jsonl
    csound-assistant eval run MODEL --tasks eval/natural/fim_dev.jsonl --no-test --limit 0
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from csound_assistant import sandbox
from csound_assistant.data import csdcode

from .natural_split import DEV_PATH, HELDOUT_PATH, NATURAL_DIR, read_items

CURSORS = ("fim-opcode", "fim-argument", "fim-score", "fim-snippet", "fim-eof", "fim-line")
FIM_PATHS = {DEV_PATH: NATURAL_DIR / "fim_dev.jsonl",
             HELDOUT_PATH: NATURAL_DIR / "fim_heldout.jsonl"}


def cursor_of(item_id: str) -> str:
    """The cursor kind of an item written here ("fim-opcode-describe-fm-bass" -> "fim-opcode")."""
    return next((c for c in CURSORS if item_id.startswith(c + "-")), "fim")


def _rng(*key: str) -> random.Random:
    return random.Random(hashlib.sha256("\x00".join(key).encode()).hexdigest())


def cut(code: str, cursor: str, known: frozenset[str], rng: random.Random
        ) -> tuple[str, str, str] | None:
    """(prefix, middle, suffix) of ``code`` at a ``cursor`` position, or None."""
    sts = [st for block in csdcode.instruments(code) for st in csdcode.statements(code, known, block)]
    if cursor == "fim-opcode":
        outs = [st for st in sts if st.outputs]
        return csdcode.fim_opcode_split(code, rng.choice(outs)) if outs else None
    if cursor == "fim-argument":
        with_args = [st for st in sts if st.args]
        return csdcode.fim_argument_split(code, rng.choice(with_args), rng) if with_args else None
    if cursor == "fim-line":
        return csdcode.fim_line_split(code, rng.choice(sts), 1) if sts else None
    if cursor == "fim-score":
        return csdcode.fim_score_split(code, rng)
    if cursor == "fim-eof":
        return csdcode.fim_end_split(code, rng)
    blocks = csdcode.instruments(code)  # fim-snippet: the file's UDOs, else its first instrument
    found = csdcode.snippet(code, blocks[0] if blocks else None)
    if found is None:
        return None
    text = found[1]
    inner = csdcode.statements(text, known)
    if not inner:
        return None
    st = rng.choice(inner)
    return rng.choice([lambda: csdcode.fim_opcode_split(text, st),
                       lambda: csdcode.fim_line_split(text, st, 1),
                       lambda: csdcode.fim_argument_split(text, st, rng)])()


def fim_items(items: list[dict], known: frozenset[str], workers: int = 2) -> list[dict]:
    """One FIM task per item with a reference, each cut at the next cursor kind in turn whose
    cut plays; items whose every cut fails are left out."""
    proposals: list[list[dict]] = []
    for n, item in enumerate(sorted(items, key=lambda i: i["id"])):
        if not item.get("reference"):
            continue
        order = CURSORS[n % len(CURSORS):] + CURSORS[:n % len(CURSORS)]
        tries = []
        for cursor in order:
            parts = cut(item["reference"], cursor, known, _rng(item["id"], cursor))
            if not parts or not parts[1].strip():
                continue
            prefix, middle, suffix = parts
            tries.append({"id": f"{cursor}-{item['id']}", "kind": "fim", "prefix": prefix,
                          "suffix": suffix, "required_opcodes": [], "reference": middle,
                          "seconds": float(item.get("seconds", 2.0))})
        proposals.append(tries)
    chosen: dict[int, dict] = {}
    for rank in range(len(CURSORS)):  # the first cut of each item, then the next where it failed
        batch = [(n, tries[rank]) for n, tries in enumerate(proposals)
                 if n not in chosen and rank < len(tries)]
        plays = sandbox.render_many([t["prefix"] + t["reference"] + t["suffix"] for _, t in batch],
                                    workers=workers, seconds=2.0)
        chosen |= {n: t for (n, t), r in zip(batch, plays) if r.audible}
    return [chosen[n] for n in sorted(chosen)]


def write_all(workers: int = 2) -> dict[Path, int]:
    """Both FIM sets from both halves; returns how many items each got."""
    known = sandbox.installed_opcodes()
    if not known:
        raise SystemExit("Csound lists no opcodes here (`csound -z`): install Csound 6.18")
    written = {}
    for source, target in FIM_PATHS.items():
        rows = fim_items(read_items(source), known, workers)
        target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        written[target] = len(rows)
    return written


if __name__ == "__main__":
    for path, count in write_all(int(sys.argv[1]) if len(sys.argv) > 1 else 2).items():
        print(f"{path}: {count} FIM items")
