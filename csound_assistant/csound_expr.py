"""How an argument list or an expression reads, for the Csound-aware decoder
(``csound_assistant/csound_lexer.py``): its top-level arguments with their rates, whether a
parenthesis is left open, and whether every word in it is a known function or an assigned
variable (``Line.variable_ok``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .opcode_table import rate_of

EXPR_KEYWORDS = frozenset({"if", "elseif", "else", "endif", "while", "until", "do", "od",
                           "then", "enduntil", "ithen", "kthen", "return"})
GOTO_WORDS = frozenset({"goto", "igoto", "kgoto", "tigoto", "rigoto"})  # a label follows
HEADER_WORDS = frozenset({"sr", "kr", "ksmps", "nchnls", "nchnls_i", "A4", "zakinit"})
# No name in the manual's examples is longer than 30 characters; a small model's runaway
# "identifier" is (``reverbcsreamscaleagnegaL_i2dulence...``): cut at 40.
LONGEST_NAME = 40
COMMENT_ONLY = re.compile(r"[ \t\r]*(?:(?:;|//).*)?")  # the rest of a line holds no code
BINARY = frozenset("*/%^|&#?<>")  # operators that need an operand before them
# 1e-3 (being written: 1e); ``0.`` is a number begun, not a dot after one
NUMBER = re.compile(r"0dbfs\b|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d*)?")


@dataclass
class Arg:
    """One argument as scanned: its first character and its rate ("a", "k", "i", "S", "f", "c"
    a constant; None where it cannot be told, e.g. a function call)."""

    first: str = ""
    rates: set = field(default_factory=set)
    call: bool = False

    @property
    def rate(self) -> str | None:
        if self.call or not self.first or self.rates - set("akiSfc"):
            return None
        if "f" in self.rates:
            return "f" if self.rates == {"f"} else None  # an fsig takes no arithmetic
        for r in "akiS":
            if r in self.rates:
                return r
        return "c" if self.rates else None


@dataclass
class Scan:
    """Arguments or an expression as scanned so far."""

    commas: int = 0
    content: bool = False
    ended: bool = False  # the statement ended with a comment
    free: bool = False  # a construct not judged
    args: list = field(default_factory=lambda: [Arg()])
    depth: int = 0
    last: str = ""  # the last code character
    ternary: int = 0  # ``?`` still waiting for their ``:``
    compared: bool = False  # a comparison was written (a ``?`` may follow)
    word_open: bool = False  # the text ends in a name or number that may go on
    open_word: str = ""  # that name, where it was read as a variable

    @property
    def open_operand(self) -> bool:
        """A parenthesis is open after an operand (Csound wants ``,`` or ``)`` there), or a
        ``?`` waits for its ``:``."""
        return self.ternary > 0 or self.depth > 0 and (self.last.isalnum()
                                                       or self.last in tuple("_)]\"."))


@dataclass
class Call:
    """An opcode called as a function (``delayr(asig)``), its arguments judged as a
    statement's: each slot's rate against the synopses (``ArgForms.refuses``, any output
    form), and their count against the fewest and most the forms take."""

    name: str
    depth: int  # the bracket depth inside its parentheses
    slot: int = 0
    arg: Arg = field(default_factory=Arg)

    def _fits(self, line) -> bool:
        rate = self.arg.rate
        return not rate or not line.args.refuses(self.name, ("x",), self.slot, rate)

    def _bounds(self, line) -> tuple[int, float]:
        if self.name in line.args.function_only:
            return 1, 1  # each of the 48 takes one argument (asked of Csound 6.18)
        forms = line.table.forms[self.name]
        return min(f.arg_min for f in forms), max(f.arg_max for f in forms)

    def next_argument(self, line) -> bool:
        if not self._fits(line):
            return False
        self.slot, self.arg = self.slot + 1, Arg()
        return self.slot < self._bounds(line)[1]

    def closes(self, line) -> bool:
        given = self.slot + 1 if self.arg.first or self.slot else 0
        return self._fits(line) and given >= self._bounds(line)[0]


def _note(calls: list[Call], depth: int, rate: str, first: str) -> None:
    """Add ``rate`` to the argument of the innermost call when it is written at its depth."""
    if calls and depth == calls[-1].depth:
        calls[-1].arg.first = calls[-1].arg.first or first
        calls[-1].arg.rates.add(rate)


def skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r":
        i += 1
    return i


def ident_end(text: str, i: int) -> int:
    while i < len(text) and text[i].isascii() and (text[i].isalnum() or text[i] == "_"):
        i += 1
    return i


def scan_args(text: str, line, complete: bool = False, variables: bool = True,
              arguments: bool = False) -> Scan | None:
    """Arguments or an expression, or None where a word before ``(`` is unknown, an opcode
    that is no function has a space before its ``(`` (``delay wgpluck (a1), 1``), a variable
    is not assigned yet (``variables``), a lone ``=`` is in ``arguments``, an argument is
    empty, two operands meet with no operator between them (``outs arev a1``), a ``:``
    follows no ``?`` and is no typed call, ``[`` follows no name, an opcode that makes no
    output is called (``delayw(abuf)``), or a character is not ASCII (a broken token), a
    backtick or a quote mark, outside a string or comment: Csound's lexer refuses them."""
    scan = Scan()
    arg = scan.args[0]
    i, n, current = 0, len(text), False
    operand = False  # an operand just ended: the next must be an operator, a comma, a bracket
    mute = None  # inside a call whose rate is known (from this depth): its arguments add none
    calls: list[Call] = []  # the opcode calls open here, innermost last (``delayr(asig)``)
    opening = None  # an opcode whose call's ``(`` comes next
    while i < n:
        c = text[i]
        if not c.isascii() or c in "`'" or (c < " " and c != "\t"
                                            and not (c == "\r" and i + 1 == n)):
            return None  # a vertical tab, form feed or lone \r ends no line for Csound
        number = c.isdigit() or (c == "." and text[i + 1:i + 2].isdigit())
        if operand and (c in '"(.$' or number or c.isalpha() or c == "_"
                        or text.startswith("{{", i)) \
                and (arguments or not _keyword_ahead(text, i, complete)):
            return None  # ``k2 .2``, ``kx (1)``, ``1()``: a comma or an operator is missing
        if c == '"':
            close = i + 1
            while close < n and text[close] != '"':
                close += 2 if text[close] == "\\" else 1
            arg.first = arg.first or c
            if mute is None:
                arg.rates.add("S")
            _note(calls, scan.depth, "S", c)
            scan.content, current, scan.last = True, True, c
            if close >= n:
                return None if complete else scan  # a string ends on its own line
            i, operand = close + 1, True
            continue
        if c == ";" or text.startswith("//", i):
            scan.ended = True
            return scan
        # ``#`` is bitwise xor (``i0B # i0A``), judged as an operator: ``balance asig, 0.5 #
        # a comment`` is not a comment to Csound
        if c == "\\":  # continues the statement on the next line: nothing may follow it
            # but a comment (``,\\n`` written out, ``,\\ next`` are Csound's ERROR_TOKEN)
            return scan if COMMENT_ONLY.fullmatch(text, i + 1) else None
        if text.startswith("/*", i) or text.startswith("{{", i) or c == "$":
            scan.free = True
            return scan
        if c in BINARY and scan.last in ("", "(", "[", ",") \
                and not (c == "/" and i + 1 == n and not complete):  # ``/*`` being written
            return None  # ``tone * asig``: an operator with nothing before it
        if number:
            m = NUMBER.match(text, i)
            end = m.end() if m else i + 1
            if not complete and "0dbfs".startswith(text[i:]):
                end = n  # 0dbfs being written
            arg.first = arg.first or c
            if mute is None:
                arg.rates.add("c")
            _note(calls, scan.depth, "c", c)
            scan.content, current, scan.last = True, True, text[end - 1]
            i, operand = end, True
            continue
        if c.isalpha() or c == "_":
            end = ident_end(text, i)
            word = text[i:end]
            if end - i > LONGEST_NAME:
                return None
            after = skip_space(text, end)
            arg.first = arg.first or c
            scan.content, current, scan.last = True, True, text[end - 1]
            # a known name then spaces at the text's end: a call if it is no variable
            pending_call = after == n > end and not complete and word in line.table.functions \
                and not (variables and line.variable_ok(word, False))
            if end < n and text[end] in "(:" or pending_call or (
                    word in line.table.functions and after < n and text[after] == "("):
                if word not in EXPR_KEYWORDS and not line.known(word) \
                        and word not in line.table.functions:
                    return None
                if after > end and line.args and word in line.table.forms \
                        and word not in line.args.function_only \
                        and (after == n or text[after] == "(") and word not in line.names:
                    return None  # Csound 6 reads ``oscili (`` as a syntax error
                if word in line.table.forms and word not in line.names \
                        and all(f.out_max == 0 for f in line.table.forms[word]):
                    return None  # ``delayw(abuf)``: an opcode with no outputs is no call
                if word not in EXPR_KEYWORDS and mute is None \
                        and _call_rate(arg, word, text[end:end + 3], line):
                    mute = scan.depth
                if word not in EXPR_KEYWORDS and calls and scan.depth == calls[-1].depth:
                    calls[-1].arg.first = calls[-1].arg.first or c
                    _call_rate(calls[-1].arg, word, text[end:end + 3], line)
                if line.args and word in line.table.forms and text[after:after + 1] == "(":
                    opening = word
                elif line.args and word in line.table.forms \
                        and re.match(r":[aikS]\(", text[end:end + 3]):
                    opening, end = word, end + 2  # ``ampmidi:i(``: its arguments counted too
                operand = False
            elif word in GOTO_WORDS:
                scan.free = True
                return scan
            elif word in EXPR_KEYWORDS:
                operand = False
            else:
                if variables and not line.variable_ok(word, end == n and not complete):
                    return None
                rate = "i" if word in HEADER_WORDS or word[0] == "p" and word[1:].isdigit() \
                    else rate_of(word)
                if mute is None:
                    arg.rates.add(rate)
                _note(calls, scan.depth, rate, c)
                operand = True
                if end == n and not complete:
                    scan.open_word = word
            i = end
            continue
        if c == "[" and not (scan.last.isalnum() or scan.last in ("_", "]")):
            return None  # ``abs[``: brackets only index an array
        if c in "{}" and (i + 1 < n or complete) or c in ")]" and scan.depth == 0:
            return None  # ``if x > 1 {``, ``k1 = 1 + 2)``: nothing to close, no braces
        if c == "." and (i + 1 < n or complete):
            return None  # ``asig.``, ``p4 .dir``: a dot only starts or sits in a number
        if c == "?":
            if not scan.compared:
                return None  # ``kx ? 1 : 0``: Csound's ``?`` follows a comparison
            scan.ternary += 1
        elif c == ":" and not (_after_name(text, i) and _typed_call(text[i + 1:i + 3],
                                                                      complete)):
            if not scan.ternary:
                return None  # a ``:`` that no ``?`` opened and no typed call (``oscili:a``)
            scan.ternary -= 1
        elif c == "=" and arguments and text[i - 1:i] not in tuple("=<>!") \
                and text[i + 1:i + 2] != "=" and (i + 1 < n or complete):
            return None  # an assignment in an opcode's arguments (``-nchnls=0``); in a
            # condition Csound reads a lone = as == (``if imode = 1 goto``)
        if c in "<>" or text.startswith(("==", "!=", "&&", "||"), i):
            scan.compared = True
        if c not in " \t\r":
            operand = c in ")]"
            opening = None if c != "(" else opening
        if c in "([":
            if calls and scan.depth == calls[-1].depth and not (opening and c == "("):
                calls[-1].arg.call = True  # a bracketed part: this argument is not judged
            scan.depth += 1
            if opening and c == "(":
                calls.append(Call(opening, scan.depth))
                opening = None
        elif c in ")]":
            if c == ")" and calls and scan.depth == calls[-1].depth \
                    and not calls.pop().closes(line):
                return None
            scan.depth = max(0, scan.depth - 1)
            if mute is not None and scan.depth <= mute:
                mute = None
        elif c == "," and calls and scan.depth == calls[-1].depth:
            if not calls[-1].next_argument(line):
                return None
        elif c == "," and scan.depth == 0:
            if not current:
                return None  # an empty argument (``noise, asig``)
            scan.commas, current = scan.commas + 1, False
            arg = Arg()
            scan.args.append(arg)
            scan.last = c
            i += 1
            continue
        if c not in " \t\r":
            if c not in "()[]," and calls and scan.depth == calls[-1].depth:
                calls[-1].arg.first = calls[-1].arg.first or c
            scan.content = current = True
            scan.last = c
            if c not in "([" and not arg.first and c not in "-+":
                arg.first = c
        i += 1
    scan.word_open = text[-1:].isalnum() or text[-1:] == "_"
    return scan


AFTER_CONDITION = frozenset({"then", "ithen", "kthen", "do"}) | GOTO_WORDS


def _keyword_ahead(text: str, i: int, complete: bool) -> bool:
    """A keyword that may follow a condition (``then``, ``kgoto``) starts at ``i``, or may yet
    (the word goes on)."""
    end = ident_end(text, i)
    word = text[i:end]
    if end == len(text) and not complete:
        return any(k.startswith(word) for k in AFTER_CONDITION)
    return word in AFTER_CONDITION


def _after_name(text: str, i: int) -> bool:
    """A name (not a number: ``800/2:a(1)``) ends just before ``i``."""
    j = i
    while j > 0 and text[j - 1].isascii() and (text[j - 1].isalnum() or text[j - 1] == "_"):
        j -= 1
    return j < i and not text[j].isdigit()


def _typed_call(after: str, complete: bool) -> bool:
    """What follows a ``:`` after a name is a typed call's rate (``oscili:a(``), or may be."""
    if not after:
        return not complete
    return after[0] in "aikS" and (after[1:] == "(" or (len(after) == 1 and not complete))


def _call_rate(arg: Arg, word: str, after: str, line) -> bool:
    """What a call adds to its argument's rate: a typed call's rate (``oscili:a(``), the
    output rate of an opcode whose synopses have one (``aftouch(1)`` is k-rate), else
    unknown. True when the rate is known (the call's own arguments then add nothing)."""
    if after[:1] == ":":
        if after[1:2] in "aki" and after[1:2] and after[2:3] == "(":
            arg.rates.add(after[1])
            return True
        arg.call = True
        return False
    if word in ("i", "k", "a") and after[:1] == "(":
        arg.rates.add(word)  # a rate conversion: ``k(asig)`` is k-rate
        return True
    forms = line.table.forms.get(word)
    rates = {f.out_rates[0] for f in forms if f.out_rates} if forms else set()
    if line.args and word not in line.args.function_only and len(rates) == 1 \
            and all(f.out_rates for f in forms):
        arg.rates.update(rates)  # one rate only: where there are more, the call takes the fit
        return True
    arg.call = True
    return False
