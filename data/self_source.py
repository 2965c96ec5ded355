"""Self-sourcing variants of manual examples that read a sound file (issue 24, item 3).

Many manual examples process ``fox.wav``, ``beats.wav`` or ``flute.aiff``. A user who asks for
a flanger has none of those files, so an answer that reads one plays nothing. ``variant`` turns
such an example into one that makes its own source, keeping the rest of the code:

- ``diskin``/``diskin2``/``soundin``/``mp3in`` statements (and calls) become a synthesized signal
  with the same outputs: noise bursts for a drum loop, a plucked string for a plucked
  instrument, a sawtooth for a voice or anything else;
- GEN01 tables (score ``f`` lines and ``ftgen``) become a table of the same kind of sound: noise
  (GEN21) for drums, a few partials at an audible pitch (GEN09) for the rest; ``nsamp``, which
  only GEN01 tables answer, becomes ``ftlen``;
- a file name the score gives an instrument (``i 1 0 3 "fox.wav"`` read as ``p4``) leaves the
  score, unless the instrument reads that p-field again;
- string variables that only named the file, and comments that name it, go.

Nothing here judges the result: ``data/build.py`` renders every variant in the sandbox without
the manual's sound files, and only variants that play replace their example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .csdcode import block_text, code_part, instruments, split_args

SOUND_FILE = re.compile(r'"([^"\n]*\.(?:wav|aiff?|mp3|ogg|flac))"', re.I)
# Analysis and data files need an analysis program to make: an example reading one is left alone
DATA_FILE = re.compile(r'"([^"\n]*\.(?:wav|aiff?|mp3|ogg|flac|pvx|ats|lpc|het|sdif|sf2|mid|txt|'
                       r'dat|cv|pv))"', re.I)
READERS = ("diskin2", "diskin", "soundin", "mp3in")  # a-rate outputs, the file first
GEN01_ARG = 3  # ftgen's argument index of the GEN number; the file follows it
TABLE_SIZE = 131072  # a deferred-size GEN01 table (size 0) gets 2^17 samples, ~3 s at 44.1 kHz
PITCH = 220.0
LEVEL = 0.3  # of 0dbfs: sound files peak near 1, but a steady source has more energy
# Replaced file queries: a generated table's length, the orchestra's rate, one channel
FILE_QUERIES = ("filelen", "filesr", "filenchnls")
_NAME = r"[A-Za-z_]\w*"


@dataclass(frozen=True)
class Source:
    """A sound made in place of a file: set-up lines and the call whose output replaces the
    file's; and a table of the same kind of sound: GEN09 partials (harmonic number, amplitude),
    or GEN21 noise where there are none. Tables are not normalised (negative GEN numbers) and
    peak near 0.5: GEN01's normalised tables peak at 1, and a steady sound has more energy."""

    describe: str
    setup: tuple[str, ...]
    opcode: str
    args: str  # ``{amp}``: the file's level in the orchestra's 0dbfs
    partials: tuple[tuple[int, float], ...]
    table_describe: str


SOURCES = {
    "drums": Source("noise bursts, four a second", ("kBurst lfo 1, 4, 5",),
                    "noise", "{amp}*kBurst, 0", (), "a table of noise"),
    "plucked": Source("a plucked string", (), "pluck", f"{{amp}}, {PITCH:g}, {PITCH:g}, 0, 1",
                      ((1, 0.3), (2, 0.12), (3, 0.06)), f"a table holding a {PITCH:g} Hz tone"),
    "tone": Source("a sawtooth", (), "vco2", f"{{amp}}, {PITCH:g}",
                   ((1, 0.24), (2, 0.12), (3, 0.08), (4, 0.06)),
                   f"a table holding a {PITCH:g} Hz tone"),
}
NOISE_LEVEL = 0.5
_KINDS = (("drums", ("beat", "drum", "kick", "jungle", "loop", "break", "perc")),
          ("plucked", ("pluk", "pluck", "marimba", "guitar", "harp", "piano", "mandolin")))


def source_for(file_name: str) -> str:
    """The kind of sound that stands in for ``file_name``: ``SOURCES``' key."""
    lower = file_name.lower()
    return next((kind for kind, words in _KINDS if any(w in lower for w in words)), "tone")


@dataclass
class Variant:
    code: str
    files: list[str]  # the file names no longer read
    sources: list[str]  # what stands in for them, in words
    replaced: dict[str, int] = field(default_factory=dict)  # what was replaced, by opcode/GEN

    @property
    def description(self) -> dict:
        """``{"replaces": [file names], "with": "noise bursts, four a second"}``: what the
        rows say (``rows.after_note``) and carry in ``meta.self_source``."""
        return {"replaces": self.files, "with": " and ".join(self.sources)}


class NotConverted(Exception):
    """Why an example that reads a file has no self-sourcing variant (``reason``: a short key)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def reads_file(code: str) -> bool:
    """The code (comments aside) names a sound, analysis or data file it would read."""
    return bool(DATA_FILE.search(_code_only(code)))


def asks_for_file(opcode: str | None, summary: str, used: list[str], known: set[str]) -> bool:
    """Whether a request about ``opcode`` asks for a file, so the file-reading original stays:
    the opcode is gone from the variant (``used``: its opcodes; it was the reader itself), or
    its summary is about files ("Reads audio data from a file", GEN01's "soundfile")."""
    if opcode in known and opcode not in used:
        return True
    return bool(re.search(r"\bfiles?\b|soundfile", summary, re.I))


def _code_only(code: str) -> str:
    return "\n".join(code_part(line) for line in code.split("\n"))


def variant(code: str, scale: float = 1.0) -> Variant:
    """The self-sourcing version of ``code``; raises ``NotConverted`` when a file read remains
    that this module cannot replace (a name built at run time or passed to a UDO, an analysis
    file, a p-field the instrument reads again).
    ``scale`` multiplies the level of every source (a quieter try where the first one clips)."""
    if not reads_file(code):
        raise NotConverted("reads-no-file")
    if DATA_FILE.search(SOUND_FILE.sub('""', _code_only(code))):
        raise NotConverted("reads-an-analysis-or-data-file")
    edit = _Edit(code, scale)
    lines = code.split("\n")
    out: list[str] = []
    section = ""
    for line in lines:
        tag = re.match(r"\s*<(/?)(CsInstruments|CsScore)\b", line)
        if tag:
            section = "" if tag.group(1) else tag.group(2)
        if section == "CsInstruments":
            out += edit.orchestra_line(line)
        elif section == "CsScore":
            out.append(edit.score_line(line))
        else:
            out.append(line)
    text = edit.finish("\n".join(out))
    if reads_file(text) or not edit.files:
        raise NotConverted("file-name-not-replaced")
    return Variant(text, list(dict.fromkeys(edit.files)), list(dict.fromkeys(edit.sources)),
                   dict(edit.replaced))


class _Edit:
    """The state of one conversion: the orchestra's level and rate, the string variables that
    name files, and what has been replaced so far."""

    def __init__(self, code: str, scale: float = 1.0):
        self.scale = scale
        orc = _code_only(code)
        level = re.search(r"^\s*0dbfs\s*=\s*([\d.]+)", orc, re.M)
        rate = re.search(r"^\s*sr\s*=\s*([\d.]+)", orc, re.M)
        self.level = float(level.group(1)) if level else 32768.0  # Csound's default 0dbfs
        self.rate = float(rate.group(1)) if rate else 44100.0
        # S variables assigned a file name once: ``Sfile = "fox.wav"`` or ``strcpy``
        found: dict[str, list[str]] = {}
        for m in re.finditer(rf'^\s*({_NAME})\s*(?:=|strcpy\b)\s*"([^"\n]*)"\s*$', orc, re.M):
            found.setdefault(m.group(1), []).append(m.group(2))
        self.strings = {name: values[0] for name, values in found.items()
                        if len(values) == 1 and name.lstrip("g").startswith("S")}
        # file names the score gives as an i-statement's last p-field, by (instrument, p-field
        # number), and the variables that hold a p-field (``Sfile = p4``)
        score = re.search(r"<CsScore[^>]*>(.*?)</CsScore>", code, re.S)
        self.score_files: dict[tuple[str, int], list[str]] = {}
        for line in (score.group(1) if score else "").split("\n"):
            if found_in_score := _score_file(code_part(line)):
                self.score_files.setdefault(found_in_score[0], []).append(found_in_score[1])
        self.pvars = {m.group(1): int(m.group(2))
                      for m in re.finditer(rf"^\s*({_NAME})\s*=\s*p(\d+)\s*$", orc, re.M)}
        self.instr: list[str] = []  # the names of the instrument being read
        self.pfields: set[tuple[str, int]] = set()  # whose file names the score no longer needs
        self.files: list[str] = []
        self.sources: list[str] = []
        self.replaced: dict[str, int] = {}

    def file_of(self, arg: str) -> str | None:
        arg = arg.strip()
        if m := re.fullmatch(r'"([^"\n]*)"', arg):
            return m.group(1)
        n = int(m.group(1)) if (m := re.fullmatch(r"p(\d+)", arg)) else self.pvars.get(arg)
        keys = [(name, n) for name in self.instr if (name, n) in self.score_files]
        if keys:  # one source stands in for every file the score gives this instrument
            self.pfields.update(keys)
            return self.score_files[keys[0]][0]
        return self.strings.get(arg)

    def amp(self) -> str:
        amp = LEVEL * self.scale * self.level
        return f"{amp:g}" if self.level == 1 else f"{round(amp)}"

    def _count(self, what: str, file: str, source: str | None = None) -> None:
        self.files.append(file)
        if source:
            self.sources.append(source)
        self.replaced[what] = self.replaced.get(what, 0) + 1

    def _drop_comment(self, line: str) -> str:
        """A comment naming a file the code no longer reads would mislead: it goes."""
        code = code_part(line)
        return code.rstrip() if code != line and DATA_FILE.search(line[len(code):]) else line

    def orchestra_line(self, line: str) -> list[str]:
        line = self._drop_comment(line)
        code = code_part(line).rstrip()
        if m := re.match(r"\s*instr\s+(.+)$", code):
            self.instr = [name.strip().strip('"') for name in m.group(1).split(",")]
        readers = "|".join(READERS)
        m = re.match(rf"^(\s*)((?:{_NAME}\s*,\s*)*{_NAME})(\s+)({readers})(?::a)?(\s+)(.+)$", code)
        if m and (file := self.file_of(split_args(m.group(6))[0])):
            indent, outs = m.group(1), [o.strip() for o in m.group(2).split(",")]
            src = SOURCES[source_for(file)]
            self._count(m.group(4), file, src.describe)
            new = [f"{indent}{s}" for s in src.setup]
            args = src.args.format(amp=self.amp())  # the code's own spacing is kept
            new.append(f"{indent}{outs[0]}{m.group(3)}{src.opcode}{m.group(5)}{args}")
            new += [f"{indent}{o} = {outs[0]}" for o in outs[1:]]
            return new
        setup: list[str] = []

        def call(m: re.Match) -> str:
            file = self.file_of(split_args(m.group(3))[0])
            if file is None:
                return m.group(0)
            src = SOURCES[source_for(file)]
            self._count(m.group(1), file, src.describe)
            setup.extend(src.setup)
            return f"{src.opcode}({src.args.format(amp=self.amp())})"

        query = "|".join(FILE_QUERIES)
        m = re.match(rf"^(\s*)({_NAME})\s+({query})\s+(.+)$", code)
        if m and (file := self.file_of(m.group(4))):
            self._count(m.group(3), file)
            return [f"{m.group(1)}{m.group(2)} = {self._query(m.group(3))}" + line[len(code):]]

        def asked(m: re.Match) -> str:
            file = self.file_of(m.group(2))
            if file is None:
                return m.group(0)
            self._count(m.group(1), file)
            return self._query(m.group(1))

        new_code = re.sub(rf"\b({query})\(([^()]*)\)", asked, code)
        new_code = re.sub(rf"\b({readers})(:a)?\(([^()]*)\)", call, new_code)
        new_code = re.sub(r"\b(ftgen\w*)(\s+|\()(.+)$", self._ftgen, new_code)
        if new_code == code:
            return [line]
        indent = re.match(r"\s*", line).group(0)
        return [f"{indent}{s}" for s in dict.fromkeys(setup)] + [new_code + line[len(code):]]

    def _query(self, opcode: str) -> str:
        return {"filelen": f"{TABLE_SIZE / self.rate:.3g}", "filesr": "sr",
                "filenchnls": "1"}[opcode]

    def _ftgen(self, m: re.Match) -> str:
        opener, text = m.group(2), m.group(3)
        close = ""
        if opener == "(":
            if not text.endswith(")"):
                return m.group(0)
            text, close = text[:-1], ")"
        args = split_args(text)
        if len(args) <= GEN01_ARG + 1 or args[GEN01_ARG].strip() not in ("1", "-1"):
            return m.group(0)
        file = self.file_of(args[GEN01_ARG + 1])
        if file is None:
            return m.group(0)
        size = _size(args[2])
        table, what = self._table(file, size, raw=args[GEN01_ARG].strip() == "-1")
        new = args[:2] + [size, table]
        self._count("GEN01", file, what)
        return f"{m.group(1)}{opener}{', '.join(new)}{close}"

    def _table(self, file: str, size: str, raw: bool) -> tuple[str, str]:
        """GEN and arguments of a table in place of GEN01's, and what it holds in words;
        ``raw`` (GEN -1): the file's samples are not normalised, so are in the orchestra's
        0dbfs."""
        scale = self.scale * (self.level if raw else 1.0)
        src = SOURCES[source_for(file)]
        if not src.partials:
            return f"-21, 3, {NOISE_LEVEL * scale:.4g}", src.table_describe
        samples = int(float(size)) if _number(size) else TABLE_SIZE
        n = max(1, round(PITCH * samples / self.rate))  # harmonic 1 sounds at PITCH Hz
        what = src.table_describe if n > 1 else "a table holding one cycle of a wave"
        return "-9, " + ", ".join(f"{k * n}, {amp * scale:.4g}, 0"
                                  for k, amp in src.partials), what

    def score_line(self, line: str) -> str:
        line = self._drop_comment(line)
        code = code_part(line).rstrip()
        found = _score_file(code)
        if found and found[0] in self.pfields:  # the file name goes with the read
            self.files.append(found[1])
            return code[:code.rindex('"', 0, len(code) - 1)].rstrip() + line[len(code):]
        m = re.match(r'^(\s*f\s*\d+\s+\S+\s+)(\S+)\s+(-?1)\s+"([^"\n]*)"[^;]*$', code)
        if not m:
            return line
        size = _size(m.group(2))
        table, what = self._table(m.group(4), size, raw=m.group(3) == "-1")
        self._count("GEN01", m.group(4), what)
        fields = table.replace(",", "")
        return f"{m.group(1)}{size} {fields}" + line[len(code):]

    def finish(self, text: str) -> str:
        if "GEN01" in self.replaced:  # nsamp answers only for GEN01 tables; theirs are full
            text = re.sub(r"\bnsamp\b", "ftlen", text)
        lines = text.split("\n")
        names = [name for name, value in self.strings.items() if value in self.files]
        names += [name for name, n in self.pvars.items() if n in {n for _, n in self.pfields}]
        for name in names:
            used = [i for i, line in enumerate(lines)
                    if re.search(rf"\b{name}\b", code_part(line))]
            if len(used) == 1:  # only its assignment is left
                del lines[used[0]]
        text = "\n".join(lines)
        for block in instruments(text):
            names = [name.strip().strip('"') for name in block.name.split(",")]
            for n in {n for name, n in self.pfields if name in names}:
                if re.search(rf"\bp{n}\b", _code_only(block_text(text, block))):
                    raise NotConverted("file-name-from-the-score-still-used")
        return text


def _score_file(code: str) -> tuple[tuple[str, int], str] | None:
    """((instrument, p-field number), file name) of an i-statement whose last p-field names a
    sound file: ``i 1 0 3 "fox.wav"`` -> (("1", 4), "fox.wav")."""
    m = re.match(r'^\s*i\s*(.*?)\s+("[^"\n]*")$', code)
    if not m or not SOUND_FILE.fullmatch(m.group(2)) or '"' in m.group(1):
        return None
    fields = m.group(1).split()
    return (fields[0].split(".")[0], len(fields) + 1), m.group(2)[1:-1]


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _size(size: str) -> str:
    """A table size to keep, or ``TABLE_SIZE`` for GEN01's deferred size (0 or negative)."""
    return str(TABLE_SIZE) if _number(size) and float(size) <= 0 else size
