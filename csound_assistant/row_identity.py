"""A training row's identity, and the list of rows an adapter was trained on.

One definition for the split stage (which keeps an adapter's training rows out of validation
and test), the train stage (which refuses a continued adapter that saw held-out rows) and the
starter's ``train_rows.sha1.txt.gz``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

ROW_HASHES = "train_rows.sha1.txt.gz"  # one 16-hex row hash per line: what the adapter saw


def row_hash(row: dict) -> str:
    """A row's identity: its text (everything but ``meta``, whose render peaks of noise opcodes
    differ from build to build)."""
    text = json.dumps({k: v for k, v in row.items() if k != "meta"}, sort_keys=True,
                      ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def trained_rows(adapter_dir: str | Path) -> frozenset[str] | None:
    """The row hashes an adapter folder lists (``ROW_HASHES``); None for one without the list."""
    path = Path(adapter_dir) / ROW_HASHES
    if not path.is_file():
        return None
    with gzip.open(path, "rt") as f:
        return frozenset(line.strip() for line in f if line.strip())
