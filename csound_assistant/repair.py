"""Compile an answer's Csound and, when Csound refuses it, ask the model to fix it with
Csound's own first error: the request the fix-the-bug training rows teach (``fix_request.py``:
the code, then ``Error:`` and the message in a ``text`` block). Used by
``eval run --repair N`` and ``serve --repair N``, so the report measures what the server returns;
``Problem`` is also the fix request ``--verify N`` falls back to (runtime/verify.py).

Only compiling is checked (the sandbox's ``check``: parse and type-check, nothing runs), and a
repair is kept only when the new code compiles: an answer never gets worse by being repaired.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from csound_assistant import sandbox
from csound_assistant.extract import extract_code
from csound_assistant.fix_request import FIX_PROMPTS, first_error, fix_input

REQUEST = FIX_PROMPTS[0]  # "This Csound code fails with the error below. Fix it."


@dataclass(frozen=True)
class Problem:
    code: str
    error: str

    def request(self) -> list[dict]:
        """A new one-turn conversation, as the fix rows were written (instruction and input
        joined as ``prompt_format.to_messages`` joins them)."""
        return [{"role": "user", "content": f"{REQUEST}\n\n{fix_input(self.code, self.error)}"}]


def diagnose(answer: str, *, timeout: float = 10.0) -> tuple[bool, Problem | None]:
    """(the answer's code compiles, what to ask a model to fix): no code, or code the sandbox
    refuses or that hangs Csound, gives (False, None): nothing a model could be asked to fix."""
    code = extract_code(answer)
    if code is None:
        return False, None
    result = sandbox.check(code, timeout=timeout)
    if result.ok:
        return True, None
    if result.category in ("refused", "timeout", "crash"):
        return False, None
    error = first_error(result)
    return False, Problem(code, error) if error else None


def repaired(answer: str, rounds: int,
             chat: Callable[[list[dict]], str]) -> tuple[str | None, int]:
    """(the first fix that compiles, or None to keep ``answer``; the requests made): at most
    ``rounds`` requests to ``chat`` (messages -> answer text), each fixing the previous
    attempt's code. The fix, when there is one, is the last request's answer."""
    ok, todo = diagnose(answer)
    made = 0
    while not ok and todo is not None and made < rounds:
        attempt = chat(todo.request())
        made += 1
        ok, todo = diagnose(attempt)
        if ok:
            return attempt, made
    return None, made
