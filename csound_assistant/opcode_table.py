"""What the manual's synopses say about each opcode's shape: how many outputs of which rate, and
how many arguments. Read by the Csound-aware decoder (``csound_assistant/csound_lexer.py``,
``runtime/decoder.py``) to refuse ``kenv moogladder`` (moogladder makes only a-rate output),
``a1, a2 phasor`` (one output) and ``outs a1`` (two arguments at least).

A synopsis line is ``OUTPUTS NAME ARGS`` (``ares oscili xamp, xcps[, ifn, iphs]``), or a
function form ``NAME(x)``. Bracketed items are optional, ``...`` makes a list open-ended. A rate
is the first letter of a name after an optional ``g`` (``gir``: i); ``x`` and letters that are
no rate (``tab``) accept any. Only what the synopsis says surely is kept: where a line cannot be
read it allows everything.

The table travels with the model: ``export`` writes it into the GGUF (``to_gguf``, key
``csound_assistant.opcode_table``) and the server reads it from there (``model_table``), so the
decoder knows the opcodes of the manual the model was trained from on a machine without one.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import os
import re
from dataclasses import dataclass

from . import gguf_blob
from .constants import ENV_OPCODE_REFERENCE, GGUF_OPCODE_TABLE

RATES = frozenset("aikSfw")
# Rate conversion functions and operators-as-functions that have no synopsis of their own.
EXTRA_FUNCTIONS = frozenset({"i", "k", "a", "b", "p", "not", *(f"tb{n}" for n in range(16))})
# An item may name several rates at once (``i/kout[]``, ``tvar|karr[]``): then it takes any.
_ITEM = re.compile(r'\.\.+|[\[\]]|"[^"]*"|[A-Za-z_][\w/|]*(?:\[\])*')


@dataclass(frozen=True)
class Form:
    """One synopsis line: output count bounds, output rates in order, argument count bounds."""

    out_min: int
    out_max: float
    out_rates: tuple[str, ...]
    arg_min: int
    arg_max: float

    def takes_outputs(self, rates: tuple[str, ...]) -> bool:
        if not self.out_min <= len(rates) <= self.out_max:
            return False
        for k, rate in enumerate(rates):
            want = self.out_rates[min(k, len(self.out_rates) - 1)] if self.out_rates else "x"
            # i-rate where a synopsis says k is allowed: the manual often lists only the k
            # form of an opcode Csound also has at i-rate (fillarray, ftexists)
            if want in RATES and rate in RATES and want != rate and (want, rate) != ("k", "i"):
                return False
        return True


ANY = Form(0, math.inf, (), 0, math.inf)

# Where the manual's synopsis asks for more arguments than Csound 6.18 does (each checked with
# Csound: `foscili` takes its table as optional, `vco` its waveform, `ftexists` at k-rate one
# argument): argument count bounds by (opcode, its one output's rate). Without these the
# decoder refuses valid calls the data and users write.
CSOUND_ARG_COUNTS = {("foscili", "a"): (5, 7), ("vco", "a"): (3, 10), ("ftexists", "k"): (1, 1)}


def _as_csound_takes(name: str, form: Form) -> Form:
    bounds = CSOUND_ARG_COUNTS.get((name, form.out_rates[0] if len(form.out_rates) == 1 else ""))
    return dataclasses.replace(form, arg_min=bounds[0], arg_max=bounds[1]) if bounds else form


def rate_of(name: str) -> str:
    """The rate letter of a variable or synopsis name ('x' when it names none or several)."""
    if "/" in name or "|" in name:
        return "x"
    if len(name) > 1 and name[0] == "g" and name[1] in RATES:
        return name[1]
    return name[0] if name and name[0] in RATES else "x"


def _items(text: str) -> tuple[int, float, list[str]]:
    """(required count, maximum count, item names) of a synopsis' output or argument list."""
    depth, required, names, open_ended, before_dots = 0, 0, [], False, True
    for m in _ITEM.finditer(text):
        tok = m.group()
        if tok == "[":
            depth += 1
        elif tok == "]":
            depth = max(0, depth - 1)
        elif tok.startswith(".."):
            open_ended, before_dots = True, False
        else:
            names.append(tok)
            if depth == 0 and before_dots:
                required += 1
    if open_ended:  # the item before "..." is often the first of the repeated ones
        return max(0, required - 1), math.inf, names
    return required, len(names), names


def parse_line(key: str, line: str) -> tuple[str, Form] | None:
    """(opcode name, its form) of one synopsis line of the page ``key``; the name may extend the
    key (``printf_i`` on printf's page). None for a function form or a line not understood."""
    line = re.sub(r"\s\([^()]*\)\s*$", "", line.replace("\\", " "))  # "(k- or i-arrays)"
    found = None
    for m in re.finditer(rf"(?<![\w$.]){re.escape(key)}\w*(?!\w)", line):
        after = line[m.end():].lstrip()
        if after.startswith("("):
            return None  # a function form: any arguments
        before = line[:m.start()].rstrip()
        if not before.endswith(","):
            found = m
            break
    if found is None:
        return None
    out_min, out_max, outs = _items(line[:found.start()])
    arg_min, arg_max, _ = _items(line[found.end():])
    return found.group(), Form(out_min, out_max, tuple(rate_of(o) for o in outs),
                               arg_min, arg_max)


class OpcodeTable:
    """Opcode names with their forms; queries are cached per output-rate tuple."""

    def __init__(self, synopses: dict[str, list[str]]):
        forms: dict[str, list[Form]] = {}
        for key, lines in synopses.items():
            forms.setdefault(key, [])
            for line in lines:
                parsed = parse_line(key, line)
                if parsed is None:
                    forms[key].append(ANY)
                else:
                    forms.setdefault(parsed[0], []).append(parsed[1])
        self._index({name: tuple(f) or (ANY,) for name, f in forms.items()})

    @classmethod
    def from_forms(cls, forms: dict[str, tuple[Form, ...]]) -> OpcodeTable:
        table = cls.__new__(cls)
        table._index(forms)
        return table

    def _index(self, forms: dict[str, tuple[Form, ...]]) -> None:
        self.forms = {name: tuple(_as_csound_takes(name, f) for f in fs)
                      for name, fs in forms.items()}
        self.names = sorted(self.forms)
        self.functions = frozenset(self.forms) | EXTRA_FUNCTIONS
        # Opcodes a statement may start with although their name looks like a variable
        # (``ftfree ifn, 0``, ``fout``): those that can take no outputs.
        self.no_output = frozenset(n for n, fs in self.forms.items()
                                   if any(f.out_min == 0 for f in fs))

    @classmethod
    def from_manual(cls) -> OpcodeTable:
        """The installed manual's table (or the saved synopses ENV_OPCODE_REFERENCE names);
        DataError or ConfigError when there is neither."""
        return _manual_table(os.environ.get(ENV_OPCODE_REFERENCE))

    # --- in a GGUF: one string, gzipped compact JSON in base64 ---------------------------------
    def to_gguf(self) -> str:
        """``{"version": 1, "forms": {name: [[out_min, out_max, out_rates, arg_min, arg_max],
        ...]}}`` with -1 for "no limit", gzipped and base64-encoded (about 11 kB)."""
        rows = {name: [[f.out_min, _count(f.out_max), "".join(f.out_rates), f.arg_min,
                        _count(f.arg_max)] for f in forms]
                for name, forms in sorted(self.forms.items())}
        return gguf_blob.pack(TABLE_VERSION, "forms", rows)

    @classmethod
    def from_gguf(cls, value: str) -> OpcodeTable:
        """The table ``to_gguf`` wrote; ValueError when ``value`` is not one."""
        try:
            forms = {str(name): tuple(Form(int(o0), _limit(o1), tuple(rates), int(a0),
                                           _limit(a1))
                                      for o0, o1, rates, a0, a1 in rows)
                     for name, rows in gguf_blob.unpack(value, TABLE_VERSION, "forms").items()}
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not an opcode table written by OpcodeTable.to_gguf: {exc}") \
                from None
        if not forms or not all(forms.values()):
            raise ValueError("not an opcode table written by OpcodeTable.to_gguf: no opcodes")
        return cls.from_forms(forms)

    def __contains__(self, name: str) -> bool:
        return name in self.forms

    def takes(self, name: str, rates: tuple[str, ...]) -> bool:
        return any(f.takes_outputs(rates) for f in self.forms[name])

    def arg_bounds(self, name: str, rates: tuple[str, ...]) -> tuple[int, float]:
        """The fewest and most arguments of ``name``'s forms that take these outputs."""
        fits = [f for f in self.forms[name] if f.takes_outputs(rates)] or self.forms[name]
        return min(f.arg_min for f in fits), max(f.arg_max for f in fits)

    @functools.lru_cache(maxsize=256)  # noqa: B019 (one table per process)
    def fitting(self, rates: tuple[str, ...]) -> tuple[str, ...]:
        """Sorted names of the opcodes that take outputs of these rates."""
        return tuple(n for n in self.names if self.takes(n, rates))

    def has_prefix(self, prefix: str, rates: tuple[str, ...]) -> bool:
        names = self.fitting(rates)
        i = bisect.bisect_left(names, prefix)
        return i < len(names) and names[i].startswith(prefix)


TABLE_VERSION = 1


def _count(bound: float) -> int:
    return -1 if bound == math.inf else int(bound)


def _limit(value) -> float:
    return math.inf if value == -1 else int(value)


@functools.lru_cache(maxsize=2)
def _manual_table(saved: str | None) -> OpcodeTable:  # keyed by the saved file in use
    from csound_assistant.opcode_reference import OpcodeReference

    return OpcodeTable(OpcodeReference.from_manual().synopses)


@dataclass(frozen=True)
class TableChoice:
    """The table a model's decoder uses: ``source`` "gguf" (the model's own), "manual" (the
    installed one) or None (neither: decode plain); ``note`` says why not the GGUF's."""

    table: OpcodeTable | None
    source: str | None
    note: str = ""


def model_table(gguf_metadata: dict) -> TableChoice:
    """The GGUF's table (key GGUF_OPCODE_TABLE, written by ``export``), else the installed
    manual's, else none; never raises."""
    from csound_assistant.opcode_reference import from_model

    return TableChoice(*from_model(gguf_metadata, GGUF_OPCODE_TABLE, OpcodeTable.from_gguf,
                                   OpcodeTable.from_manual))
