"""Whether a score line so far can be valid, for the Csound-aware decoder
(``csound_assistant/csound_lexer.py``): ``i Bass 0 1`` is refused (Csound's score reader:
"sread: unexpected char B"; named instruments are quoted), as is orchestra code in the score.
"""

from __future__ import annotations

import re

from .csound_expr import NUMBER, ident_end, skip_space

SCORE_STATEMENTS = frozenset("abBCdefimnqrstvxy")  # one-letter score statements
SCORE_NAMED = frozenset("mnr")  # statements whose fields are names (sections, macros)
_FIELD_WORD = re.compile(r"(?:np|pp)\d*|n|p|z")  # z: p3 "forever"


def score_ok(text: str, complete: bool) -> bool:
    """Whether a score line so far can be valid: a known statement letter, then fields that
    are no words (numbers, quoted names, ``.``/``+``/``<`` carries, ``np3``/``pp3``, ``[...]``
    expressions); ``m``, ``n`` and ``r`` take names and are not judged."""
    i = skip_space(text, 0)
    if i == len(text) or not text[i].isalpha():
        return True  # blank, comment, brace loop, macro, tag
    if text[i] not in SCORE_STATEMENTS:
        return False
    if text[i] in SCORE_NAMED:
        return True
    i += 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == ";" or text.startswith("//", i) or text.startswith("/*", i) or c == "$":
            return True
        if c == '"':
            close = text.find('"', i + 1)
            if close < 0:
                return True
            i = close + 1
        elif c == "[":
            close = text.find("]", i)
            if close < 0:
                return True
            i = close + 1
        elif c.isalpha() or c == "_":
            end = ident_end(text, i)
            word = text[i:end]
            if not _FIELD_WORD.fullmatch(word) or \
                    (word in ("n", "p") and (end < n or complete)):
                return False
            i = end
        elif c.isdigit() or c == ".":
            m = NUMBER.match(text, i)
            i = m.end() if m and m.end() > i else i + 1
        else:
            i += 1
    return True
