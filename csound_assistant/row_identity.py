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


def _lines(text: str) -> str:
    """Chat text as it teaches: line endings and trailing blanks do not change what is learned."""
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").split("\n")).strip()


def content_key(row: dict) -> str:
    """What a row teaches, normalised: an instruction row and the chat row it renders to are one
    row; chat text ignores line endings and trailing spaces. FIM text keeps its spaces (a prefix
    ending in ``= `` asks for another middle than one ending in ``=``); only line endings are
    unified. ``meta`` is not content."""
    if "messages" in row or ("instruction" in row and "output" in row):
        from csound_assistant.prompt_format import to_messages

        shape = [[m["role"], _lines(m["content"] or "")] for m in to_messages(row)]
    else:
        shape = {k: v.replace("\r\n", "\n") if isinstance(v, str) else v
                 for k, v in sorted(row.items()) if k != "meta"}
    text = json.dumps(shape, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def unique_rows(rows: list[dict]) -> tuple[list[dict], int]:
    """``rows`` with each content (``content_key``) kept once, the first in order, and how many
    were dropped: the data build, feedback and self-training can each make a row another
    already made, and an identical row trained twice only weighs one answer double."""
    seen: set[str] = set()
    out = []
    for row in rows:
        key = content_key(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out, len(rows) - len(out)
