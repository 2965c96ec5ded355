"""Small training rows in the four shapes, and a work dir holding a base and splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROWS = [
    {"messages": [{"role": "user", "content": "A sine at 440 Hz?"},
                  {"role": "assistant", "content": "instr 1\n  out poscil(0.3, 440)\nendin"}]},
    {"instruction": "Play noise.", "input": "quiet", "output": "instr 2\n  out rand(0.1)\nendin"},
    {"prompt": "instr 3\n  a1 =", "completion": " vco2(0.2, 110)\n  out a1\nendin"},
    {"prefix": "instr 4\n  a1 = ", "middle": "oscili(0.2, 220)", "suffix": "\n  out a1\nendin"},
]


def write_splits(splits_dir: Path, train_rows: list[dict], validation_rows: list[dict]) -> Path:
    splits_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("validation", validation_rows)):
        (splits_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (splits_dir / "record.json").write_text(json.dumps({"stage": "splits"}))
    return splits_dir


def make_work(tmp_path: Path, base_dir: Path, train_rows=None, validation_rows=None) -> Path:
    """``tmp_path/run`` with ``base`` (a symlink to the fixture) and ``splits``."""
    work = tmp_path / "run"
    work.mkdir(parents=True)
    (work / "base").symlink_to(base_dir)
    write_splits(work / "splits", train_rows or ROWS * 4, validation_rows or ROWS)
    return work
