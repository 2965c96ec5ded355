"""Where Csound expects an opcode, and whether a text so far can still be valid Csound there:
the pure half of the Csound-aware decoder (``runtime/decoder.py`` masks logits with it).

``Document`` follows a text line by line: prose (never judged), fenced code blocks and
``<CsoundSynthesizer>`` files, and inside them the orchestra (judged) apart from options and
score (not judged). ``Document.allows(text)`` says whether appending ``text`` keeps every
orchestra statement possible:

- a statement's first word that cannot be a variable (no a/k/i/S/f/w/g rate prefix, not
  ``p3``) is an opcode, a keyword or a label (``loop:``); after an output list (``asig``,
  ``aL, aR``) the next word is an opcode whose synopsis takes that many outputs of those rates
  (``kenv moogladder`` and ``a1, a2 phasor`` are refused);
- opcode names come from the manual (``OpcodeTable``) and from what the text declared earlier:
  ``opcode NAME``, ``instr NAME`` and labels;
- a statement cannot end (newline, ``;``) with fewer arguments than the opcode's smallest
  synopsis takes, nor take more than its largest allows;
- in expressions (after ``=``, ``if``, inside arguments) a word followed by ``(`` must be a
  known opcode or function.
Anything it cannot read surely (a macro, a continued line, a block comment) is allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

from .opcode_table import OpcodeTable, rate_of

# Words that start or shape statements; the ones after which the rest of the line is free
# (names, labels, instrument numbers) and the ones followed by an expression.
FREE_KEYWORDS = frozenset({"instr", "endin", "opcode", "endop", "goto", "igoto", "kgoto",
                           "tigoto", "rigoto", "struct"})
EXPR_KEYWORDS = frozenset({"if", "elseif", "else", "endif", "while", "until", "do", "od",
                           "then", "enduntil", "ithen", "kthen", "return"})
HEADER_WORDS = frozenset({"sr", "kr", "ksmps", "nchnls", "nchnls_i", "A4", "zakinit"})
FIRST_WORDS = FREE_KEYWORDS | EXPR_KEYWORDS | HEADER_WORDS
CODE_FENCES = frozenset({"", "csound", "csd", "orc", "cs", "udo", "csound-orc", "csound-csd",
                         "instr"})
_IDENT = re.compile(r"[A-Za-z_]\w*")
_DECL = re.compile(r"^\s*(?:(instr)\s+(\+?\w+(?:\s*,\s*\+?\w+)*)\s*(?:;.*)?$"
                   r"|(opcode)\s+([A-Za-z_]\w*)\s*,|([A-Za-z_]\w*):(?!\S))")
_SCORE_LINE = re.compile(r"^\s*[if]\s*\d")
SCORE_STATEMENTS = frozenset("abBCdefimnqrstvxy")  # one-letter score statements

PROSE, ORC, OTHER = "prose", "orc", "other"  # region kinds


@dataclass
class Region:
    kind: str = PROSE
    fenced: bool = False  # the code ends at a ``` line (else at </CsoundSynthesizer>, or never)
    csd: bool = False  # inside <CsoundSynthesizer>: orchestra only in <CsInstruments>
    document: bool = False  # a whole file (FIM): never ends


def _variable_like(word: str) -> bool:
    return rate_of(word) != "x" or (word[0] == "p" and word[1:].isdigit())


@dataclass
class Line:
    """One statement's text judged against the opcode table and the text's own names."""

    table: OpcodeTable
    names: frozenset

    def known(self, name: str) -> bool:
        return name in self.table or name in self.names

    def name_prefix(self, prefix: str, rates: tuple[str, ...]) -> bool:
        """Some opcode taking these outputs, or a name the text declared, starts so."""
        return self.table.has_prefix(prefix, rates) or any(n.startswith(prefix)
                                                           for n in self.names)

    def first_prefix(self, word: str) -> bool:
        return word in SCORE_STATEMENTS or _variable_like(word) or word in ("g", "p") \
            or any(w.startswith(word) for w in FIRST_WORDS) or self.name_prefix(word, ())

    def opcode_fits(self, name: str, rates: tuple[str, ...]) -> bool:
        return name in self.names or (name in self.table and self.table.takes(name, rates))

    def check(self, text: str, complete: bool) -> bool:
        """Whether ``text`` (one line; whole when ``complete``) can be or start valid Csound."""
        i = _skip_space(text, 0)
        if i == len(text) or not (text[i].isalpha() or text[i] == "_"):
            return True  # blank, comment, macro, tag, number (0dbfs), score brace
        end = _ident_end(text, i)
        word = text[i:end]
        if end == len(text):
            if complete:
                return word in SCORE_STATEMENTS or word in FIRST_WORDS \
                    or (self.known(word) and self._args_fit(word, (), "", True))
            # Any word may yet become a label (``loop:``), but labels are written at the
            # line's start (160 of 185 in the manual's examples): an indented word must
            # be able to become a variable, a keyword or an opcode.
            return i == 0 or self.first_prefix(word)
        rest = text[end:]
        if rest[0] == "(":  # a call as a statement: ``outs(a1, a1)``
            return (word in EXPR_KEYWORDS or self.known(word)) and self._expr_ok(rest, complete)
        if rest[0] == ":":
            return self.check(rest[1:], complete) if not rest.startswith("::") else True
        if word in FREE_KEYWORDS:
            return True
        if word in EXPR_KEYWORDS or word in HEADER_WORDS:
            return self._expr_ok(rest, complete)
        if word in self.table.no_output and rest[0] in " \t" and \
                _skip_space(rest, 0) < len(rest) and rest[_skip_space(rest, 0)] not in ",=[":
            return self._args_fit(word, (), rest, complete)  # ``ftfree ifn, 0``
        if _variable_like(word):
            return self._outputs(word, rest, complete)
        if word in SCORE_STATEMENTS:
            return True  # a score statement in an untagged block (``e``, ``s``)
        if not (word in self.names or (word in self.table and self.table.takes(word, ()))):
            return False
        return self._args_fit(word, (), rest, complete)

    def _outputs(self, first: str, text: str, complete: bool) -> bool:
        rates = [rate_of(first)]
        i, spaced = 0, False
        while True:
            j = _skip_space(text, i)
            spaced = spaced or j > i
            i = j
            if i == len(text):
                return not complete  # outputs alone are no statement
            c = text[i]
            if c == "[":
                close = text.find("]", i)
                if close < 0:
                    return True
                i, spaced = close + 1, False
            elif c == ",":
                i = _skip_space(text, i + 1)
                if i == len(text) or not (text[i].isalpha() or text[i] == "_"):
                    return True
                end = _ident_end(text, i)
                rates.append(rate_of(text[i:end]))
                i, spaced = end, False
            elif (c.isalpha() or c == "_") and spaced:
                return self._opcode(tuple(rates), text[i:], complete)
            elif c == "=":
                return self._expr_ok(text[i + 1:], complete)
            elif c in "+-*/":  # ``kx += 1``
                after = text[i + 1:i + 2]
                return (after == "=" and self._expr_ok(text[i + 2:], complete)) \
                    or (not after and not complete)
            else:  # after outputs only an opcode, an assignment or a label may come
                return c in "\\$"

    def _opcode(self, rates: tuple[str, ...], text: str, complete: bool) -> bool:
        end = _ident_end(text, 0)
        name = text[:end]
        if end == len(text) and not complete:
            return self.name_prefix(name, rates)
        if end < len(text) and text[end] in ":(":
            return self.known(name)  # a typed call (``oscili:a``): rates not judged
        if not self.opcode_fits(name, rates):
            return False
        return self._args_fit(name, rates, text[end:], complete)

    def _args_fit(self, name: str, rates: tuple[str, ...], text: str, complete: bool) -> bool:
        if name in self.names:
            low, high = 0, math.inf
        else:
            low, high = self.table.arg_bounds(name, rates)
        scan = _scan(text, self)
        if scan is None:
            return False
        commas, content, ended, free = scan
        if free:
            return True
        if commas + 1 > high and (commas or content):
            return False
        if complete or ended:
            return (commas + 1 if content or commas else 0) >= low
        return True

    def _expr_ok(self, text: str, complete: bool) -> bool:
        return _scan(text, self) is not None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r":
        i += 1
    return i


def _ident_end(text: str, i: int) -> int:
    while i < len(text) and (text[i].isalnum() or text[i] == "_"):
        i += 1
    return i


def _scan(text: str, line: Line):
    """Arguments or an expression: (top-level commas, any content, statement ended by a
    comment, free: a construct not judged), or None where a word before ``(`` is unknown or an
    argument is empty."""
    i, depth, commas, content, current = 0, 0, 0, False, False
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            close = i + 1
            while close < n and text[close] != '"':
                close += 2 if text[close] == "\\" else 1
            if close >= n:
                return commas, True, False, False
            i, content, current = close + 1, True, True
            continue
        if c == ";" or text.startswith("//", i):
            return commas, content, True, False
        if text.startswith("/*", i) or text.startswith("{{", i) or c in "\\$#":
            return commas, content, False, True
        if c.isalpha() or c == "_":
            end = _ident_end(text, i)
            word = text[i:end]
            if end < n and text[end] == "(" and word not in EXPR_KEYWORDS \
                    and not line.known(word) and word not in line.table.functions:
                return None
            i, content, current = end, True, True
            continue
        if c in "([":
            depth += 1
        elif c in ")]":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            if not current:
                return None  # an empty argument (``noise, asig``)
            commas, current = commas + 1, False
            i += 1
            continue
        if c not in " \t\r":
            content = current = True
        i += 1
    return commas, content, False, False


@dataclass
class Document:
    """A text being written, line by line: its region and declared names, and the current
    unfinished line. ``feed`` commits text; ``allows`` judges text without committing."""

    table: OpcodeTable
    region: Region = field(default_factory=Region)
    names: frozenset = frozenset()
    line: str = ""
    pending: str | None = None  # an open block comment or {{ string: lines free until it ends

    @classmethod
    def for_chat(cls, table: OpcodeTable, prompt_text: str = "") -> Document:
        """An answer: prose first; names the prompt's code declared are known."""
        return cls(table, names=frozenset(_declared(prompt_text)))

    @classmethod
    def for_fim(cls, table: OpcodeTable, prefix: str) -> Document:
        """A middle after ``prefix``: a whole file (orchestra unless its tags say otherwise)."""
        doc = cls(table, region=Region(ORC, document=True))
        doc.feed(prefix)
        return doc

    @property
    def judging(self) -> bool:
        """Whether the next text is orchestra code (the only place anything is refused)."""
        return self.region.kind == ORC and self.pending is None

    def feed(self, text: str) -> None:
        *done, self.line = (self.line + text).split("\n")
        for line in done:
            self.region, self.names, self.pending = _after_line(
                self.region, self.names, self.pending, line)

    def allows(self, text: str) -> bool:
        region, names, pending = self.region, self.names, self.pending
        *done, last = (self.line + text).split("\n")
        for line in done:
            if region.kind == ORC and pending is None \
                    and not Line(self.table, names).check(line, not _continued(line)):
                return False
            region, names, pending = _after_line(region, names, pending, line)
        if region.kind != ORC or pending is not None:
            return True
        return Line(self.table, names).check(last, False)

    def line_ok(self) -> bool:
        """Whether the unfinished line is valid so far (else judging it would refuse all)."""
        return not self.judging or Line(self.table, self.names).check(self.line, False)


def _continued(line: str) -> bool:
    """A line ending in a backslash or a comma goes on in the next (Csound joins them)."""
    return line.split(";")[0].rstrip().endswith(("\\", ","))


def _declared(text: str) -> set[str]:
    names = set()
    for raw in text.split("\n"):
        m = _DECL.match(raw)
        if not m:
            continue
        if m.group(1):  # instr 1, Name
            names.update(_IDENT.findall(m.group(2)))
        else:
            names.add(m.group(4) or m.group(5))
    return names


def _after_line(region: Region, names: frozenset, pending: str | None, line: str):
    """(region, names, pending) after a finished line."""
    stripped = line.strip()
    if pending == "\\":
        return region, names, "\\" if _continued(line) else None
    if pending is not None:
        if pending in line:
            pending = None
        return region, names, pending
    if region.kind == PROSE:
        if stripped.startswith("```"):
            lang = stripped[3:].strip().lower()
            return Region(ORC if lang in CODE_FENCES else OTHER, fenced=True), names, None
        if stripped.lower().startswith("<csoundsynthesizer>"):
            return Region(OTHER, csd=True), names, None
        return region, names, None
    if region.fenced and stripped.startswith("```"):
        return Region(PROSE), names, None
    low = stripped.lower()
    if low.startswith("<"):
        if "</csoundsynthesizer>" in low and not region.fenced and not region.document:
            return Region(PROSE), names, None
        if "<csinstruments>" in low:
            return replace(region, kind=ORC, csd=True), names, None
        if "<csoundsynthesizer>" in low or re.match(r"</?cs\w*>|<\w+", low):
            return replace(region, kind=OTHER, csd=region.csd or "<csoundsynthesizer>" in low), \
                names, None
        return region, names, None
    if region.kind != ORC:
        return region, names, None
    if not region.csd and _SCORE_LINE.match(line):
        return replace(region, kind=OTHER), names, None  # a score in an untagged block
    code = line.split(";")[0]
    if _continued(line):
        pending = "\\"
    elif "/*" in code and "*/" not in code[code.index("/*"):]:
        pending = "*/"
    elif "{{" in code and "}}" not in code[code.index("{{"):]:
        pending = "}}"
    new = _declared(line)
    return region, names | new if new else names, pending
