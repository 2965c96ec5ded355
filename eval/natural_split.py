"""The hand-written natural-request benchmark (``eval/natural/``) and its one fixed split.

Requests are written the way people ask (describe a sound, name an opcode, paste broken code
with Csound's error, ask what an opcode does), each with a reference answer that plays. The
items were split once into a dev half, for choosing recipes, settings and adapters, and a
held-out half, reported once and never used to choose:

    csound-assistant eval run MODEL --tasks eval/natural/dev.jsonl --no-test --limit 0
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NATURAL_DIR = Path(__file__).with_name("natural")
DEV_PATH = NATURAL_DIR / "dev.jsonl"
HELDOUT_PATH = NATURAL_DIR / "heldout.jsonl"
SEED = 24  # issue 24 asked for the benchmark; fixed so the split is reproducible


def split(items: list[dict], seed: int = SEED) -> tuple[list[dict], list[dict]]:
    """(dev, held-out): within each kind, items sorted by id and shuffled with ``seed``; the
    first half (rounded down) goes to dev. The input order does not matter."""
    rng = random.Random(seed)
    dev, heldout = [], []
    for kind in sorted({item["kind"] for item in items}):
        group = sorted((item for item in items if item["kind"] == kind), key=lambda i: i["id"])
        rng.shuffle(group)
        dev += group[:len(group) // 2]
        heldout += group[len(group) // 2:]
    return dev, heldout


def read_items(path: str | Path) -> list[dict]:
    """The raw rows of a half (``eval.tasks.load_tasks`` validates and loads them as items)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_split(items: list[dict], seed: int = SEED) -> tuple[Path, Path]:
    """Write both halves, one JSON object a line; used once, when the items were written."""
    dev, heldout = split(items, seed)
    NATURAL_DIR.mkdir(exist_ok=True)
    for path, rows in ((DEV_PATH, dev), (HELDOUT_PATH, heldout)):
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return DEV_PATH, HELDOUT_PATH
