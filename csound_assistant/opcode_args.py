"""What the manual's synopses say about each opcode's arguments, for the Csound-aware decoder
(``csound_assistant/csound_lexer.py``): the rate each argument slot takes (``tone asig, khp``:
the first slot takes only an a-rate expression, so ``tone 0.5, 440`` is refused; an S slot
only a string, so ``strindexk "a.wav", 1`` is refused) and the names
that are functions only (``floor(x)``; Csound also takes them as opcodes, ``kx floor ky``, but
``aout floor 0.5`` is refused: an a-rate output needs an a-rate argument).

Csound checks these rates itself ("Unable to find opcode entry for 'tone' with matching argument
types: Found: a tone cc"), so the decoder refuses only what Csound would refuse, judged loosely:
a slot is refused a rate only when no synopsis form that takes the statement's outputs accepts
it there; ``x`` names, open-ended lists and names that are no rate accept anything.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .opcode_table import Form, _items, parse_line, rate_of

log = logging.getLogger("csound_assistant.decoder")

# What an argument slot of each synopsis rate accepts, by the rate of the expression written
# there: "c" a constant, "S" a string; an expression whose rate cannot be told is never judged.
# An i slot takes k variables often enough where the manual says i (schedkwhen's p-fields,
# outic) that only a-rate is refused there.
ACCEPTS = {"a": frozenset("a"), "k": frozenset("kicS"), "i": frozenset("kicS"),
           "S": frozenset("S")}
# Slots the manual calls a-rate or S where Csound 6.18 takes a number (or a k variable) too:
# every (opcode, 0-based slot) of the 438 a-only and 116 S-only ones that compiled with ``1``
# there (asked of ``csound --syntax-check-only`` one statement at a time, 2026-12-07).
CSOUND_TAKES_ANY = frozenset({
    ("chn_k", 10), ("flashtxt", 1), ("ftload", 0), ("ftloadk", 0), ("sndload", 0),
    ("strcpy", 0), ("strcpyk", 0),
    ("diff", 0), ("dssiaudio", 1), ("framebuffer", 0), ("integ", 0), ("mac", 1), ("mac", 3),
    ("outch", 1), ("partikkel", 0), ("ptable", 0), ("ptable3", 0), ("ptablei", 0),
    ("samphold", 0), ("samphold", 1), ("table", 0), ("table3", 0), ("tablei", 0),
    ("vdelay", 1), ("vdelay3", 1)})
# What each slot of a synopsis form takes as Csound itself answered (``bench/csound_slot_types.py``:
# every form whose synopsis-filled statement compiles, each slot given each kind of argument):
# "c" a number, "i"/"k"/"a" variables, "S" a string, "f" an fsig. Stored only where Csound
# differs from the loose rule; a slot of a stored form is judged by it, every other by ACCEPTS.
KINDS = ("c", "i", "k", "a", "S", "f")
SLOT_TYPES_FILE = Path(__file__).with_name("csound_slot_types.json")


def form_key(name: str, form: Form, rates: tuple[str, ...]) -> str:
    """A synopsis form as the measured table names it: ``oscil|a|kki``."""
    return f"{name}|{''.join(form.out_rates)}|{''.join(rates)}"


def loose_accepts(slot_rate: str, kind: str) -> bool:
    """The loose rule: a slot of ``slot_rate`` takes an argument of ``kind`` unless ACCEPTS
    says otherwise; an fsig, and any slot ACCEPTS does not name, is not judged."""
    return kind == "f" or slot_rate not in ACCEPTS or kind in ACCEPTS[slot_rate]


def loose_slots(key: str) -> list[str]:
    """The kinds the loose rule takes in each slot of the form ``key`` names."""
    name, _, rates = key.split("|")
    return ["".join(k for k in KINDS if (name, slot) in CSOUND_TAKES_ANY
                    or loose_accepts(rate, k)) for slot, rate in enumerate(rates)]


@functools.lru_cache(maxsize=1)
def load_slot_types() -> dict[str, tuple[str, ...]]:
    """The measured table (empty where the file is missing or unreadable: every slot is then
    judged loosely, which the log says once, since the decoder lets more through)."""
    try:
        doc = json.loads(SLOT_TYPES_FILE.read_text())
        return {key: tuple(slots) for key, slots in doc["forms"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("the decoder's measured slot table %s could not be read (%s): every "
                    "argument slot is judged by the manual's loose rule; reinstall the "
                    "package, or remake the table with python bench/csound_slot_types.py",
                    SLOT_TYPES_FILE, exc)
        return {}


@dataclass(frozen=True)
class ArgForms:
    """Per opcode name: (form, argument slot rates) for each synopsis line; function-only
    names; the measured kinds of the forms Csound judges otherwise than the loose rule."""

    forms: dict[str, tuple[tuple[Form, tuple[str, ...]], ...]]
    function_only: frozenset[str]
    measured: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)

    @classmethod
    def from_synopses(cls, synopses: dict[str, list[str]]) -> ArgForms:
        forms: dict[str, list] = {}
        function_only = set()
        for key, lines in synopses.items():
            statement = False
            for line in lines:
                parsed = parse_line(key, line)
                if parsed is None:
                    continue
                statement = True
                name, form = parsed
                forms.setdefault(name, []).append((form, _slot_rates(name, line)))
            if not statement and any(re.match(rf"\s*{re.escape(key)}\s*\(", ln) for ln in lines):
                function_only.add(key)
        return cls({n: tuple(f) for n, f in forms.items()}, frozenset(function_only),
                   load_slot_types())

    @classmethod
    def from_gguf(cls, gguf_metadata: dict) -> ArgForms | None:
        """The model's own synopses (the GGUF key ``export`` writes), else the installed
        manual's, else None (then no slot is judged): the rates of the manual it learned."""
        from .opcode_reference import model_synopses

        choice = model_synopses(gguf_metadata)
        if choice.source == "manual":
            return _manual_args()
        return cls.from_synopses(choice.reference.synopses) if choice.reference else None

    @classmethod
    def from_manual(cls) -> ArgForms | None:
        """The installed manual's, or None where there is none (then no slot is judged)."""
        return _manual_args()

    def refuses(self, name: str, outputs: tuple[str, ...], slot: int, rate: str) -> bool:
        """Whether no form of ``name`` taking ``outputs`` accepts an expression of ``rate``
        (a, k, i, S, f, or c for a constant) in argument ``slot`` (0-based)."""
        forms = self.forms.get(name)
        if not forms:
            return False
        fitting = [(f, r) for f, r in forms if f.takes_outputs(outputs)] or list(forms)
        return not any(self._takes(name, form, rates, slot, rate) for form, rates in fitting)

    def _takes(self, name: str, form: Form, rates: tuple[str, ...], slot: int,
               rate: str) -> bool:
        if slot >= len(rates):
            return True  # past the synopsis' named slots: not judged
        measured = self.measured.get(form_key(name, form, rates))
        # a slot that refused even its own rate was measured in a statement Csound refuses for
        # another reason (too many optional arguments): it is judged loosely
        if measured is not None and measured[slot] and (rates[slot] not in KINDS
                                                         or rates[slot] in measured[slot]):
            return rate in measured[slot]
        return (name, slot) in CSOUND_TAKES_ANY or loose_accepts(rates[slot], rate)

    def only_audio(self, name: str, outputs: tuple[str, ...], slot: int) -> bool:
        """Whether argument ``slot`` takes only an a-rate expression in every fitting form; a
        function used as an opcode (``aout tanh ain``) takes the rate of its output."""
        if name in self.function_only:
            return outputs == ("a",) and slot == 0
        return not self.refuses(name, outputs, slot, "a") \
            and self.refuses(name, outputs, slot, "k") and self.refuses(name, outputs, slot, "c")


def _slot_rates(name: str, line: str) -> tuple[str, ...]:
    """The rate letters of a synopsis line's arguments up to an open-ended ``...`` (after it
    the slots are unknown): 'x' for names that take any rate."""
    line = re.sub(r"\s\([^()]*\)\s*$", "", line.replace("\\", " "))
    for m in re.finditer(rf"(?<![\w$.]){re.escape(name)}(?!\w)", line):
        if not line[:m.start()].rstrip().endswith(","):
            args = line[m.end():].split("..")[0]
            names = _items(args)[2]
            if ".." in line[m.end():] and names:
                names = names[:-1]  # the item before "..." is the first of the repeated ones
            return tuple(rate_of(n) if "[" not in n else "x" for n in names)
    return ()


@functools.lru_cache(maxsize=1)
def _manual_args() -> ArgForms | None:
    from .errors import ConfigError, DataError
    from .opcode_reference import OpcodeReference

    try:
        return ArgForms.from_synopses(OpcodeReference.from_manual().synopses)
    except (DataError, ConfigError, OSError):
        return None
