"""The text rules a feedback row must pass to become a training row, found without running it.

``csound-assistant data from-feedback`` (data/from_feedback.py) applies them before the
sandbox's check, and the split stage applies them again to every row it takes from a feedback
folder: the sandbox's scan may have learned to refuse more since the folder was made.
"""

from __future__ import annotations

import re

from csound_assistant import sandbox

# A training row holds at most ~5 kB (2,048 tokens); a correction far past that teaches nothing
# and only costs scanning and checking time.
MAX_ROW_BYTES = 64 * 1024
_TEXT_FIELDS = ("instruction", "input", "output", "prompt", "completion", "prefix", "middle",
                "suffix")
_FENCE = re.compile(r"```[^\n]*\n(.*?)(?:```|\Z)", re.S)


def row_fields(row: dict) -> list[str]:
    if "messages" in row:
        return [m.get("content") or "" for m in row["messages"]]
    return [row[key] for key in _TEXT_FIELDS if isinstance(row.get(key), str)]


def row_texts(row: dict) -> list[str]:
    """Every text of ``row`` that the sandbox's scan must pass: each field, the fields run
    together (a FIM row's prefix + middle + suffix is one program) and each fenced block."""
    fields = row_fields(row)
    texts = [*fields, "".join(fields), "\n".join(fields)]
    texts += [block for text in fields for block in _FENCE.findall(text)]
    return list(dict.fromkeys(t for t in texts if t.strip()))


def screen(row: dict) -> tuple[str, list[str]] | None:
    """Why ``row`` must never become a training row, found without running anything:
    ``("too-large", [why])`` or ``("refused", reasons)``; None when the sandbox may check it."""
    size = len("".join(row_fields(row)).encode())
    if size > MAX_ROW_BYTES:
        return "too-large", [f"{size:,} bytes of text, over the {MAX_ROW_BYTES:,}-byte limit "
                             "for a feedback row"]
    texts = row_texts(row)
    reasons = [reason for text in texts for reason in sandbox.scan(text)]
    # Each word on its own as well, from comments, strings and prose too: a refused opcode
    # that a fake comment or a string hides from the scan is still named in the text. (Prose
    # that says "system" drops a good correction too: a small loss against a poisoned row.)
    words = sorted(set(re.findall(r"[A-Za-z_]\w*", "\n".join(texts))))
    reasons += sandbox.scan(" ".join(words))
    reasons = list(dict.fromkeys(reasons))
    return ("refused", reasons) if reasons else None
