"""The feedback store: completions the server gave, and what users said about them (SQLite).

``csound-assistant serve --feedback-db PATH`` records every completion here;
``POST /v1/feedback`` and ``csound-assistant eval feedback ID --good/--bad --correction FILE``
mark one; ``csound-assistant data from-feedback`` turns the corrected (and, if asked, the good)
ones into training rows. It is the core's because the runtime writes it and the data stage,
which comes before the runtime, reads it.

A store object keeps one connection, so use it from one thread (the server gives it its own).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    prompt TEXT NOT NULL,      -- text, or JSON: a list of chat messages, or {"prefix","suffix"}
    output TEXT NOT NULL,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    good INTEGER,              -- NULL until marked; 1 good, 0 bad
    correction TEXT,
    marked REAL
);
"""


MAX_ID = 2**63 - 1  # SQLite's INTEGER PRIMARY KEY


def completion_key(completion_id) -> int:
    """A completion id as the server returned it: an int, or a string of ASCII digits only
    (no sign, spaces or other scripts' digits, which ``int()`` would quietly accept), from 1 to
    2^63-1. ValueError otherwise."""
    if isinstance(completion_id, int) and not isinstance(completion_id, bool):
        key = completion_id
    elif (isinstance(completion_id, str) and 0 < len(completion_id) <= 19
          and completion_id.isascii() and completion_id.isdigit()):
        key = int(completion_id)
    else:
        key = None
    if key is None or not 1 <= key <= MAX_ID:
        raise ValueError(f"a completion id is a whole number from 1 to {MAX_ID}, as an integer "
                         f"or a string of the digits 0-9 (X-Completion-Id or completion_id), "
                         f"got {_shown(completion_id)}")
    return key


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class FeedbackStore:
    """``record_completion`` -> id; ``mark(id, good, correction)``; ``corrected_rows()``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def record_completion(self, prompt: str, output: str, model: str, endpoint: str) -> int:
        with self.db:
            cursor = self.db.execute(
                "INSERT INTO completions (created, prompt, output, model, endpoint) "
                "VALUES (?, ?, ?, ?, ?)", (time.time(), prompt, output, model, endpoint))
        return int(cursor.lastrowid)

    def mark(self, completion_id: int | str, good: bool, correction: str | None = None) -> None:
        """Mark a completion good or bad, optionally with a corrected answer.

        Raises ValueError for an id that is not one (``completion_key``), KeyError for one
        not recorded."""
        key = completion_key(completion_id)
        with self.db:
            cursor = self.db.execute(
                "UPDATE completions SET good = ?, correction = ?, marked = ? WHERE id = ?",
                (int(bool(good)), correction, time.time(), key))
        if cursor.rowcount == 0:
            raise KeyError(f"no completion with id {key} in {self.path}")

    def get(self, completion_id: int | str) -> dict:
        key = completion_key(completion_id)
        row = self.db.execute("SELECT * FROM completions WHERE id = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"no completion with id {key} in {self.path}")
        return dict(row)

    def corrected_rows(self, include_good: bool = False) -> list[dict]:
        """Marked completions with an answer to learn: the correction, or (``include_good``) the
        output of one marked good without a correction. Each dict has the table's columns plus
        ``answer``."""
        rows = self.db.execute(
            "SELECT * FROM completions WHERE (correction IS NOT NULL AND correction != '') "
            "OR (? AND good = 1) ORDER BY id", (int(include_good),)).fetchall()
        out = []
        for row in rows:
            row = dict(row)
            row["answer"] = row["correction"] or row["output"]
            out.append(row)
        return out

    def counts(self) -> dict[str, int]:
        row = self.db.execute(
            "SELECT COUNT(*), SUM(good = 1), SUM(good = 0), "
            "SUM(correction IS NOT NULL AND correction != '') FROM completions").fetchone()
        return {"completions": row[0], "good": row[1] or 0, "bad": row[2] or 0,
                "corrected": row[3] or 0}
