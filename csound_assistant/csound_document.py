"""A text followed line by line for the Csound-aware decoder (``runtime/decoder.py``):
``Document`` knows where the text is (prose, never judged; fenced code blocks and
``<CsoundSynthesizer>`` files, and in them the orchestra and the score, judged, apart from the
options), the names it declared, and a statement continued over lines (after ``,`` or ``\\``,
judged whole). ``Document.allows(text)`` says whether appending ``text`` keeps every statement
possible (``csound_lexer.Line`` judges each); ``winds_down`` whether it leaves room to close a
CSD answer near its token budget.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field, replace

from .csound_lexer import Line
from .csound_score import score_ok
from .csound_scope import Scope
from .opcode_args import ArgForms
from .opcode_table import OpcodeTable

CODE_FENCES = frozenset({"", "csound", "csd", "orc", "cs", "udo", "csound-orc", "csound-csd",
                         "instr"})
_IDENT = re.compile(r"[A-Za-z_]\w*")
_DECL = re.compile(r"^\s*(?:(instr)\s+(\+?\w+(?:\s*,\s*\+?\w+)*)\s*(?:;.*)?$"
                   r"|(opcode)\s+([A-Za-z_]\w*)\s*,|([A-Za-z_]\w*):(?!\S))")
_SCORE_LINE = re.compile(r"^\s*[if]\s*\d")

PROSE, ORC, SCORE, OTHER = "prose", "orc", "score", "other"  # region kinds
ORC_END = "</csinstruments>"
# what may follow a text, the likeliest first (``goes_on`` stops at the first that fits)
NEXT_CHARS = "\n,)" + string.ascii_lowercase + string.digits + "(;" + "".join(
    c for c in string.punctuation if c not in ",)(;") + string.ascii_uppercase


@dataclass
class Region:
    kind: str = PROSE
    fenced: bool = False  # the code ends at a ``` line (else at </CsoundSynthesizer>, or never)
    csd: bool = False  # inside <CsoundSynthesizer>: orchestra only in <CsInstruments>
    document: bool = False  # a whole file (FIM): never ends


# Tokens a CSD answer keeps for its end (``Document.winds_down``): the closing lines of a file
# (endin, </CsInstruments>, a one-line score, the closing tags and fence) take ~35 tokens.
OPEN_ROOM, CLOSE_ROOM, LINE_ROOM, SCORE_ROOM = 96, 48, 32, 24


@dataclass
class Document:
    """A text being written, line by line: its region and declared names, and the current
    unfinished line. ``feed`` commits text; ``allows`` judges text without committing."""

    table: OpcodeTable
    region: Region = field(default_factory=Region)
    names: frozenset = frozenset()
    line: str = ""
    # an open block comment or {{ string (its closing mark: lines free until it comes), or a
    # statement continued on the next line (after ``,`` or ``\``): "\\" and its text so far
    pending: str | None = None
    scope: Scope = field(default_factory=Scope)
    args: ArgForms | None = None

    @classmethod
    def for_chat(cls, table: OpcodeTable, prompt_text: str = "",
                 args: ArgForms | None = None) -> Document:
        """An answer: prose first; names the prompt's code declared are known."""
        return cls(table, names=frozenset(_declared(prompt_text)),
                   args=args or ArgForms.from_manual())

    @classmethod
    def for_fim(cls, table: OpcodeTable, prefix: str, args: ArgForms | None = None) -> Document:
        """A middle after ``prefix``: a whole file (orchestra unless its tags say otherwise),
        whose variables are judged once an instrument starts in it."""
        doc = cls(table, region=Region(ORC, document=True), args=args or ArgForms.from_manual())
        doc.feed(prefix)
        return doc

    @property
    def judging(self) -> bool:
        """Whether the next text is orchestra or score (the only places anything is refused)."""
        return self.region.kind in (ORC, SCORE) and _judged(self.pending)

    def checker(self, scope: Scope | None = None, names: frozenset | None = None,
                region: Region | None = None) -> Line:
        return Line(self.table, self.names if names is None else names,
                    self.scope if scope is None else scope, self.args,
                    (region or self.region).csd)

    def feed(self, text: str) -> None:
        *done, self.line = (self.line + text).split("\n")
        for line in done:
            self.region, self.names, self.pending, self.scope = _after_line(
                self.region, self.names, self.pending, self.scope, line)

    def allows(self, text: str) -> bool:
        region, names, pending, scope = self.region, self.names, self.pending, self.scope
        *done, last = (self.line + text).split("\n")
        for line in done:
            if _judged(pending) and not _judge(region, self.checker(scope, names, region),
                                               _carried(pending) + line, not _continued(line)):
                return False
            region, names, pending, scope = _after_line(region, names, pending, scope, line)
        return not _judged(pending) or _judge(region, self.checker(scope, names, region),
                                              _carried(pending) + last, False)

    def goes_on(self, text: str) -> bool:
        """Whether some character may follow ``text`` (itself allowed). The judge refuses a
        statement where it becomes invalid, which can be a character after the one that
        doomed it (``kcps.`` may not be followed by ``5``, nor by anything else): a token
        that leaves no way on is refused with it, or the model goes on with nothing valid
        to choose and the rest of the line goes unjudged."""
        # after a space the next character is probed too: spaces alone lead nowhere
        return text.endswith("\n") or any(self.allows(text + c) or self.allows(text + " " + c)
                                           for c in NEXT_CHARS)

    def winds_down(self, text: str, left: int) -> bool:
        """Whether ``text`` leaves room to finish a CSD answer when ``left`` tokens remain after
        it. Near its budget an answer writes between instruments only ``</CsInstruments>``
        (``OPEN_ROOM``); in an instrument only ``endin``/``endop`` (``CLOSE_ROOM``), ending the
        line it is in where it can (``LINE_ROOM``); in the score only its end (``SCORE_ROOM``).
        So it closes the file instead of stopping mid-line or repeating a block until
        ``max_tokens``. FIM middles and code outside a CSD are not judged."""
        if left >= OPEN_ROOM or not self.region.csd or self.region.document:
            return True
        region, scope, names, pending = self.region, self.scope, self.names, self.pending
        *done, last = (self.line + text).split("\n")
        # this statement's first word is written, or its line can no longer close anything
        # (the room ran short while it was being written): it goes on, to end where it can
        begun = re.match(r"\s*\w+\W", self.line) or (
            self.line.strip() and not _closing(region, scope, self.line, False, left))
        if not done:
            if not begun:
                return _closing(region, scope, last, False, left)
            # a statement begun goes on, but ends as soon as it can once the room is short
            return left >= LINE_ROOM or not (region.kind == ORC and scope.block
                                             and self.allows("\n"))
        for k, line in enumerate(done):
            if not (k == 0 and begun) and pending is None \
                    and not _closing(region, scope, line, True, left):
                return False
            region, names, pending, scope = _after_line(region, names, pending, scope, line)
        return pending is not None or _closing(region, scope, last, False, left)

    def line_ok(self) -> bool:
        """Whether the unfinished line is valid so far (else judging it would refuse all)."""
        return not self.judging or _judge(self.region, self.checker(),
                                          _carried(self.pending) + self.line, False)


def _closing(region: Region, scope: Scope, line: str, complete: bool, left: int) -> bool:
    """Whether a line (``complete`` or begun) may be written with ``left`` tokens of room."""
    text = line.split(";")[0].strip()
    if not text:
        return True

    def only(*ends: str, as_written: bool = False) -> bool:
        # keywords as written (Csound reads ``eNdIn`` as a name), tags in any case
        said = text if as_written else text.lower()
        return said in ends if complete else any(e.startswith(said) for e in ends)

    if region.kind == ORC and scope.block == "":
        return only(ORC_END)
    if region.kind == ORC and scope.block and left < CLOSE_ROOM:
        return only("endin", "endop", as_written=True)
    if region.kind == SCORE and left < SCORE_ROOM:
        return only("e", "</csscore>")
    return True


def _judge(region: Region, line: Line, text: str, complete: bool) -> bool:
    if region.kind == ORC and region.csd and text.lstrip().startswith("<"):
        # the one tag an orchestra holds is its end (``<`` alone is Csound's S_LT)
        tag, comment, _ = text.lower().partition(";")
        tag = tag.strip()
        return tag == ORC_END if complete or comment else ORC_END.startswith(tag)
    if region.kind == ORC:
        return line.check(text, complete)
    if region.kind == SCORE:
        return score_ok(text, complete)
    return True


def _judged(pending: str | None) -> bool:
    """Lines are judged unless a block comment or {{ string is open."""
    return pending is None or pending.startswith("\\")


def _carried(pending: str | None) -> str:
    """The text of a statement continued from earlier lines ("" if none)."""
    return pending[1:] if pending and pending.startswith("\\") else ""


def _joined(line: str) -> str:
    """A continued line as Csound joins it to the next: no comment, no backslash."""
    code = line.split(";")[0].rstrip()
    return (code[:-1] if code.endswith("\\") else code) + " "


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


def _after_line(region: Region, names: frozenset, pending: str | None, scope: Scope,
                line: str):
    """(region, names, pending, scope) after a finished line."""
    stripped = line.strip()
    if pending is not None and pending.startswith("\\"):
        if region.kind == ORC:
            scope = scope.after(line)
        return region, names, pending + _joined(line) if _continued(line) else None, scope
    if pending is not None:
        if pending in line:
            pending = None
        return region, names, pending, scope
    if region.kind == PROSE:
        if stripped.startswith("```"):
            lang = stripped[3:].strip().lower()
            return Region(ORC if lang in CODE_FENCES else OTHER, fenced=True), names, None, \
                replace(scope, block=None, local=frozenset())
        if stripped.lower().startswith("<csoundsynthesizer>"):
            return Region(OTHER, csd=True), names, None, scope
        return region, names, None, scope
    if region.fenced and stripped.startswith("```"):
        return Region(PROSE), names, None, scope
    low = stripped.lower()
    if low.startswith("<"):
        if "</csoundsynthesizer>" in low and not region.fenced and not region.document:
            return Region(PROSE), names, None, scope
        if "<csinstruments>" in low:
            return replace(region, kind=ORC, csd=True), names, None, \
                Scope.file() if scope.sure else replace(Scope.file(), sure=False)
        if "<csscore>" in low:
            return replace(region, kind=SCORE, csd=True), names, None, scope
        if "<csoundsynthesizer>" in low or re.match(r"</?cs\w*>|<\w+", low):
            return replace(region, kind=OTHER, csd=region.csd or "<csoundsynthesizer>" in low), \
                names, None, scope
        return region, names, None, scope
    if region.kind != ORC:
        return region, names, None, scope
    if not region.csd and _SCORE_LINE.match(line):
        return replace(region, kind=OTHER), names, None, scope  # a score in an untagged block
    code = line.split(";")[0]
    if _continued(line):
        pending = "\\" + _joined(line)
    elif "/*" in code and "*/" not in code[code.index("/*"):]:
        pending = "*/"
    elif "{{" in code and "}}" not in code[code.index("{{"):]:
        pending = "}}"
    scope = scope.after(line)
    new = _declared(line)
    return region, names | new if new else names, pending, scope
