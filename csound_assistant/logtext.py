"""User text in log lines: prompts, completions and corrections can be megabytes long and hold
terminal control sequences, so a log shows them cut short, on one line, with control characters
escaped (``shorten``)."""

from __future__ import annotations

LOG_CHARS = 200

# C0 and C1 control characters and DEL, as escapes: a correction must not drive the terminal
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r"})


def shorten(text: object, limit: int = LOG_CHARS) -> str:
    """``text`` on one line, cut to about ``limit`` characters with an ellipsis and its full
    length: ``'instr 1 ...… [1,900,000 characters]'``."""
    text = str(text)
    shown = text[:limit].translate(_ESCAPES)
    if len(text) <= limit:
        return shown
    return f"{shown[:limit]}… [{len(text):,} characters]"
