"""The Csound sandbox: check and render untrusted Csound code (model output, user data).

Used by ``data`` (validating manual examples and derived rows), ``eval`` (compile@1, sound@1),
the server and ``csound-assistant eval check FILE``.

Isolation is the guarantee (``csound_assistant.isolation``): every Csound run happens under
bubblewrap with no network, a read-only view of the system libraries and of its own temp dir
(only the WAV it renders is writable), its own PID namespace killed whole, resource limits and a
non-root user; without isolation nothing runs unless the user opts in (SECURITY.md).
On top of it, as a courtesy that gives a clear answer instead of a contained failure:
1. A static scan refuses, before anything runs, code that names an opcode that runs shell
   commands, writes files, runs Python or other foreign code, talks to the network or compiles
   code at run time; macros (with arguments) are expanded and ``{{ }}`` strings read as Csound
   reads them first; ``#include`` / embedded-file paths and string literals that point outside
   the temp dir; ``<CsScore bin=...>``; ``--opcode-lib``, ``--opcode-dir``, ``--env`` and ``-U``
   in any ``<CsOptions>``.
2. Every ``<CsOptions>`` block is blanked (Csound reads all of them, ``-+ignore_csopts``
   only the first): null audio and MIDI drivers, no option from the document. Embedded files
   (``<CsFile>``, ``<CsFileB>``, ``<CsSampleB>``) are written into the temp dir by us, not by
   Csound, under plain names. A stop event ends the score after ``seconds``.
``check`` runs ``--syntax-check-only`` (parse and type check, executes nothing; never ``-I``).
``render`` writes a float WAV (16-bit would turn NaN into full scale) and measures it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import gzip
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import isolation
from .constants import CSOUND_HEADER
from .manual import MANUAL_EXAMPLES, documented_opcodes
from .sandbox_plugins import folder_for, full_folder, list_opcodes

CSOUND = os.environ.get("CSOUND_ASSISTANT_CSOUND", "csound")
COMMON_FLAGS = ["-d", "-+msg_color=0", "-+rtaudio=null", "-+rtmidi=null"]
STOP_INSTR = "__sandbox_stop"

# Category -> what it means. ``ok`` on a result is False for every category but "ok", "silent"
# and "clipping" (valid code that ran; whether silence is wrong depends on the task).
CATEGORIES = {
    "ok": "compiles (and, rendered, makes clean audible sound)",
    "refused": "uses a shell, file-writing, Python, network or run-time-compile opcode, or a path "
               "outside the sandbox: not run",
    "syntax": "parse or type error (wrong arguments, undefined variable, score syntax)",
    "unknown-opcode": "names an opcode Csound does not know (misspelled or invented)",
    "plugin": "names an opcode from the manual that this Csound build lacks (plugin not installed)",
    "needs-input-file": "needs a sound/data file that is not there",
    "realtime": "needs live audio input or MIDI (silent offline)",
    "gui": "needs a display (FLTK widgets)",
    "runtime-error": "compiles, but an init or performance error stopped an instrument",
    "timeout": "ran past the time limit (wall clock or CPU) and was killed",
    "crash": "Csound died (signal, memory or output-size limit)",
    "nan": "rendered NaN or infinite samples",
    "silent": "rendered, but peak below -80 dBFS",
    "clipping": "rendered, peak above 0 dBFS",
}
RAN_CATEGORIES = ("ok", "silent", "clipping")

# --- the refused opcodes ----------------------------------------------------------------------
# Built from the Csound 6.18 manual's opcode pages (/usr/share/doc/csound-doc/html):
# "Signal Input and Output: File Input and Output" (SigioTop.html), "Signal Output"
# (SigioOutput.html), "Table Read/Write" (TableReadwrit.html), "Python Opcodes" (py.html),
# system.html, "Network" / "OSC" / "Remote" (Network.html, OSC.html, Remote.html), "Serial",
# plugin hosts (dssi*, vst*), Lua, Faust, compilestr.html / compileorc.html / evalstr.html.
REFUSED_OPCODES: dict[str, str] = {
    **dict.fromkeys(["system", "system_i", "FLexecButton"], "runs a shell command"),
    **dict.fromkeys(
        ["fout", "fouti", "foutir", "foutk", "ftsave", "ftsavek", "dumpk", "dumpk2", "dumpk3",
         "dumpk4", "fprints", "fprintks", "soundout", "soundouts", "fiopen", "pvsfwrite",
         "ftaudio", "hdf5write", "mp3out", "imagesave"],
        "writes files",
    ),
    **dict.fromkeys(["compilestr", "compileorc", "compilecsd", "evalstr"],
                    "compiles code at run time (escapes the static check)"),
    **dict.fromkeys(
        ["OSCsend", "OSCsend_lo", "OSClisten", "OSCinit", "OSCinitM", "OSCraw", "OSCbundle",
         "OSCcount", "socksend", "socksends", "sockrecv", "sockrecvs", "websocket",
         "remoteport", "insremot", "insglobal", "midremot", "midglobal", "strfromurl"],
        "uses the network",
    ),
    **dict.fromkeys(
        ["serialBegin", "serialEnd", "serialFlush", "serialPrint", "serialRead", "serialWrite",
         "serialWrite_i", "arduinoStart", "arduinoRead", "arduinoReadF", "arduinoStop"],
        "opens a device",
    ),
}
# Families refused by prefix: Python (py.html lists pyinit, pyrun*, pyexec*, pyeval*,
# pyassign*, pycall*, and their pyl* local forms), Lua, plugin hosts that load shared
# libraries, Faust (compiles foreign code).
REFUSED_PATTERNS: list[tuple[re.Pattern, str]] = [
    (re.compile(r"pyl?(?:init|run|exec|eval|assign|call)\w*"), "runs Python"),
    (re.compile(r"lua_\w+"), "runs Lua"),
    (re.compile(r"(?:dssi|vst)\w+"), "loads a plugin library"),
    (re.compile(r"faust\w+"), "compiles Faust code"),
]

AUDIO_INPUT_OPCODES = {"in", "ins", "inch", "inq", "inh", "ino", "inx", "in32", "inrg", "inz"}
MIDI_OPCODES = {
    "massign", "pgmassign", "midiin", "notnum", "cpsmidi", "cpsmidib", "veloc", "ampmidi",
    "midictrl", "ctrl7", "ctrl14", "ctrl21", "aftouch", "pchbend", "midichn", "mididefault",
    "midinoteoncps", "midinoteonkey", "midinoteonoct", "midinoteonpch", "octmidi", "pchmidi",
    "initc7", "initc14", "midic7", "midic14", "midic21", "chanctrl", "polyaft", "release",
}
MIDI_FLAGS = re.compile(r"(^|\s)(-M\S*|--midi-device\S*|-F\s*\S+|--midifile\S*)")


@dataclass
class Diagnostic:
    line: int | None  # 1-based line in the submitted code; None when it has no line
    severity: str  # "error" or "warning"
    message: str

    def __str__(self):
        where = f"line {self.line}: " if self.line else ""
        return f"{self.severity}: {where}{self.message}"


@dataclass
class CheckResult:
    ok: bool
    category: str
    diagnostics: list[Diagnostic]
    refused: list[str]
    stderr: str
    returncode: int | None = None
    elapsed: float = 0.0
    network_isolated: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RenderResult(CheckResult):
    peak: float | None = None  # max |sample|, full scale = 1.0
    rms: float | None = None
    silent: bool = False
    clipping: bool = False
    nan: bool = False
    seconds: float = 0.0  # seconds of audio written
    channels: int = 0
    sample_rate: int = 0

    @property
    def audible(self) -> bool:
        """Rendered without errors, not silent and without NaN (what sound@1 counts)."""
        return self.ok and not self.silent and not self.nan


# --- preparing the CSD ------------------------------------------------------------------------

@dataclass
class _Prepared:
    text: str
    line_map: list[int | None]  # 0-based line of `text` -> 1-based line of the submitted code
    options: str  # the submitted <CsOptions>, for classification only (never used)
    refused: list[str]
    files: dict[str, bytes] = field(default_factory=dict)  # embedded files, by plain name


# Csound reads a .csd whose opening <CsoundSynthesizer> is missing, but not one without the
# closing tag ("Reading CSD failed"): either tag makes the code a CSD, passed on as it is.
_CSD_RE = re.compile(r"</?CsoundSynthesizer\b", re.I)
# An options block runs from its tag to the next <Cs...> or </Cs...> tag (its own closing tag
# when well formed); an unclosed one is blanked to that point too
_OPTIONS_RE = re.compile(r"(<CsOptions\b[^>]*>?)(.*?)(?=</?Cs|\Z)", re.I | re.S)
_EMBEDDED_RE = re.compile(r"<(CsFile|CsFileB|CsSampleB)\b([^>]*)>(.*?)</\1\s*>", re.I | re.S)
_FLAG_REFUSALS = {
    r"--opcode-lib\b": "loads a native library", r"--opcode-dir\b": "loads native libraries",
    r"--env:": "changes Csound's search paths", r"(?<!\S)-U\s*\S+": "runs a Csound utility",
}
_INSTR_RE = re.compile(r"^[ \t]*instr[ \t]+([^;\n/]+)", re.M)
_HEADER_VARS = {"sr": r"sr", "ksmps": r"(?:ksmps|kr)", "nchnls": r"nchnls", "0dbfs": r"0dbfs"}


def is_csd(code: str) -> bool:
    return bool(_CSD_RE.search(code))


def _instrument_ids(code: str) -> list[str]:
    ids = []
    for match in _INSTR_RE.finditer(_strip_comments(code)):
        for part in match.group(1).split(","):
            part = part.strip().lstrip("+")
            if re.fullmatch(r"\d+", part):
                ids.append(part)
            elif re.fullmatch(r"[A-Za-z_]\w*", part):
                ids.append(f'"{part}"')
    return list(dict.fromkeys(ids))


def _pfield_defaults(code: str) -> list[str]:
    """Plausible p4.. values for a fragment's score line, judged from how p-fields are used."""
    highest = max((int(n) for n in re.findall(r"\bp(\d+)\b", code)), default=3)
    values = []
    for n in range(4, min(highest, 12) + 1):
        names = " ".join(re.findall(rf"(\w+)\s*(?:=|init)\s*[^\n;]*\bp{n}\b", code)).lower()
        used = " ".join(re.findall(rf"(\w+)\s*\(\s*p{n}\b", code)).lower() + " " + names
        if "cpspch" in used or "pch" in names:
            values.append("8.09")
        elif "cpsmidinn" in used or "mtof" in used or "note" in names or "midi" in names:
            values.append("69")
        elif "ampdb" in used or "db" in names:
            values.append("-12")
        elif re.search(r"freq|cps|hz|pitch|frq", names):
            values.append("440")
        elif re.search(r"amp|vol|gain|level|vel", names):
            values.append("0.5")
        else:
            values.append({4: "0.5", 5: "440"}.get(n, "0.5"))
    return values


def _wrap(code: str, seconds: float = 2.0) -> tuple[str, list[int | None]]:
    lines = code.split("\n")
    stripped = _strip_comments(code)
    header = [
        line for key, line in zip(_HEADER_VARS, CSOUND_HEADER.strip().split("\n"))
        if not re.search(rf"^\s*{_HEADER_VARS[key]}\s*=", stripped, re.M)
    ]
    has_instr = bool(_INSTR_RE.search(stripped))
    has_udo = bool(re.search(r"^\s*opcode\s", stripped, re.M))
    body_only = not has_instr and not has_udo and stripped.strip() != ""
    out: list[tuple[str, int | None]] = [("<CsoundSynthesizer>", None), ("<CsInstruments>", None)]
    out += [(h, None) for h in header]
    if body_only:
        out.append(("instr 1", None))
    out += [(line, i + 1) for i, line in enumerate(lines)]
    if body_only:
        out.append(("endin", None))
    out += [("</CsInstruments>", None), ("<CsScore>", None)]
    ids = ["1"] if body_only else _instrument_ids(code)
    pfields = " ".join(_pfield_defaults(code))
    out += [(f"i {i} 0 {seconds:g} {pfields}".rstrip(), None) for i in ids]
    out += [("e", None), ("</CsScore>", None), ("</CsoundSynthesizer>", None)]
    return "\n".join(t for t, _ in out) + "\n", [n for _, n in out]


def wrap_orchestra(code: str, seconds: float = 2.0) -> str:
    """An orchestra fragment (or a bare instrument body) as a complete CSD: the standard header
    where the fragment lacks it, a score line per instrument and ``e``. A CSD is returned as is."""
    return code if is_csd(code) else _wrap(code, seconds)[0]


def _prepare(code: str, *, render_seconds: float | None) -> _Prepared:
    code = code.replace("\x00", "").replace("\r\n", "\n")
    refused = scan(code)
    if is_csd(code):
        text, line_map = code, list(range(1, code.count("\n") + 2))
    else:
        text, line_map = _wrap(code, render_seconds or 2.0)
    # Csound reads every <CsOptions> block: blank them all, keeping their line counts so line
    # numbers stay put
    options = "\n".join(m.group(2) for m in _OPTIONS_RE.finditer(text))
    text = _OPTIONS_RE.sub(lambda m: m.group(1) + "\n" * m.group(2).count("\n"), text)
    files, problems = _embedded_files(text)
    refused += problems
    text = _EMBEDDED_RE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    if render_seconds is not None:
        close = re.search(r"</CsInstruments>", text, re.I)
        if close:
            stop = (f"\ninstr {STOP_INSTR}\nevent_i \"e\", 0, 0\nendin\n"
                    f"schedule \"{STOP_INSTR}\", {render_seconds:g}, 0\n")
            before = text[: close.start()].count("\n")
            line_map = line_map[: before + 1] + [None] * stop.count("\n") + line_map[before + 1:]
            text = text[: close.start()] + stop + text[close.start():]
    return _Prepared(text, line_map, options, refused, files)


def _embedded_files(text: str) -> tuple[dict[str, bytes], list[str]]:
    """The files a CSD embeds, by name, decoded as Csound would (we write them, not Csound)."""
    files, problems = {}, []
    for m in _EMBEDDED_RE.finditer(text):
        tag, attrs, body = m.group(1).lower(), m.group(2), m.group(3)
        found = re.search(r"filename\s*=\s*\"?([^\">\s]+)", attrs)
        name = found.group(1) if found else ""
        if not re.fullmatch(r"[\w][\w.+-]{0,99}", name):
            problems.append(f"embedded file name {name!r} (a plain file name is required)")
            continue
        if tag == "csfile":
            files[name] = body.lstrip("\n").encode("utf-8")
            continue
        try:
            files[name] = base64.b64decode(re.sub(r"\s", "", body), validate=True)
        except (binascii.Error, ValueError):
            problems.append(f"embedded file {name!r} is not valid base64")
    return files, problems


# --- the static scan --------------------------------------------------------------------------

# Csound strings: "..." on one line, and {{ ... }} across lines (a /* inside one is text)
_STRING_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"|\{\{.*?\}\}', re.S)
_OUTSIDE_PATH = re.compile(r"(?:~|\.\.)?/[^\s\"]*|[A-Za-z][\w+.-]*://\S*|(?:.*/)?\.\.(?:/.*)?")


def _strip_comments(code: str) -> str:
    """Code without ; // and /* */ comments (string literals kept)."""
    out, i, n = [], 0, len(code)
    while i < n:
        c = code[i]
        if c == '"' or code.startswith("{{", i):
            m = _STRING_RE.match(code, i)
            if m:
                out.append(m.group())
                i = m.end()
                continue
        if c == ";" or code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j < 0 else j
            continue
        if code.startswith("/*", i):
            j = code.find("*/", i + 2)
            end = n if j < 0 else j + 2
            out.append("\n" * code.count("\n", i, end))
            i = end
            continue
        out.append(c)
        i += 1
    return "".join(out)


_DEFINE_RE = re.compile(r"#define\s+(\w+)\s*(?:\(([^)]*)\))?\s*#((?:[^#\\]|\\.)*)#")
_USE_RE = re.compile(r"\$(\w+)\.?(?:\(([^)]*)\))?")


def _expand_macros(code: str) -> str:
    """Substitute #define bodies (arguments too) for $NAME uses, as Csound's preprocessor does,
    so that a macro cannot assemble a refused name. Macros whose uses cannot be resolved are
    left as they are; the text is also scanned with every macro use removed, which joins
    fragments the way an unresolved concatenation would."""
    macros = {m.group(1): ([a.strip() for a in re.split(r"['#]", m.group(2))] if m.group(2)
                           else [], m.group(3)) for m in _DEFINE_RE.finditer(code)}

    def use(m: re.Match) -> str:
        if m.group(1) not in macros:
            return m.group(0)
        names, body = macros[m.group(1)]
        values = re.split(r"['#]", m.group(2)) if m.group(2) is not None else []
        for name, value in sorted(zip(names, values), key=lambda p: -len(p[0])):
            body = re.sub(rf"\${re.escape(name)}\.?", lambda _: value, body)
        return body

    limit = 4 * len(code) + 100_000  # expansions that keep growing are cut off, not followed
    for _ in range(16):
        new = _USE_RE.sub(use, code)
        if new == code or len(new) > limit:
            break
        code = new
    return code


def _refusal(name: str) -> str | None:
    if name in REFUSED_OPCODES:
        return REFUSED_OPCODES[name]
    for pattern, reason in REFUSED_PATTERNS:
        if pattern.fullmatch(name):
            return reason
    return None


def scan(code: str) -> list[str]:
    """Reasons to refuse ``code`` without running it (empty when it may run)."""
    problems: list[str] = []
    for m in _OPTIONS_RE.finditer(code):
        flags = re.sub(r";[^\n]*|/\*.*?\*/", " ", m.group(2), flags=re.S)
        problems += [f"<CsOptions> flag {re.search(flag, flags).group().strip()!r} ({why})"
                     for flag, why in _FLAG_REFUSALS.items() if re.search(flag, flags)]
    texts = [code]
    for m in re.finditer(r"<CsFileB\b[^>]*>(.*?)</CsFileB>", code, re.S | re.I):
        with contextlib.suppress(binascii.Error, ValueError, UnicodeDecodeError):
            texts.append(base64.b64decode(re.sub(r"\s", "", m.group(1))).decode("utf-8"))
    for text in texts:
        expanded = _expand_macros(text)
        plain = _strip_comments(expanded)
        # also with macro uses and their punctuation removed: "$A$B" may join into one name
        joined = _USE_RE.sub("", _strip_comments(re.sub(r"\$\w+\.?", "", expanded)))
        words = re.findall(r"[A-Za-z_]\w*", _STRING_RE.sub(" ", plain) + "\n" +
                           _STRING_RE.sub(" ", joined))
        for name in dict.fromkeys(words):
            reason = _refusal(name)
            if reason:
                problems.append(f"opcode {name} ({reason})")
        for m in re.finditer(r"#include\s+([\"|])(.*?)\1", plain):
            if _OUTSIDE_PATH.fullmatch(m.group(2).strip()):
                problems.append(f"#include {m.group(2)!r} (outside the sandbox directory)")
        literals = [_literal(m.group()) for m in _STRING_RE.finditer(plain)]
        for value in literals + _built_strings(plain):
            value = value.strip()
            if len(value) > 1 and _OUTSIDE_PATH.fullmatch(value):
                problems.append(f"path {value!r} (outside the sandbox directory)")
    for m in re.finditer(r"<Cs(?:File|FileB|SampleB|MidifileB)\b([^>]*)>", code, re.I):
        name = re.search(r"filename\s*=\s*\"?([^\">\s]+)", m.group(1))
        if name and ("/" in name.group(1) or name.group(1).startswith(".")):
            problems.append(f"embedded file name {name.group(1)!r} (outside the sandbox)")
    if re.search(r"<CsScore\b[^>]*\bbin\s*=", code, re.I):
        problems.append("<CsScore bin=...> (runs an external program)")
    return list(dict.fromkeys(problems))


def _literal(token: str) -> str:
    return token[2:-2] if token.startswith("{{") else token[1:-1]


_STRING_OP = re.compile(r"^\s*(S\w+|gS\w+)\s*(=|init|strcpyk?|strcatk?|sprintfk?)\s*(.*)$", re.M)


def _built_strings(code: str) -> list[str]:
    """The values of string variables built from literals with strcat/sprintf/=, followed line
    by line, so that a path assembled at run time ("/" + "etc" + "/passwd") is seen whole."""
    values: dict[str, str] = {}
    built = []
    for target, op, rest in _STRING_OP.findall(code):
        parts = [p.strip() for p in re.findall(r'"(?:[^"\\]|\\.)*"|\{\{.*?\}\}|[^,]+', rest)]
        known = [_literal(p) if p[:1] in '"{' else values.get(p) for p in parts if p]
        if not known or None in known:
            continue
        if op.startswith("strcat"):
            value = "".join(known[:2])
        elif op.startswith("sprintf"):
            value = known[0]
            for arg in known[1:]:
                value = re.sub(r"%[-+ #0-9.]*[sdfiegc]", lambda _: arg, value, count=1)
        else:
            value = known[0]
        values[target] = value
        built.append(value)
    return built


# --- opcode vocabularies (for telling a misspelling from a missing plugin) -------------------

@functools.lru_cache(maxsize=1)
def installed_opcodes() -> frozenset[str]:
    """Opcodes the sandbox's Csound can have (``csound -z`` with every plugin it may load)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        folder = full_folder(CSOUND, COMMON_FLAGS)
        return list_opcodes(CSOUND, COMMON_FLAGS, Path(folder) if folder else None)
    return frozenset()


@functools.lru_cache(maxsize=1)
def manual_opcodes() -> frozenset[str]:
    """Opcode names documented in the installed HTML manual (empty when it is not installed)."""
    return documented_opcodes()


# --- running Csound ---------------------------------------------------------------------------

def _run(args: list[str], cwd: Path, limits: isolation.Limits, plugins: str | None = None,
         writable: tuple[str, ...] = ()) -> tuple[int | None, str, bool, float]:
    """Run Csound confined (``isolation.run``); (returncode, output, timed_out, seconds)."""
    out = isolation.run(CSOUND, args, cwd, limits, plugins=plugins, writable=writable)
    return out.returncode, out.output, out.timed_out, out.elapsed


def isolation_status() -> str:
    """How Csound runs here: "bubblewrap", or "none (...)" when the user opted out; raises
    ``IsolationUnavailable`` when nothing confines Csound and the user has not opted out."""
    return isolation.status(CSOUND)


# --- reading Csound's messages ----------------------------------------------------------------

_FROM_FILE = re.compile(r" from file [^\n]*? \(\d+\),(?: line (\d+):)?")
_LINE_NO = re.compile(r"^\s*(?:Line:?\s*(\d+)|line\s+(\d+)\b)")
_MESSAGE_START = re.compile(
    r"^(?:error:|INIT ERROR|PERF ERROR|sread:|WARNING:|Unable to|Can't open display|"
    r"memory allocate failure|(?i:.*(?:failed to open|cannot open|could not open)))",
)
_NOISE = re.compile(
    r"Internal error in print_input_backtrace|Parsing failed|Stopping on parser failure|"
    r"cannot compile orchestra|^\s*$"
)


def parse_messages(output: str, line_map: list[int | None] | None = None) -> list[Diagnostic]:
    """Csound's errors and warnings, with line numbers mapped back to the submitted code."""
    text = _FROM_FILE.sub(lambda m: f"\nLine {m.group(1)}\n" if m.group(1) else "\n", output)
    diags: list[Diagnostic] = []
    current: Diagnostic | None = None
    for raw in text.split("\n"):
        line = raw.strip()
        m = _LINE_NO.match(line)
        if m and current is not None and current.line is None:
            current.line = int(m.group(1) or m.group(2))
            continue
        if _NOISE.search(line) or not _MESSAGE_START.match(line):
            if current is not None and line.startswith(("Found:", ">>>")):
                current.message += " | " + line
            continue
        severity = "warning" if line.startswith("WARNING") else "error"
        message = re.sub(r"^(error:|WARNING:)\s*", "", line)
        at = re.search(r"\bline (\d+)\b", message)
        current = Diagnostic(int(at.group(1)) if at else None, severity, message)
        diags.append(current)
    for d in diags:
        if d.line is not None and line_map is not None:
            mapped = line_map[d.line - 1] if 0 < d.line <= len(line_map) else None
            # Csound's own "line N" in the text would contradict the mapped number
            d.message = re.sub(rf"\bline {d.line}\b", f"line {mapped or '?'}", d.message)
            d.line = mapped
    unique = {(d.line, d.severity, d.message): d for d in diags}
    return list(unique.values())


def _opcode_words(code: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", _STRING_RE.sub(" ", _strip_comments(code))))


_KEYWORDS = {
    "instr", "endin", "opcode", "endop", "if", "then", "else", "elseif", "endif", "while",
    "until", "do", "od", "goto", "igoto", "kgoto", "ithen", "kthen", "return", "xin", "xout",
    "sr", "kr", "ksmps", "nchnls", "nchnls_i", "0dbfs", "A4", "for", "in", "void", "struct",
}
_VARIABLE = re.compile(r"[aikgSfwp]\w*|gS\w*|g[aikfw]\w*")


def _orchestra_part(code: str) -> str:
    m = re.search(r"<CsInstruments>(.*?)</CsInstruments>", code, re.S | re.I)
    return m.group(1) if m else ("" if is_csd(code) else code)


def _unknown_names(code: str) -> tuple[list[str], list[str]]:
    """(unknown opcodes, opcodes of plugins this build lacks) used in the orchestra."""
    installed = installed_opcodes()
    if not installed:
        return [], []
    orc = _STRING_RE.sub(" ", _strip_comments(_orchestra_part(code)))
    known = installed | set(re.findall(r"^\s*opcode\s+(\w+)", orc, re.M)) | _KEYWORDS
    manual = manual_opcodes()
    used = set(re.findall(r"\b([A-Za-z_]\w*)(?::\w+)?\s*\(", orc))  # function-call syntax
    for line in orc.split("\n"):
        if re.match(r"^\s*(\w+:|#|instr\b|opcode\b|endin\b|endop\b)", line) or "=" in line:
            continue
        tokens = re.findall(r"[A-Za-z_]\w*(?::\w+)?(?:\[\])*|[,(]|[^\s\w,(]+|\d\w*", line)
        names = [t.split(":")[0].split("[")[0] for t in tokens]
        if not names or not re.fullmatch(r"[A-Za-z_]\w*", names[0]):
            continue
        i = 0
        while i + 2 < len(names) and names[i + 1] == ",":  # several outputs
            i += 2
        first, after = names[i], names[i + 1] if i + 1 < len(names) else None
        is_name = after is not None and re.fullmatch(r"[A-Za-z_]\w*", after)
        if i > 0:
            if is_name:
                used.add(after)
        elif first in known or first in manual or not is_name:
            used.add(first)
        elif after in known or after in manual or _VARIABLE.fullmatch(first):
            used.add(after)
        else:
            used.add(first)
    words = re.findall(r"[A-Za-z_]\w*", orc)
    # a variable-looking name used more than once is a variable on a continuation line
    missing = sorted(n for n in used - known
                     if not (_VARIABLE.fullmatch(n) and words.count(n) > 1))
    return [n for n in missing if n not in manual], [n for n in missing if n in manual]


def _categorize(code: str, prep: _Prepared, diags: list[Diagnostic], rc: int | None,
                timed_out: bool, output: str) -> tuple[str, list[str]]:
    notes: list[str] = []
    if timed_out:
        return "timeout", notes
    if rc is not None and rc < 0:
        sig = -rc
        if sig == signal.SIGXCPU:
            return "timeout", ["CPU time limit reached"]
        if sig == signal.SIGXFSZ:
            return "crash", ["output size limit reached"]
        return "crash", [f"killed by signal {signal.Signals(sig).name}"]
    # Csound catches these signals itself, reports them and exits with status 1
    if "File size limit exceeded" in output:
        return "crash", ["output size limit reached"]
    if "CPU time limit exceeded" in output:
        return "timeout", ["CPU time limit reached"]
    errors = [d for d in diags if d.severity == "error"]
    if not errors and rc in (0, None):
        return "ok", notes
    text = " ".join(d.message for d in errors)
    if "memory allocate failure" in text or re.search(r"ftgen error|cannot allocate", text, re.I):
        notes.append("memory limit or allocation failure")
    if "Can't open display" in output:
        return "gui", notes
    unknown, plugin = _unknown_names(code)
    # A CSD whose sections do not nest never reaches the orchestra parser: not compiled
    if re.search(r"Reading CSD failed|Missing end tag|input file \(null\)|Csound Command ERROR",
                 output):
        return "syntax", notes + ["the CSD's <Cs...> sections are malformed"]
    if re.search(r"syntax error|Unable to find opcode|used before defined", text):
        if plugin:
            return "plugin", [f"not in this Csound build: {', '.join(plugin)}"]
        if unknown:
            return "unknown-opcode", [f"unknown opcode: {', '.join(unknown)}"]
        return "syntax", notes
    if re.search(r"failed to open|cannot open|could not open|No such file|error opening|"
                 r"unable to load", text, re.I):
        return "needs-input-file", notes
    if re.search(r"INIT ERROR|PERF ERROR", text):
        if _uses_realtime(code, prep.options):
            return "realtime", notes
        return "runtime-error", notes
    if any(m in text for m in ("sread", "error")) or "cannot compile orchestra" in output:
        return "syntax", notes
    return "runtime-error", notes


def _uses_realtime(code: str, options: str) -> bool:
    options = re.sub(r";[^\n]*|/\*.*?\*/", " ", options, flags=re.S)  # "; -iadc" is off
    words = _opcode_words(_orchestra_part(code))
    # -iadc alone is no evidence: many print-only manual examples carry "-odac -iadc"
    return bool(MIDI_FLAGS.search(options) or words & AUDIO_INPUT_OPCODES
                or words & MIDI_OPCODES)


# --- measuring the sound ----------------------------------------------------------------------

SILENCE_PEAK = 1e-4  # -80 dBFS


def read_wav(path: str | os.PathLike):
    """(samples [frames, channels] float64, sample rate) of a WAV, tolerating a header that a
    killed writer never finished (the data then runs to the end of the file)."""
    import numpy as np

    data = Path(path).read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path} is not a WAV file")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt = struct.unpack("<HHIIHH", data[body:body + 16])
        elif chunk_id == b"data":
            end = body + size if 0 < size <= len(data) - body else len(data)
            payload = data[body:end]
            break
        pos = body + size + (size & 1)
    if fmt is None or payload is None:
        raise ValueError(f"{path} has no fmt or data chunk")
    tag, channels, rate, _, _, bits = fmt
    if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the sub-format decides
        tag = 3 if bits in (32, 64) and b"\x03\x00\x00\x00\x00\x00\x10\x00" in data[:200] else 1
    dtype = {(3, 32): "<f4", (3, 64): "<f8", (1, 16): "<i2", (1, 32): "<i4"}.get((tag, bits))
    if dtype is None:
        raise ValueError(f"{path}: unsupported WAV format tag {tag} with {bits} bits")
    width = bits // 8 * channels
    samples = np.frombuffer(payload[: len(payload) // width * width], dtype=dtype)
    samples = samples.astype(np.float64).reshape(-1, channels)
    if tag == 1:
        samples /= float(2 ** (bits - 1))
    return samples, rate


def measure(samples, rate: int) -> dict:
    import numpy as np

    finite = np.isfinite(samples)
    clean = np.where(finite, samples, 0.0)
    peak = float(np.max(np.abs(clean))) if clean.size else 0.0
    rms = float(np.sqrt(np.mean(clean ** 2))) if clean.size else 0.0
    return {
        "peak": peak, "rms": rms, "nan": bool(clean.size and not finite.all()),
        "silent": peak < SILENCE_PEAK, "clipping": peak > 1.0 + 1e-6,
        "seconds": samples.shape[0] / rate if rate else 0.0,
        "channels": int(samples.shape[1]) if samples.ndim == 2 else 0, "sample_rate": int(rate),
    }


# --- the API ----------------------------------------------------------------------------------

def _limits(timeout: float, memory_mb: int, file_bytes: int) -> isolation.Limits:
    return isolation.Limits(timeout=timeout, cpu_seconds=max(1, int(timeout) + 1),
                            memory_bytes=memory_mb << 20, file_bytes=file_bytes)


def _refused_result(cls, prep: _Prepared, **extra):
    diags = [Diagnostic(None, "error", f"refused: {r}") for r in prep.refused]
    return cls(ok=False, category="refused", diagnostics=diags, refused=prep.refused, stderr="",
               network_isolated=_isolated(), **extra)


def _isolated() -> bool:
    return isolation.probe(CSOUND) is None


def _notes_common() -> list[str]:
    return [] if _isolated() else [f"not isolated: {isolation_status()}"]


Assets = Mapping[str, "str | os.PathLike | bytes"]


def manual_assets(examples_dir: str | os.PathLike = MANUAL_EXAMPLES) -> dict[str, Path]:
    """The sound, table and include files the manual's examples read (``fox.wav``, ...), by the
    name the examples use (``.gz`` files are decompressed when staged)."""
    out = {}
    for path in sorted(Path(examples_dir).glob("*")):
        if path.is_file() and path.suffix != ".csd":
            out[path.name.removesuffix(".gz")] = path
    return out


def _stage_assets(cwd: Path, code: str, assets: Assets | None, embedded: dict[str, bytes]) -> None:
    """Copy into the sandbox the assets whose names the code mentions, and its embedded files."""
    for name, data in embedded.items():
        (cwd / name).write_bytes(data)
    for name, source in (assets or {}).items():
        if "/" in name or name.startswith(".") or name not in code:
            continue
        if isinstance(source, bytes):
            data = source
        elif str(source).endswith(".gz") and not name.endswith(".gz"):
            with gzip.open(source) as fh:
                data = fh.read()
        else:
            data = Path(source).read_bytes()
        (cwd / name).write_bytes(data)


def check(code: str, *, timeout: float = 10.0, memory_mb: int = 1024,
          assets: Assets | None = None) -> CheckResult:
    """Parse and type-check ``code`` (a CSD or an orchestra fragment); runs none of it.
    ``assets`` (name -> path or bytes) are files the code may read, e.g. ``manual_assets()``."""
    prep = _prepare(code, render_seconds=None)
    if prep.refused:
        return _refused_result(CheckResult, prep)
    isolation_status()  # refuse before writing anything when nothing can confine Csound
    with tempfile.TemporaryDirectory(prefix="csound-check-") as tmp:
        (Path(tmp) / "input.csd").write_text(prep.text)
        _stage_assets(Path(tmp), code, assets, prep.files)
        rc, output, timed_out, elapsed = _run(
            ["--syntax-check-only", *COMMON_FLAGS, "input.csd"], Path(tmp),
            _limits(timeout, memory_mb, 8 << 20), folder_for(prep.text, CSOUND, COMMON_FLAGS))
    diags = parse_messages(output, prep.line_map)
    category, notes = _categorize(code, prep, diags, rc, timed_out, output)
    if rc not in (0, None) and category == "ok":
        category = "syntax"
    if category != "ok" and not any(d.severity == "error" for d in diags):
        diags.append(Diagnostic(None, "error", _summary(category, rc, timeout)))
    return CheckResult(ok=category == "ok", category=category, diagnostics=diags, refused=[],
                       stderr=output, returncode=rc, elapsed=elapsed,
                       network_isolated=_isolated(), notes=_notes_common() + notes)


def render(code: str, *, seconds: float = 2.0, timeout: float = 30.0, memory_mb: int = 1024,
           max_channels: int = 8, max_sample_rate: int = 192000,
           keep_wav: str | os.PathLike | None = None,
           assets: Assets | None = None) -> RenderResult:
    """Render ``seconds`` of ``code`` offline to a float WAV in a temp dir and measure it.

    Refused code never runs. ``keep_wav`` copies the WAV there (when one was written);
    ``assets`` (name -> path or bytes) are input files the code may read."""
    prep = _prepare(code, render_seconds=seconds)
    if prep.refused:
        return _refused_result(RenderResult, prep)
    cap = int((seconds + 1) * max_sample_rate * max_channels * 4) + (1 << 16)
    isolation_status()
    with tempfile.TemporaryDirectory(prefix="csound-render-") as tmp:
        cwd = Path(tmp)
        (cwd / "input.csd").write_text(prep.text)
        _stage_assets(cwd, code, assets, prep.files)
        (cwd / "output.wav").touch()  # the one file the run may write
        rc, output, timed_out, elapsed = _run(
            [*COMMON_FLAGS, "-W", "-f", "-o", "output.wav", "input.csd"], cwd,
            _limits(timeout, memory_mb, cap), folder_for(prep.text, CSOUND, COMMON_FLAGS),
            writable=("output.wav",))
        wav = cwd / "output.wav"
        metrics: dict = {}
        notes: list[str] = []
        if wav.is_file() and wav.stat().st_size > 44:
            try:
                metrics = measure(*read_wav(wav))
            except ValueError as exc:
                notes.append(str(exc))
            if keep_wav:
                shutil.copyfile(wav, keep_wav)
    diags = parse_messages(output, prep.line_map)
    category, more = _categorize(code, prep, diags, rc, timed_out, output)
    notes += more
    if rc not in (0, None) and category == "ok":
        category = "runtime-error"
    if category == "ok":
        if not metrics:
            category, notes = "silent", notes + ["no audio was written"]
        elif metrics["nan"]:
            category = "nan"
        elif metrics["silent"]:
            category = "realtime" if _uses_realtime(code, prep.options) else "silent"
        elif metrics["clipping"]:
            category = "clipping"
    if category not in RAN_CATEGORIES and not any(d.severity == "error" for d in diags):
        diags.append(Diagnostic(None, "error", _summary(category, rc, timeout, notes)))
    return RenderResult(
        ok=category in RAN_CATEGORIES, category=category, diagnostics=diags, refused=[],
        stderr=output, returncode=rc, elapsed=elapsed,
        network_isolated=_isolated(), notes=_notes_common() + notes,
        **{k: metrics.get(k, v) for k, v in
           {"peak": None, "rms": None, "silent": not metrics, "clipping": False, "nan": False,
            "seconds": 0.0, "channels": 0, "sample_rate": 0}.items()},
    )


def _summary(category: str, rc: int | None, timeout: float, notes: Iterable[str] = ()) -> str:
    extra = "; ".join(notes)
    if category == "timeout":
        return f"killed after the {timeout:g} s time limit" + (f" ({extra})" if extra else "")
    text = f"{CATEGORIES.get(category, category)} (csound exit status {rc})"
    return text + (f": {extra}" if extra else "")


def _many(fn, codes: Iterable[str], workers: int, progress: bool, desc: str, **kwargs) -> list:
    codes = list(codes)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda c: fn(c, **kwargs), codes)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(codes), desc=desc, unit="file")
        return list(results)


def check_many(codes: Iterable[str], workers: int = 2, *, progress: bool = False,
               **kwargs) -> list[CheckResult]:
    """``check`` each code in parallel subprocesses; results in input order."""
    return _many(check, codes, workers, progress, "checking", **kwargs)


def render_many(codes: Iterable[str], workers: int = 2, *, progress: bool = False,
                **kwargs) -> list[RenderResult]:
    """``render`` each code in parallel subprocesses; results in input order."""
    return _many(render, codes, workers, progress, "rendering", **kwargs)
