"""The fix-the-bug request: Csound's first error and the code it refused, under a question.

The training rows that teach fixing (``data/rows.py``'s ``fix_row``) and the requests that
``serve --repair``/``--verify`` and ``eval run --repair`` send (``repair.py``) are built here, so
the model is asked at run time exactly as it was taught.
"""

from __future__ import annotations

FENCE = "```csound\n{code}\n```"
FIX_PROMPTS = [
    "This Csound code fails with the error below. Fix it.",
    "Csound refuses to compile this. What's wrong?",
    "I get this error when I run my .csd. How do I fix it?",
    "Why does this fail? Please correct it.",
    "Can you fix the bug in this Csound file?",
]


def fence(code: str) -> str:
    return FENCE.format(code=code.strip("\n"))


def fix_input(code: str, error: str) -> str:
    """What a fix request shows after its question: the code, then Csound's error."""
    return f"{fence(code)}\n\nError:\n```text\n{error.strip()}\n```"


def first_error(result) -> str:
    """Csound's first error message in a sandbox result, as Csound printed it."""
    for d in getattr(result, "diagnostics", []) or []:
        if getattr(d, "severity", "") == "error":
            return str(d).strip()  # "error: line 23: syntax error, unexpected T_IDENT ..."
    refused = getattr(result, "refused", None)
    if refused:
        return "refused: " + ", ".join(refused)
    lines = [ln for ln in (getattr(result, "stderr", "") or "").splitlines()
             if "error" in ln.lower()]
    return lines[0].strip() if lines else getattr(result, "category", "")
