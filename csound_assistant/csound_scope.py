"""Which variables a Csound text has assigned so far, and whether it is inside an instrument or
a UDO: the Csound-aware decoder (``csound_assistant/csound_lexer.py``) refuses a variable that
is read before any statement assigned it, as Csound does ("Variable 'kenv' used before
defined"), an ``endin`` outside an instrument and an ``instr`` inside one.

Csound's rule, checked on Csound 6.18: a variable is known after the statement that assigns it
(its output list, ``xin`` included), in the same instrument or UDO; names of the header (code
outside every instrument) are known only there; ``g`` names are known everywhere after their
assignment. Where the text may assign names this module cannot see (a ``#include``, a macro
used as a statement) or where the instrument's start is not in the text (a fragment, a FIM
prefix that starts mid-file), nothing is judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

HEADER_VARIABLES = frozenset({"sr", "kr", "ksmps", "nchnls", "nchnls_i", "A4"})
_PFIELD = re.compile(r"p\d+")
_BLOCK_START = re.compile(r"\s*(instr|opcode)\b")
_BLOCK_END = re.compile(r"\s*(endin|endop)\b")
_NAME = re.compile(r"[A-Za-z_]\w*")
# Opcodes that write into their arguments (no outputs of their own).
MIDI_ARGS_OUT = re.compile(r"(midinoteon\w+|midicontrolchange)\b")


@dataclass(frozen=True)
class Scope:
    """``block``: "instr" or "opcode" inside one, "" between them (the header), None where the
    text's start is not a file's (a fragment): then nothing is judged."""

    local: frozenset = frozenset()
    header: frozenset = frozenset()
    glob: frozenset = frozenset()
    block: str | None = None
    sure: bool = True  # False once names may come from text not seen (#include, $MACRO)

    @classmethod
    def file(cls) -> Scope:
        """A whole orchestra from its start (``<CsInstruments>``)."""
        return cls(block="")

    @property
    def judges(self) -> bool:
        return self.sure and self.block is not None

    def defines(self, word: str) -> bool:
        return word in self.glob or word in (self.header if self.block == "" else self.local) \
            or word in HEADER_VARIABLES or bool(_PFIELD.fullmatch(word))

    def could_define(self, prefix: str) -> bool:
        """Some known name starts with ``prefix`` (the word may go on)."""
        if prefix == "p" or _PFIELD.fullmatch(prefix):
            return True
        names = self.header if self.block == "" else self.local
        return any(n.startswith(prefix) for group in (self.glob, names, HEADER_VARIABLES)
                   for n in group)

    def has_audio(self) -> bool:
        names = self.header if self.block == "" else self.local
        return any(n.startswith(("a", "ga")) for group in (names, self.glob) for n in group)

    def nesting_allows(self, word: str) -> bool:
        """``instr``/``opcode`` only between blocks; ``endin``/``endop`` only to close theirs."""
        if self.block is None:
            return True
        if word in ("instr", "opcode"):
            return self.block == ""
        if word == "endin":
            return self.block == "instr"
        if word == "endop":
            return self.block == "opcode"
        return True

    def after(self, line: str) -> Scope:
        """The scope after a finished orchestra line."""
        code = re.split(r";|//", line, maxsplit=1)[0]
        if "#include" in code or code.lstrip().startswith("$"):
            return replace(self, sure=False)
        start = _BLOCK_START.match(code)
        if start:
            return replace(self, local=frozenset(), block=start.group(1))
        if _BLOCK_END.match(code):
            return replace(self, local=frozenset(), block="")
        names = assigned(code)
        if not names:
            return replace(self, sure=False) if "$" in code else self
        glob = frozenset(n for n in names if n.startswith("g"))
        rest = frozenset(names) - glob
        if self.block == "":
            return replace(self, glob=self.glob | glob, header=self.header | rest)
        return replace(self, glob=self.glob | glob, local=self.local | rest)


def assigned(code: str) -> list[str]:
    """The names a statement assigns: its outputs (``aL, aR pan2 ...``, ``kx = 1``,
    ``kArr[] init 4``); a label before the statement is skipped."""
    text = re.sub(r"^\s*[A-Za-z_]\w*:(?!\S)", "", code)
    if MIDI_ARGS_OUT.match(text.lstrip()):  # ``midinoteoncps kcps, kvel`` writes its arguments
        return _NAME.findall(text)[1:]
    names: list[str] = []
    i = 0
    while True:
        m = _NAME.match(text, _skip(text, i))
        if not m:
            return []
        names.append(m.group())
        i = m.end()
        while i < len(text) and text[i] == "[":  # kArr[] or kArr[1]
            close = text.find("]", i)
            if close < 0:
                return []
            i = close + 1
        if text.startswith(":", i):  # a typed name (kx:k)
            t = _NAME.match(text, i + 1)
            i = t.end() if t else i + 1
        j = _skip(text, i)
        if text.startswith(",", j):
            i = j + 1
            continue
        after = text[j:j + 2]
        if after[:1] == "=" and after != "==" or (after[:1] in "+-*/" and after[1:] == "="):
            return names
        if j > i and (text[j:j + 1].isalpha() or text[j:j + 1] in "_$"):
            return names  # outputs, then the opcode (or a macro)
        return []


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r":
        i += 1
    return i
