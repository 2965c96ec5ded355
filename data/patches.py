"""Patches: short instruments assembled from a source, an envelope, a filter and an effect.

Musicians ask for sounds ("a plucked string through an echo", "a sawtooth whose Moog filter
closes over the note"), while the manual's examples each show one opcode in their own style. A
small model trained on them for minutes learns the CSD skeleton but not how the common opcodes
are called, because each appears in only a few, very different programs (bench/NOTES.md,
"Recipe sweep"). These rows call a few dozen common opcodes hundreds of times, always in the
same shape and with the same names, so a short training run sees each call many times:

    instr 1
      ifreq = cpspch(p4)             ; the score's pitch, as Hz, pitch-class or MIDI note
      kenv madsr 0.05, 0.2, 0.6, 0.3  ; envelope
      asig vco2 0.3, ifreq            ; source
      afilt moogladder asig, 2000, 0.4 ; filter (optional)
      aout = afilt * kenv
      aL, aR pan2 aout, 0.5           ; effect (optional), or outs aout, aout
      outs aL, aR
    endin

The question describes the sound in words, sometimes naming the opcodes. Every program is
rendered by Csound; ``data/build.py`` keeps one only when it plays audibly without clipping.
The rows are synthetic, so the split keeps them out of the test split, which measures the
manual-derived tasks (``data/split.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

TASK = "patch"
COUNT, SEED = 1200, 0  # patches drawn by `data build` (~40 s of rendering on 2 cores)
HEADER = "sr = 44100\nksmps = 32\nnchnls = 2\n0dbfs = 1\n"


@dataclass(frozen=True)
class Part:
    """One stage of a patch: the lines it adds and how a musician would name it."""
    name: str
    words: str  # what it sounds like, to go in the question
    lines: tuple[str, ...]  # {amp}, {freq} in sources, {cf} in filters; the last sets the output
    opcodes: tuple[str, ...]  # the one that does the work first
    tables: str = ""  # ftgen lines it needs in the header


class Cutoff(NamedTuple):
    """A filter's cutoff: in words, as it is written into the filter's line, and the lines
    that make it move (none when it is a number)."""
    words: str
    value: str
    lines: tuple[str, ...] = ()


# The signal after each stage is a fixed variable: asig (source), afilt (filter), aout (with
# the envelope applied). Sources play {amp} at {freq}.
SOURCES = [
    Part("sine", "a sine wave", ("asig poscil {amp}, {freq}",), ("poscil",)),
    Part("sine-oscili", "a sine tone", ("asig oscili {amp}, {freq}",), ("oscili",)),
    Part("saw", "a band-limited sawtooth", ("asig vco2 {amp}, {freq}",), ("vco2",)),
    Part("square", "a square wave", ("asig vco2 {amp}, {freq}, 10",), ("vco2",)),
    Part("triangle", "a triangle wave", ("asig vco2 {amp}, {freq}, 12",), ("vco2",)),
    Part("pulse", "a narrow pulse wave", ("asig vco2 {amp}, {freq}, 2, 0.2",), ("vco2",)),
    Part("pluck", "a plucked string (Karplus-Strong)",
         ("asig pluck {amp}, {freq}, {freq}, 0, 1",), ("pluck",)),
    Part("fm", "an FM tone", ("asig foscili {amp}, {freq}, 1, 2, 3",), ("foscili",)),
    Part("fm-bell", "a bell-like FM tone", ("kndx expon 6, p3, 0.5",
                                            "asig foscili {amp}, {freq}, 1, 1.4, kndx"),
         ("foscili", "expon")),
    Part("noise", "white noise", ("asig noise {amp}, 0",), ("noise",)),
    Part("rand", "random noise", ("asig rand {amp}",), ("rand",)),
    Part("additive", "a tone with five harmonics (GEN10)",
         ("asig poscil {amp}, {freq}, giHarm",), ("poscil", "ftgen"),
         "giHarm ftgen 0, 0, 8192, 10, 1, 0.5, 0.33, 0.25, 0.2\n"),
    Part("buzz", "a buzz of harmonics", ("asig buzz {amp}, {freq}, 8, giSine",), ("buzz", "ftgen"),
         "giSine ftgen 0, 0, 8192, 10, 1\n"),
    Part("detuned", "two detuned sawtooths", ("asig1 vco2 {amp} / 2, {freq}",
                                               "asig2 vco2 {amp} / 2, {freq} * 1.01",
                                               "asig = asig1 + asig2"), ("vco2",)),
]
ENVELOPES = [
    Part("madsr", "an ADSR envelope (madsr)", ("kenv madsr 0.05, 0.2, 0.6, 0.3",), ("madsr",)),
    Part("adsr", "an ADSR envelope", ("kenv adsr 0.02, 0.1, 0.7, 0.2",), ("adsr",)),
    Part("linseg", "a linear swell and fade (linseg)",
         ("kenv linseg 0, p3 * 0.4, 1, p3 * 0.6, 0",), ("linseg",)),
    Part("linseg-ad", "a short attack and a linear decay",
         ("kenv linseg 0, 0.01, 1, p3 - 0.01, 0",), ("linseg",)),
    Part("expseg", "an exponential decay (expseg)", ("kenv expseg 1, p3, 0.001",), ("expseg",)),
    Part("expon", "a percussive exponential decay", ("kenv expon 1, p3, 0.001",), ("expon",)),
    Part("linen", "a rise and decay (linen)", ("kenv linen 1, 0.1, p3, 0.3",), ("linen",)),
    Part("transeg", "a curved envelope (transeg)",
         ("kenv transeg 0, 0.02, 2, 1, p3 - 0.02, -4, 0",), ("transeg",)),
    Part("xadsr", "an exponential ADSR (xadsr)", ("kenv xadsr 0.01, 0.1, 0.5, 0.2",), ("xadsr",)),
]
# Filters read asig and write afilt; {cf} is a number or kcf (a sweep added before them).
FILTERS = [
    Part("moogladder", "a Moog ladder low-pass filter", ("afilt moogladder asig, {cf}, 0.4",),
         ("moogladder",)),
    Part("butterlp", "a Butterworth low-pass filter", ("afilt butterlp asig, {cf}",),
         ("butterlp",)),
    Part("butterhp", "a Butterworth high-pass filter", ("afilt butterhp asig, {cf}",),
         ("butterhp",)),
    Part("butterbp", "a Butterworth band-pass filter", ("afilt butterbp asig, {cf}, {cf} / 4",),
         ("butterbp",)),
    Part("tone", "a one-pole low-pass filter (tone)", ("afilt tone asig, {cf}",), ("tone",)),
    Part("lpf18", "a resonant three-pole low-pass filter (lpf18)",
         ("afilt lpf18 asig, {cf}, 0.5, 0.2",), ("lpf18",)),
    Part("moogvcf", "a resonant Moog low-pass filter (moogvcf)",
         ("afilt moogvcf asig, {cf}, 0.5",), ("moogvcf",)),
    Part("reson", "a resonant band-pass filter (reson)",
         ("afilt reson asig, {cf}, {cf} / 8, 1",), ("reson",)),
    Part("statevar", "a state-variable filter's band-pass output (statevar)",
         ("ahp, alp, abp, abr statevar asig, {cf}, 4", "afilt = abp"), ("statevar",)),
    Part("svfilter", "the low-pass output of svfilter",
         ("alow, ahigh, aband svfilter asig, {cf}, 2", "afilt = alow"), ("svfilter",)),
    Part("zdf_2pole", "a zero-delay-feedback two-pole low-pass filter",
         ("afilt zdf_2pole asig, {cf}, 2",), ("zdf_2pole",)),
]
CUTOFFS = [
    Cutoff("at 1000 Hz", "1000"),
    Cutoff("at 2000 Hz", "2000"),
    Cutoff("whose cutoff falls over the note", "kcf", ("kcf expseg 6000, p3, 300",)),
    Cutoff("whose cutoff rises over the note", "kcf", ("kcf linseg 300, p3, 4000",)),
    Cutoff("whose cutoff an LFO moves", "kcf", ("klfo lfo 800, 2", "kcf = 1200 + klfo")),
]
# Effects read aout (mono) and end in `outs`. A global reverb adds a second instrument.
EFFECTS = [
    Part("none", "", ("outs aout, aout",), ("outs",)),
    Part("pan2", "panned from left to right (pan2)",
         ("kpan line 0, p3, 1", "aL, aR pan2 aout, kpan", "outs aL, aR"), ("line", "pan2")),
    Part("tremolo", "with a 5 Hz tremolo", ("ktrem lfo 0.4, 5", "aout = aout * (0.6 + ktrem)",
                                            "outs aout, aout"), ("lfo",)),
    Part("distort", "overdriven with tanh waveshaping", ("adist = tanh(aout * 4) * 0.5",
                                                         "outs adist, adist"), ("tanh",)),
    Part("distort1", "distorted with distort1", ("adist distort1 aout, 4, 0.5, 0, 0",
                                                  "outs adist * 0.5, adist * 0.5"), ("distort1",)),
    Part("echo", "through a feedback echo (delayr/delayw)",
         ("abuf delayr 1", "adel deltap 0.3", "delayw aout + adel * 0.4",
          "outs aout + adel, aout + adel"), ("delayr", "deltap", "delayw")),
    Part("comb", "through a comb-filter echo (comb)",
         ("acomb comb aout, 1.5, 0.2", "outs aout + acomb * 0.3, aout + acomb * 0.3"), ("comb",)),
    Part("chorus", "with a chorus (vdelay moved by an LFO)",
         ("amod poscil 3, 0.7", "adel vdelay aout, 12 + amod, 30", "outs aout + adel, aout - adel"),
         ("poscil", "vdelay")),
    Part("reverbsc", "with a stereo reverb (reverbsc)",
         ("aL, aR reverbsc aout, aout, 0.8, 8000", "outs aout + aL * 0.3, aout + aR * 0.3"),
         ("reverbsc",)),
    Part("freeverb", "sent to a global reverb instrument (freeverb)",
         ("outs aout, aout", "gaRev = gaRev + aout * 0.4"), ("freeverb",)),
]
GLOBAL_REVERB = ("instr 99\n  aL, aR freeverb gaRev, gaRev, 0.85, 0.5\n  outs aL, aR\n"
                 "  clear gaRev\nendin\n")
PITCHES = {  # how the score gives the pitch: (line in the instrument, notes, words)
    "hz": ("ifreq = p4", ["220", "330", "440", "262", "392", "523", "175", "294"], "in Hz"),
    "pch": ("ifreq = cpspch(p4)", ["8.00", "8.04", "8.07", "9.00", "7.09", "8.02", "8.05"],
            "as pitch-class (cpspch)"),
    "midi": ("ifreq = cpsmidinn(p4)", ["60", "64", "67", "72", "57", "62", "69"],
             "as a MIDI note number (cpsmidinn)"),
}
AMPLITUDES = ["0.3", "0.4", "0.25", "0.5"]
QUESTIONS = [
    "Write a Csound instrument that plays {sound}.",
    "Make a Csound patch: {sound}.",
    "Create a complete CSD with {sound}, and a score that plays {notes}.",
    "In Csound, how do I make {sound}? Give me a complete file.",
    "Write a complete Csound file: {sound}, {notes}.",
    "I want {sound} in Csound. Write the instrument and a short score.",
]


@dataclass(frozen=True)
class Patch:
    source: Part
    envelope: Part
    filter: Part | None
    cutoff: Cutoff | None
    effect: Part
    pitch: str
    notes: tuple[str, ...]
    amp: str

    @property
    def name(self) -> str:
        return "-".join(p.name for p in (self.source, self.envelope, self.filter, self.effect) if p)

    @property
    def opcodes(self) -> list[str]:
        parts = (self.source, self.envelope, self.filter, self.effect)
        ops = [op for p in parts if p for op in p.opcodes]
        if self.cutoff and self.cutoff.lines:
            ops += [self.cutoff.lines[0].split()[1]]
        return list(dict.fromkeys(ops))

    @property
    def chain(self) -> str:
        """The signal path in opcodes, for the answer's first line."""
        path = [self.source.opcodes[0], *([self.filter.opcodes[0]] if self.filter else [])]
        text = f"{' -> '.join(path)}, shaped by {self.envelope.opcodes[0]}"
        if self.effect.name != "none":
            text += f", then {' and '.join(o for o in self.effect.opcodes if o != 'line')}"
        return text


def sample(rng: random.Random) -> Patch:
    """One patch; about a third have no filter and a third no effect."""
    filt = rng.choice(FILTERS) if rng.random() < 0.65 else None
    pitch = rng.choice(sorted(PITCHES))
    notes = tuple(rng.sample(PITCHES[pitch][1], rng.choice([1, 2, 3, 4])))
    return Patch(rng.choice(SOURCES), rng.choice(ENVELOPES), filt,
                 rng.choice(CUTOFFS) if filt else None,
                 rng.choice(EFFECTS) if rng.random() < 0.7 else EFFECTS[0], pitch, notes,
                 rng.choice(AMPLITUDES))


def program(p: Patch) -> str:
    """The patch as a complete CSD: one note per pitch, each a second long."""
    freq_line = PITCHES[p.pitch][0]
    body = [freq_line, *p.envelope.lines, *(line.format(amp=p.amp, freq="ifreq")
                                            for line in p.source.lines)]
    if p.filter:
        body += [*p.cutoff.lines, *(line.format(cf=p.cutoff.value) for line in p.filter.lines),
                 "aout = afilt * kenv"]
    else:
        body += ["aout = asig * kenv"]
    body += list(p.effect.lines)
    reverb = p.effect.name == "freeverb"
    header = (HEADER + ("\n" + p.source.tables if p.source.tables else "")
              + ("\ngaRev init 0\n" if reverb else ""))
    instr = "instr 1\n" + "".join(f"  {line}\n" for line in body) + "endin\n"
    if reverb:
        instr += "\n" + GLOBAL_REVERB
    score = "".join(f"i 1 {t} 1 {note}\n" for t, note in enumerate(p.notes))
    if reverb:
        score += f"i 99 0 {len(p.notes) + 2}\n"
    return (f"<CsoundSynthesizer>\n<CsOptions>\n-odac\n</CsOptions>\n<CsInstruments>\n{header}\n"
            f"{instr}</CsInstruments>\n<CsScore>\n{score}</CsScore>\n</CsoundSynthesizer>\n")


def _sound(p: Patch, rng: random.Random) -> str:
    """The patch in words; half the time the opcodes are left for the model to choose."""
    named = rng.random() < 0.5
    words = [p.source.words if not named else f"{p.source.words} ({p.source.opcodes[0]})"]
    if p.filter:
        words.append(f"through {p.filter.words} {p.cutoff.words}")
    words.append(f"with {p.envelope.words}")
    if p.effect.words:
        words.append(p.effect.words)
    return ", ".join(words)


def _notes(p: Patch) -> str:
    unit = PITCHES[p.pitch][2]
    if len(p.notes) == 1:
        return f"one note ({p.notes[0]} {unit})"
    return f"{len(p.notes)} notes ({', '.join(p.notes)} {unit}), one a second"


def row(p: Patch, code: str, render: dict | None, seed: int) -> dict:
    from csound_assistant.fix_request import fence

    from .rows import meta  # not at import: `data --help` reads COUNT from this module

    rng = random.Random(f"{seed}:{p.name}:{p.notes}")
    question = rng.choice(QUESTIONS).format(sound=_sound(p, rng), notes=_notes(p))
    output = f"Here is a complete CSD ({p.chain}):\n\n{fence(code)}"
    return {"instruction": question, "input": "", "output": output,
            "meta": meta(None, TASK, group=f"patch:{p.name}", opcode=p.source.opcodes[0],
                         category="patch", source="data/patches.py", opcodes=p.opcodes,
                         **({"render": render} if render else {}))}


def candidates(n: int, seed: int = 0) -> list[Patch]:
    """``n`` distinct patches drawn with ``seed`` (fewer if the draws repeat)."""
    rng, seen, out = random.Random(seed), set(), []
    for _ in range(n * 3):
        p = sample(rng)
        key = (p.name, p.cutoff, p.pitch, p.notes)
        if key not in seen:
            seen.add(key)
            out.append(p)
        if len(out) == n:
            break
    return out
