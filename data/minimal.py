"""Minimal programs: one short, complete CSD per opcode, written from its manual synopsis.

The manual's examples are long and each one is different, and a small model trained on them
for minutes learns the CSD skeleton but loops inside the instrument (bench/NOTES.md, "Recipe
sweep"). These rows give it the same skeleton hundreds of times with a body of two or three
lines that calls one opcode the way its synopsis says: the shortest working answer to "use X".

Arguments are filled in from their names (``kcf`` -> 1000, ``ifn`` -> a sine table, ``asig`` ->
a sawtooth), so many guesses are wrong; Csound decides, as for every other row
(``data/build.py`` keeps a program only when it renders audibly without clipping).
"""

from __future__ import annotations

import re

from csound_assistant.fix_request import fence
from csound_assistant.manual import OpcodePage

from .rows import describe, lower_first, meta, pick

TASK = "minimal"
HEADER = "sr = 44100\nksmps = 32\nnchnls = 2\n0dbfs = 1\n"
SINE_TABLE = "giSine ftgen 0, 0, 8192, 10, 1\n"
SOURCE = "asrc vco2 0.3, 220"  # what an audio input hears: a band-limited sawtooth
_SYNOPSIS = re.compile(r"^(?P<outs>[A-Za-z]\w*(?:\s*,\s*[A-Za-z]\w*)*)\s+(?P<op>[A-Za-z_]\w*)"
                       r"(?P<args>(?:\s.*)?)$")
# Audio inputs whose name says they are the signal (not an a-rate parameter such as `acps`).
_SIGNAL = re.compile(r"^a(?:sig|in|input|src|snd|audio|exc|[lr]|\d+|in[lr\d]?|sig[lr\d]?|"
                     r"left|right|carrier|mod(?:ulator)?|comp|x|y|.?)$", re.I)
# (pattern on the name without its rate letter, value): the first match wins.
_VALUES = [
    (r"amp|gain|vol|level|peak|^a$", "0.3"), (r"maxdel|imaxd|mdel", "1"),
    (r"^(?:fn|ft|fun|tab|table|func|ftab|wave|fno)\d*$|fn$|ft$", "giSine"),
    (r"cps|freq|frq|^f$|^hz", "440"), (r"^(?:cf|fco|fc|cut|cutoff|center|centre|kcf)", "1000"),
    (r"^bw|band", "200"), (r"^(?:res|rez|reso|q)$|^res|^rez", "0.5"), (r"rvt|revtime", "1.5"),
    (r"^(?:dlt|del|delay|dt|time|tim)\d*$|^dlt|^del", "0.25"),
    (r"dur|dec|rise|att|rel|len|period|lpt|tau|hold", "0.1"), (r"sus|slev|lev", "0.5"),
    (r"^(?:pan|pos|xp|p)$|pan|pos", "0.5"), (r"room", "0.8"), (r"damp|hfd|fb|feed", "0.5"),
    (r"ndx|index", "2"), (r"car|mod|ratio", "1"), (r"^nh|harm", "10"), (r"^meth", "1"),
    (r"^(?:phs|phase|skip|mode|type|init|stor|norm|seed|beta|iskip|istor|opt|flag)", "0"),
    (r"pw|width|shape|wid", "0.5"), (r"^(?:n|cnt|count|num|voices|ord|order)$", "4"),
]
PROMPTS = [
    "Write a short Csound instrument that uses {op}.",
    "Show me a minimal complete CSD that uses `{op}`.",
    "How do I use {op} in Csound? Give a complete example I can run.",
    "Give me the smallest working Csound example of {op} ({summary}).",
    "In Csound, make an instrument with {op} and a score that plays it.",
]


def _value(arg: str) -> str | None:
    name, rate = arg.strip(), arg.strip()[:1]
    if rate not in "aikx" or "[" in name:
        return None  # strings, spectral, arrays: not for a two-line example
    if rate == "a" and _SIGNAL.match(name):
        return "asrc"
    rest = name[1:].lower()
    for pattern, value in _VALUES:
        if re.search(pattern, rest):
            return value
    return "0.5"


def _required_args(args: str) -> list[str] | None:
    """The arguments before the first optional one ("[" ) or "..."."""
    head = re.split(r"\[|\.\.\.", args, maxsplit=1)[0]
    names = [a.strip() for a in head.split(",") if a.strip()]
    if any(not re.fullmatch(r"[A-Za-z]\w*", n) for n in names):
        return None
    return names


def program(page: OpcodePage) -> str | None:
    """The minimal CSD for ``page``'s opcode, or None when its synopsis does not suit one:
    only one- or two-output audio opcodes and one-output control opcodes (which then shape an
    oscillator's amplitude) with numeric arguments."""
    # envelopes and line segments shape an oscillator (k-rate) rather than play as audio
    envelope = re.search(r"envelope|linear and exponential", page.category, re.I) is not None
    forms = [re.sub(r"\\\s*\n\s*", " ", s).strip() for s in page.synopsis]
    lines = [m for s in forms if (m := _SYNOPSIS.match(s)) and m["op"] == page.name]
    lines.sort(key=lambda m: (m["outs"][:1] != ("k" if envelope else "a"),
                              m["outs"][:1] not in "ak"))
    for m in lines:
        outs = [o.strip() for o in m["outs"].split(",")]
        rates = {o[:1] for o in outs}
        if rates not in ({"a"}, {"k"}) or len(outs) > (2 if rates == {"a"} else 1):
            continue
        names = _required_args(m["args"])
        if names is None:
            continue
        values = [_value(n) for n in names]
        if None in values:
            continue
        body = [SOURCE] if "asrc" in values else []
        call = f"{page.name} {', '.join(values)}".rstrip()
        if rates == {"k"}:
            body += [f"kval {call}", "asig poscil 0.3*kval, 440", "outs asig, asig"]
        elif len(outs) == 2:
            body += [f"aL, aR {call}", "outs aL, aR"]
        else:
            body += [f"aout {call}", "outs aout, aout"]
        tables = SINE_TABLE + "\n" if "giSine" in values else ""
        instr = "\n".join(f"  {line}" for line in body)
        return (f"<CsoundSynthesizer>\n<CsOptions>\n-odac\n</CsOptions>\n<CsInstruments>\n"
                f"{HEADER}\n{tables}instr 1\n{instr}\nendin\n</CsInstruments>\n<CsScore>\n"
                f"i 1 0 2\n</CsScore>\n</CsoundSynthesizer>\n")
    return None


def row(page: OpcodePage, code: str, group: str, render: dict | None) -> dict:
    """An instruction row asking for ``page``'s opcode, answered with ``code``."""
    prompt = pick(PROMPTS, page.name, TASK).format(op=page.name, summary=lower_first(page.summary))
    output = (f"{describe(page.name, page.summary)}. Here is a minimal CSD that uses it:\n\n"
              f"{fence(code)}\n\nRun it with `csound {page.name}.csd`; `-odac` plays it in real "
              f"time.")
    return {"instruction": prompt, "input": "", "output": output,
            "meta": meta(None, TASK, group=group, opcode=page.name, category=page.category,
                         source=page.page, **({"render": render} if render else {}))}
