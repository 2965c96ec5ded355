"""Where Csound expects an opcode, and whether a text so far can still be valid Csound there:
the pure half of the Csound-aware decoder (``runtime/decoder.py`` masks logits with it).

``Line.check`` judges one statement (``csound_document.Document`` follows a whole text line by
line and asks it); a text so far is refused where:

- a statement's first word that cannot be a variable (no a/k/i/S/f/w/g rate prefix, not
  ``p3``) is an opcode, a keyword or a label (``loop:``); after an output list (``asig``,
  ``aL, aR``) the next word is an opcode whose synopsis takes that many outputs of those rates
  (``kenv moogladder`` and ``a1, a2 phasor`` are refused), written with a space after it
  (``kenv partikkel(2)`` and ``a1 oscili:a`` are syntax errors in Csound 6); a function used
  as an opcode takes one argument of its output's rate (``aout floor 0.5`` is refused);
- opcode names come from the manual (``OpcodeTable``) and from what the text declared earlier:
  ``opcode NAME``, ``instr NAME`` and labels;
- a statement cannot end (newline, ``;``) with fewer arguments than the opcode's smallest
  synopsis takes, nor take more than its largest allows, nor with a parenthesis open;
- an argument's rate fits its synopsis slot (``tone 0.5, 440``: tone's first slot is a-rate;
  ``opcode_args.py``);
- in expressions (after ``=``, ``if``, inside arguments; ``csound_expr.py``) a word followed
  by ``(`` must be a known opcode or function (an opcode with no space before it), any other
  word a variable already assigned (``csound_scope.py``); two operands need an operator
  between them, an operator an operand before it, ``?`` a comparison; ``[`` only indexes a
  name; code is ASCII outside strings and comments; a condition reads no a-rate variable;
  an argument whose rate can only rise is refused once no rate left fits its slot;
- ``endin`` only closes an instrument and stands alone, ``instr`` never opens one inside
  another; a CSD's orchestra holds no score statement (``e``);
- a score line is a score statement whose fields are no words (``i Bass 0 1`` is refused:
  named instruments are quoted; ``csound_score.py``).
Anything it cannot read surely (a macro, a block comment) is allowed.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
from dataclasses import dataclass

from .csound_expr import (
    COMMENT_ONLY,
    EXPR_KEYWORDS,
    GOTO_WORDS,
    HEADER_WORDS,
    LONGEST_NAME,
    Scan,
    ident_end,
    scan_args,
    skip_space,
)
from .csound_score import SCORE_STATEMENTS
from .csound_scope import Scope
from .opcode_args import ArgForms
from .opcode_table import OpcodeTable, rate_of

# Words that start or shape statements; the ones after which the rest of the line is free
# (names, labels, instrument numbers) and the ones followed by an expression.
FREE_KEYWORDS = frozenset({"instr", "endin", "opcode", "endop", "goto", "igoto", "kgoto",
                           "tigoto", "rigoto", "struct"})
# Opcodes whose arguments may be labels (their synopses say ``label``): words not judged.
LABEL_OPCODES = frozenset({"cggoto", "cigoto", "ckgoto", "cngoto", "timout", "reinit",
                           "loop_lt", "loop_le", "loop_gt", "loop_ge"}) | GOTO_WORDS
FIRST_WORDS = FREE_KEYWORDS | EXPR_KEYWORDS | HEADER_WORDS
RISING = "ika"  # variable rates, lowest first
CONDITION_WORDS = frozenset({"if", "elseif", "while", "until"})  # never alone on a line


def _variable_like(word: str) -> bool:
    return rate_of(word) != "x" or (word[0] == "p" and word[1:].isdigit())


@functools.lru_cache(maxsize=8)
def _function_names(table: OpcodeTable) -> tuple[str, ...]:
    """Names a call in an expression may have: those that make an output (``rndseed`` or
    ``scoreline_i`` there is a word Csound refuses, whatever follows it)."""
    return tuple(sorted(n for n in table.functions
                        if n not in table.forms or any(f.out_max > 0 for f in table.forms[n])))


def _starts_a_function(table: OpcodeTable, word: str) -> bool:
    """Some name a call in an expression may have starts with ``word``."""
    functions = _function_names(table)
    i = bisect.bisect_left(functions, word)
    return i < len(functions) and functions[i].startswith(word)


@dataclass
class Line:
    """One statement's text judged against the opcode table and the text's own names."""

    table: OpcodeTable
    names: frozenset
    scope: Scope | None = None  # variables assigned so far (None: not judged)
    args: ArgForms | None = None  # argument slot rates (None: not judged)
    csd: bool = False  # in a CSD's <CsInstruments>: no score statement (``e``) is code

    def known(self, name: str) -> bool:
        return name in self.table or name in self.names

    def name_prefix(self, prefix: str, rates: tuple[str, ...]) -> bool:
        """Some opcode taking these outputs, or a name the text declared, starts so (a
        function, as an opcode, makes one output: ``a1, a2 octav`` is no way to ``octave``)."""
        if any(n.startswith(prefix) for n in self.names):
            return True
        names = self.table.fitting(rates)
        skip = self.args.function_only if self.args and len(rates) != 1 else frozenset()
        i = bisect.bisect_left(names, prefix)
        while i < len(names) and names[i].startswith(prefix):
            if names[i] not in skip:
                return True
            i += 1
        return False

    def only_variable(self, word: str) -> bool:
        """``word``, going on, can only name a variable (no function, header word or keyword
        starts so): its rate is already its first letter's."""
        return not _starts_a_function(self.table, word) \
            and not any(w.startswith(word) for w in HEADER_WORDS | EXPR_KEYWORDS | GOTO_WORDS)

    def first_prefix(self, word: str) -> bool:
        return self._score_word(word) or _variable_like(word) or word in ("g", "p") \
            or any(w.startswith(word) for w in FIRST_WORDS) or self.name_prefix(word, ())

    def opcode_fits(self, name: str, rates: tuple[str, ...]) -> bool:
        if name in self.names:
            return True
        if self.args and name in self.args.function_only and len(rates) != 1:
            return False  # ``a1, a2 exp ...``: a function as an opcode makes one output
        return name in self.table and self.table.takes(name, rates)

    def variable_ok(self, word: str, partial: bool) -> bool:
        """``word`` read as a variable (``partial``: it may go on) is assigned, or may be."""
        scope = self.scope
        if scope is None or not scope.judges:
            return True
        if not partial:
            return scope.defines(word)
        if scope.could_define(word) or any(w.startswith(word) for w in EXPR_KEYWORDS)  \
                or any(w.startswith(word) for w in GOTO_WORDS) \
                or any(n.startswith(word) for n in self.names):
            return True
        return _starts_a_function(self.table, word)

    def check(self, text: str, complete: bool) -> bool:
        """Whether ``text`` (one line; whole when ``complete``) can be or start valid Csound."""
        i = skip_space(text, 0)
        if i < len(text) and not text[i].isascii():
            return False  # a broken token: Csound's lexer refuses any non-ASCII code
        if i == len(text) or not (text[i].isalpha() or text[i] == "_"):
            return True  # blank, comment, macro, tag, number (0dbfs), score brace
        end = ident_end(text, i)
        word = text[i:end]
        if end - i > LONGEST_NAME:
            return False  # a name running on (``reverbcsreamscaleagnega...``)
        if end == len(text):
            if complete:
                return self._score_word(word) or (word in FIRST_WORDS and self._nests(word)
                                                    and word not in CONDITION_WORDS) \
                    or (self.known(word) and self._args_fit(word, (), "", True))
            # Any word may yet become a label (``loop:``), but labels are written at the
            # line's start (160 of 185 in the manual's examples): an indented word must
            # be able to become a variable, a keyword or an opcode.
            return i == 0 or self.first_prefix(word)
        rest = text[end:]
        if rest[0] == "(":  # a call as a statement: ``outs(a1, a1)``, not ``cpspch(p4)``
            makes_output = word not in self.names and (
                bool(self.args and word in self.args.function_only)
                or word in self.table.forms and all(f.out_min > 0 for f in self.table.forms[word]))
            return (word in EXPR_KEYWORDS or self.known(word)) and not makes_output \
                and self._expr_ok(rest, complete)
        if rest[0] == ":":
            return self.check(rest[1:], complete) if not rest.startswith("::") else True
        if word in ("endin", "endop"):  # nothing follows them but a comment
            return self._nests(word) and bool(COMMENT_ONLY.fullmatch(rest))
        if word in FREE_KEYWORDS:
            return self._nests(word)
        if word in HEADER_WORDS:  # ``sr = 48000``; only in the header (Csound reads
            # ``nchnls = 2`` or ``kr line ...`` in an instrument as a syntax error)
            if self.scope is not None and self.scope.block:
                return False
            j = skip_space(rest, 0)
            return self._expr_ok(rest[j + 1:] if rest[j:j + 1] == "=" else rest, complete)
        if word in CONDITION_WORDS:
            return self._condition_ok(word, rest, complete)
        if word in EXPR_KEYWORDS:
            return self._expr_ok(rest, complete)
        if self.args and word in self.args.function_only and word not in self.names:
            return False  # ``cpspch p4``: a function makes an output, so needs one
        if word in self.table.no_output and rest[0] in " \t" and \
                skip_space(rest, 0) < len(rest) and rest[skip_space(rest, 0)] not in ",=[":
            return self._args_fit(word, (), rest, complete)  # ``ftfree ifn, 0``
        if _variable_like(word):
            return self._outputs(word, rest, complete)
        if self._score_word(word):
            return True  # a score statement in an untagged block (``e``, ``s``)
        if not (word in self.names or (word in self.table and self.table.takes(word, ()))):
            return False
        return self._args_fit(word, (), rest, complete)

    def _score_word(self, word: str) -> bool:
        return word in SCORE_STATEMENTS and not self.csd

    def _nests(self, word: str) -> bool:
        return self.scope is None or self.scope.nesting_allows(word)

    def _outputs(self, first: str, text: str, complete: bool) -> bool:
        rates = [rate_of(first)]
        i, spaced = 0, False
        while True:
            j = skip_space(text, i)
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
                i = skip_space(text, i + 1)
                if i == len(text) or not (text[i].isalpha() or text[i] == "_"):
                    return True
                end = ident_end(text, i)
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
        end = ident_end(text, 0)
        name = text[:end]
        if end == len(text) and not complete:
            return self.name_prefix(name, rates)
        if end < len(text) and (text[end] in ":(" or not text[end].isascii()):
            return False  # ``kenv partikkel(2)``, ``a1 oscili:a``, ``tone\ufffd``: refused
        if not self.opcode_fits(name, rates):
            return False
        return self._args_fit(name, rates, text[end:], complete)

    def _args_fit(self, name: str, rates: tuple[str, ...], text: str, complete: bool) -> bool:
        if name in self.names:
            low, high = 0, math.inf
        elif self.args and name in self.args.function_only:
            low, high = 1, 1  # ``kx floor ky``: a function as an opcode takes one argument
        else:
            low, high = self.table.arg_bounds(name, rates)
        scan = scan_args(text, self, complete, name not in LABEL_OPCODES, True)
        if scan is None:
            return False
        if scan.free:
            return True
        commas, content = scan.commas, scan.content
        if commas + 1 > high and (commas or content):
            return False
        if self.args and name not in self.names and not self._slots_fit(name, rates, scan,
                                                                          complete):
            return False
        if complete or scan.ended:
            return (commas + 1 if content or commas else 0) >= low and not scan.open_operand
        return True

    def _slots_fit(self, name: str, rates: tuple[str, ...], scan: Scan, complete: bool) -> bool:
        done = scan.args if complete or scan.ended else scan.args[:-1]
        for slot, arg in enumerate(done):
            if arg.rate and (self.args.refuses(name, rates, slot, arg.rate)
                             or arg.rate != "a" and self.args.only_audio(name, rates, slot)):
                return False
        last = scan.args[-1]
        if complete or scan.ended or not last.first:
            return True
        slot = len(scan.args) - 1
        refuses = functools.partial(self.args.refuses, name, rates, slot)
        if last.rate and last.rate in RISING and (not scan.word_open or (
                scan.open_word and self.only_variable(scan.open_word))):
            # an expression's rate only rises as it goes on (``kcut + 1`` stays k or
            # becomes a): once no rate left is taken, the argument can never end
            if all(refuses(kind) for kind in RISING[RISING.index(last.rate):]):
                return False
        if last.first not in '0123456789."':
            return True
        if last.first == '"':
            return not refuses("S")  # a string where Csound takes none (``trigger 1, 1, "x"``)
        # A number cannot start an argument of a slot that takes no number, nor an i or k
        # expression, nor (where no a-rate variable exists) an a-rate one: refused at once,
        # or the model writes digits on, never allowed to end the argument (``tone 0.5``,
        # ``pvsynth 1``; ``0.5 * asig`` is fine with an asig).
        if self.scope is not None and not self.scope.has_audio() \
                and self.args.only_audio(name, rates, slot):
            return False
        return not all(refuses(kind) for kind in "cika")

    def _condition_ok(self, word: str, rest: str, complete: bool) -> bool:
        """A condition: an expression, closed by ``then``/goto or ``do``, that reads no
        a-rate variable (Csound judges it at i or k rate: ``if asig > 0`` is refused)."""
        scan = self._expr(rest, complete)
        if scan is None or scan.free:
            return scan is not None
        if any("a" in arg.rates and not arg.call for arg in scan.args) and not (
                scan.open_word and not self.only_variable(scan.open_word)):
            return False  # (an ``a`` being written may yet be ``abs(``)
        return not complete or _condition_closed(word, rest)

    def _expr_ok(self, text: str, complete: bool) -> bool:
        return self._expr(text, complete) is not None

    def _expr(self, text: str, complete: bool) -> Scan | None:
        """An expression's scan, or None where it cannot be valid (a parenthesis or ``?``
        left open at its end)."""
        scan = scan_args(text, self, complete, True)
        if scan is None or scan.free or not ((complete or scan.ended) and scan.open_operand):
            return scan
        return None


def _condition_closed(word: str, rest: str) -> bool:
    """A finished ``if``/``elseif`` line ends with ``then`` (``ithen``, ``kthen``) or a goto and
    its label, a ``while``/``until`` line with ``do``: Csound refuses ``if p4 > 0`` alone."""
    words = re.findall(r"\w+", re.split(r";|//", rest, maxsplit=1)[0])
    if len(words) < 2:
        return False
    if word in ("while", "until"):
        return words[-1] == "do"
    return words[-1] in ("then", "ithen", "kthen") or words[-2] in GOTO_WORDS
