"""Attacks on the Csound sandbox (issue 29): isolation is the guarantee, the static scan a courtesy.

Each attack goes through ``sandbox.check`` and ``sandbox.render`` and must end in a refusal that
says why, or in a contained run: the secrets planted in a world-readable folder outside the
sandbox never show in the result, a world-writable canary folder stays empty, no process the
attack started outlives the call, nothing reaches a socket the test listens on. Unsandboxed,
Csound 6.18 does escape with nearly all of these texts (the file was run with ``check`` and
``render`` swapped for a bare ``csound`` call while it was written); the few it defeats on its
own say so, and stay because a sandbox must not lean on that. ``hidden`` code sits where a text
scan does not look, so those attacks measure the isolation alone.

    .venv/bin/python -m pytest tests/test_attacks_sandbox.py -q
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from csound_assistant import sandbox

CHECK = {"timeout": 5}
RENDER = {"seconds": 0.5, "timeout": 5}
CAT = "#define CAT(a'b) #$a$b#\n"  # $CAT(sys'tem_i) becomes system_i after the scan looked
TEMP = Path(tempfile.gettempdir())


def csd(orchestra: str, score: str = "i 1 0 0.5", options: str = "", before: str = "") -> str:
    """A CSD; ``before`` goes after the first <CsOptions> block (more blocks, embedded files)."""
    return ("<CsoundSynthesizer>\n<CsOptions>\n" + options + "\n</CsOptions>\n" + before +
            "<CsInstruments>\nsr = 48000\nksmps = 64\nnchnls = 2\n0dbfs = 1\n" + orchestra +
            "</CsInstruments>\n<CsScore>\n" + score + "\ne\n</CsScore>\n</CsoundSynthesizer>\n")


def options_block(*lines: str) -> str:
    return "<CsOptions>\n" + "\n".join(lines) + "\n</CsOptions>\n"


def built(path, how: str = "strcat") -> str:
    """A Csound expression that makes ``path`` at run time; none of its literals starts with
    ``/`` or holds ``..``, so no scan of the text sees a path."""
    rest = str(path).lstrip("/")
    return {"strcat": f'strcat("/", "{rest}")', "strsub": f'strsub("x/{rest}", 1)',
            "sprintf": f'sprintf("%c%s", 47, "{rest}")'}[how]


# --- the planted folder -----------------------------------------------------------------------

@dataclass
class Outside:
    """A folder the sandbox must neither read nor write. It sits in the system temp dir, opened
    to everyone: pytest's tmp_path is inside a 0700 folder, where permissions alone would hide it
    from an unprivileged Csound and the test would prove nothing about the isolation."""

    root: Path
    kept_wav: Path  # where render copies its WAV: the file the sandbox hands back
    token: str = field(default_factory=lambda: "tok" + secrets.token_hex(8))
    number: int = field(default_factory=lambda: 10_000_000 + secrets.randbelow(89_999_999))
    sample: int = field(default_factory=lambda: 8193 + 2 * secrets.randbelow(4000))
    rate: int = field(default_factory=lambda: 100_003 + secrets.randbelow(80_000))
    marker: str = field(default_factory=lambda: f"27.{10_000 + secrets.randbelow(89_999)}")
    stray: str = field(default_factory=lambda: "csound-attack-stray-" + secrets.token_hex(6))
    before: list = field(default_factory=list)

    def __post_init__(self):
        self.secret.write_text(self.token + "\n")
        self.numbers.write_text(f"{self.number}\n")
        with wave.open(str(self.wav), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.rate)
            out.writeframes(struct.pack("<h", self.sample) * (self.rate // 2))
        self.listing.mkdir()
        (self.listing / f"{self.token}.txt").write_text("listed\n")
        self.write.mkdir()
        for path in [self.root, *self.root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.write.chmod(0o777)
        self.before = self.snapshot()

    secret = property(lambda self: self.root / "secret.txt")
    numbers = property(lambda self: self.root / "numbers.txt")
    wav = property(lambda self: self.root / "planted.wav")
    listing = property(lambda self: self.root / "listing")
    write = property(lambda self: self.root / "write")
    level = property(lambda self: self.sample / 32768)

    @property
    def shell(self) -> str:
        """A shell command that detaches a process, writes outside and reads the secret."""
        return (f"setsid nohup sleep {self.marker} >/dev/null 2>&1 & "
                f"touch {self.write}/shell-ran; cat {self.secret}")

    def leaks(self, text: str, *extra: str) -> list[str]:
        level = re.escape(f"{self.level:.6f}")
        patterns = [re.escape(self.token), rf"(?<![\d.]){self.number}(?!\d)",
                    rf"(?<![\d.]){self.rate}(?!\d)", rf"(?<!\d){level}(?!\d)",
                    # /etc/passwd: a whole line, or its first word as Csound's parser echoes it
                    r"root:[^:\n]*:0:0:", r">>> root:", *map(re.escape, extra)]
        return [p for p in patterns if re.search(p, text)]

    def snapshot(self) -> list[tuple[str, int, int]]:
        return sorted((str(p.relative_to(self.root)), p.stat().st_mode, p.stat().st_size)
                      for p in self.root.rglob("*") if self.write not in (p, *p.parents))

    def written(self) -> list[Path]:
        near = {TEMP, Path.cwd(), Path.cwd().parent, Path.home()}
        return sorted([*self.write.iterdir(), *(d / self.stray for d in near
                                                if (d / self.stray).exists())])

    def survivors(self, wait: float = 0.0) -> list[str]:
        """Live processes whose command line or name holds the marker, polled for ``wait`` s."""
        deadline = time.monotonic() + wait
        while True:
            found = []
            for proc in Path("/proc").iterdir():
                with contextlib.suppress(OSError):
                    stat = (proc / "stat").read_text(errors="replace")
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                        errors="replace")
                    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
                    if not zombie and (self.marker in cmdline or self.marker in stat):
                        found.append(f"{proc.name}: {cmdline or stat}")
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def refresh(self):
        """Take the 'before' listing again after planting more files."""
        for path in self.root.rglob("*"):
            path.chmod(0o777 if path == self.write else 0o755 if path.is_dir() else 0o644)
        self.before = self.snapshot()


@pytest.fixture
def outside(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="csound-attack-"))
    planted = Outside(root, tmp_path / "kept.wav")
    yield planted
    for line in planted.survivors():  # the test has failed already; do not leave them running
        with contextlib.suppress(OSError):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    for path in planted.written():
        if path.name == planted.stray:
            path.unlink()
    shutil.rmtree(root, ignore_errors=True)


def run(mode: str, code: str, outside: Outside, **limits):
    if mode == "check":
        return sandbox.check(code, **{**CHECK, **limits})
    return sandbox.render(code, keep_wav=outside.kept_wav, **{**RENDER, **limits})


def assert_contained(result, outside: Outside, *extra_secrets: str, wait: float = 0.0):
    """Refused with a reason, or ran with nothing read, written or left running outside."""
    if result.category == "refused":
        assert result.refused and all(len(r.strip()) > 8 for r in result.refused), (
            f"refused without saying why: {result.refused!r}")
    text = "\n".join([result.stderr, *map(str, result.diagnostics), *result.notes,
                      *result.refused])
    leaked = outside.leaks(text, *extra_secrets)
    assert not leaked, f"planted secret ({leaked}) in the {result.category} result:\n{text[-3000:]}"
    if isinstance(result, sandbox.RenderResult):
        if result.peak is not None:
            assert abs(result.peak - outside.level) > 1e-6, "the audio is the planted sound file"
        if outside.kept_wav.exists():
            kept = outside.kept_wav.read_bytes()
            assert outside.token.encode() not in kept and str(outside.number).encode() not in kept
    assert outside.written() == [], f"written outside the sandbox: {outside.written()}"
    assert outside.snapshot() == outside.before, "the planted folder changed"
    alive = outside.survivors(wait)
    assert not alive, f"processes outlived the call: {alive}"


def assert_both_modes_contained(code: str, outside: Outside, *extra: str, wait: float = 0.0):
    for mode in ("check", "render"):
        assert_contained(run(mode, code, outside), outside, *extra, wait=wait)


# --- shell: every way of reaching system/system_i past a word list -----------------------------

def _embedded_include(payload: bytes, orchestra: str, before: str = "") -> str:
    b64 = base64.b64encode(payload).decode()
    return csd(orchestra, before=before + f'<CsFileB filename="inc.orc">\n{b64}\n</CsFileB>\n')


def hidden(body: str, before: str = "", words: str = "") -> str:
    """``body`` as instrument 1 in an embedded include with a byte that is not UTF-8: a text scan
    that decodes embedded files never reads it, so this measures the isolation alone. ``words``
    go in a comment of the visible text (plugin selection reads comments; no scan does)."""
    payload = (CAT + "instr 1 ; \xff\n" + body + "\nendin\n").encode("latin-1")
    return _embedded_include(payload, f"; {words}\n#include \"inc.orc\"\n", before)


def _nested_macros(depth: int):
    defines = "#define M0 #sys#\n" + "".join(f"#define M{i} #$M{i - 1}.#\n"
                                             for i in range(1, depth))
    return lambda o: csd(defines + f'instr 1\n ires $M{depth - 1}.tem_i 1, "{o.shell}"\nendin\n')


SHELL = {
    "system_i": lambda o: csd(f'instr 1\n ires system_i 1, "{o.shell}"\nendin\n'),
    "system-k-rate": lambda o: csd(f'instr 1\n kres system 1, "{o.shell}"\nendin\n'),
    "function-call": lambda o: csd(f'instr 1\n ires = system_i(1, "{o.shell}")\nendin\n'),
    "macro-arguments": lambda o: csd(CAT + f'instr 1\n ires $CAT(sys\'tem_i) 1, "{o.shell}"\n'
                                           "endin\n"),
    "macro-argument-dot": lambda o: csd("#define F(x) #$x.tem_i#\n"
                                        f'instr 1\n ires $F(sys) 1, "{o.shell}"\nendin\n'),
    "nested-macros-8-deep": _nested_macros(8),
    "nested-macros-12-deep": _nested_macros(12),
    "macro-concatenation": lambda o: csd("#define A #sy#\n#define B #stem_i#\n"
                                         f'instr 1\n ires $A.$B. 1, "{o.shell}"\nendin\n'),
    "fake-block-comment-in-braces": lambda o: csd(
        f'instr 1\n S1 = {{{{ /* }}}}\n ires system_i 1, "{o.shell}"\n S2 = {{{{ */ }}}}\nendin\n'),
    "fake-line-comment-in-braces": lambda o: csd(
        f'instr 1\n S1 = {{{{ // }}}}\n ires system_i 1, "{o.shell}"\nendin\n'),
    "semicolon-comment-continuation": lambda o: csd(
        f'instr 1\n ; a comment that ends in a backslash \\\n ires system_i 1, "{o.shell}"\n'
        "endin\n"),
    "backslash-line-continuation": lambda o: csd(
        f'instr 1\n ires system_i \\\n   1, "{o.shell}"\nendin\n'),
    "embedded-include-not-utf8": lambda o: _embedded_include(
        f'instr 1 ; \xff\n ires system_i 1, "{o.shell}"\nendin\n'.encode("latin-1"),
        '#include "inc.orc"\n'),
    "embedded-include-defines-macro": lambda o: _embedded_include(
        b"#define S #sys#\n", f'#include "inc.orc"\ninstr 1\n ires $S.tem_i 1, "{o.shell}"\n'
                              "endin\n"),
    "compilestr": lambda o: csd(
        f'instr 1\n ires compilestr strcat("instr 2\\n ires sys", "tem_i 1, \\"{o.shell}\\"\\n'
        'endin\\n")\n schedule 2, 0, 0.1\nendin\n'),
    "compilestr-built-name": lambda o: csd(
        CAT + f'instr 1\n ires $CAT(compile\'str) strcat("instr 2\\n ires sys", '
              f'"tem_i 1, \\"{o.shell}\\"\\nendin\\n")\n schedule 2, 0, 0.1\nendin\n'),
    "evalstr-built-name": lambda o: csd(
        CAT + f'instr 1\n ires $CAT(eval\'str) strcat("ires sys", "tem_i 1, \\"{o.shell}\\"'
              '\\nreturn 0")\nendin\n'),
    "score-bin-sh": lambda o: csd('instr 1\n prints "score ran\\n"\nendin\n').replace(
        "<CsScore>\ni 1 0 0.5", f"<CsScore bin=\"sh\">\n{o.shell} >&2\n"
                                "echo 'i 1 0 0.1' > \"$2\"\nexit 0\n#"),
    "omacro-in-second-options": lambda o: csd(
        f'instr 1\n ires $S.tem_i 1, "{o.shell}"\nendin\n',
        before=options_block("--omacro:S=sys")),
    "python-opcodes-built-names": lambda o: csd(
        CAT + "; pyinit pyruni\n$CAT(py'init)\n"  # the comment loads the Python plugin
              f'instr 1\n $CAT(py\'runi) "import os; os.system(\'{o.shell}\')"\nendin\n'),
    "system_i-hidden": lambda o: hidden(f' ires system_i 1, "{o.shell}"'),
}


@pytest.mark.parametrize("attack", SHELL)
def test_shell_escapes_are_refused_or_contained(attack, outside):
    assert_both_modes_contained(SHELL[attack](outside), outside)


# --- reading files outside the temp dir -------------------------------------------------------

def _print_line(path_expr: str) -> str:
    return f"instr 1\n Sl, il readfi {path_expr}\n prints Sl\nendin\n"


READ = {
    "readfi-strcat": lambda o: csd(_print_line(built(o.secret))),
    "readfi-strsub": lambda o: csd(_print_line(built(o.secret, "strsub"))),
    "readf-sprintf": lambda o: csd(
        f"instr 1\n Sl, kl readf {built(o.secret, 'sprintf')}\n puts Sl, kl + 1\nendin\n"),
    "gen23-numbers": lambda o: csd(
        f'instr 1\n ift ftgen 0, 0, 0, -23, {built(o.numbers)}\n'
        ' prints "%d\\n", tab_i(0, ift)\nendin\n'),
    "gen01-sound": lambda o: csd(
        f'instr 1\n ift ftgen 0, 0, 0, 1, {built(o.wav, "strsub")}, 0, 0, 1\n'
        ' prints "%f\\n", tab_i(10, ift)\nendin\n'),
    "diskin2": lambda o: csd(f"instr 1\n a1 diskin2 {built(o.wav)}, 1\n outs a1, a1\nendin\n"),
    "soundin": lambda o: csd(
        f"instr 1\n a1 soundin {built(o.wav, 'sprintf')}\n outs a1, a1\nendin\n"),
    "filesr-metadata": lambda o: csd(f'instr 1\n prints "%d\\n", filesr({built(o.wav)})\nendin\n'),
    "include-absolute": lambda o: csd(f'#include "{o.secret}"\ninstr 1\nendin\n'),
    "include-incdir-second-options": lambda o: csd(
        '#include "secret.txt"\ninstr 1\nendin\n',
        before=options_block(f"--env:INCDIR={o.root}")),
    "includestr-macro-path": lambda o: csd(
        f'#define P #{o.secret}#\n#includestr "$P"\ninstr 1\nendin\n'),
    "directory-built-path": lambda o: csd(
        f"instr 1\n SF[] directory {built(o.listing)}\n printarray SF\nendin\n"),
    "etc-passwd-strsub": lambda o: csd(_print_line(built("/etc/passwd", "strsub"))),
    "etc-passwd-incdir-second-options": lambda o: csd(
        '#include "passwd"\ninstr 1\nendin\n', before=options_block("--env:INCDIR=/etc")),
    "score-macro-path": lambda o: csd(
        "instr 1\n Sp = p4\n Sl, il readfi Sp\n prints Sl\nendin\n",
        score=f'#define D #{o.secret}#\ni 1 0 0.5 "$D"'),
    "sndinfo-utility-second-options": lambda o: csd(
        "instr 1\nendin\n", before=options_block(f"-U sndinfo {o.wav}")),
    "input-file-second-options": lambda o: csd(
        "instr 1\n a1 inch 1\n outs a1, a1\nendin\n", before=options_block(f"-i {o.wav}")),
    "sfdir-second-options": lambda o: csd(
        'instr 1\n a1 soundin "planted.wav"\n outs a1, a1\nendin\n',
        before=options_block(f"--env:SFDIR={o.root}")),
}


@pytest.mark.parametrize("attack", READ)
def test_reading_outside_files_is_refused_or_contained(attack, outside):
    assert_both_modes_contained(READ[attack](outside), outside)


def test_listing_the_temp_dir_shows_nothing_of_the_host(outside):
    code = csd(f"instr 1\n SF[] directory {built(TEMP)}\n printarray SF\nendin\n")
    # the attack names only the temp dir, so the planted folder's random name is a secret here
    assert_both_modes_contained(code, outside, outside.root.name)


# --- writing files outside the temp dir -------------------------------------------------------

def _writing(body: str) -> str:
    return csd(CAT + "gift ftgen 0, 0, 16, 10, 1\ninstr 1\n a1 poscil 0.3, 440\n k1 = 1\n" + body +
               "\nendin\n")


WRITE = {
    "fout": lambda o: _writing(f' fout "{o.write}/fout.wav", 14, a1'),
    "fout-built": lambda o: _writing(f" $CAT(fo'ut) {built(o.write / 'fout.wav')}, 14, a1"),
    "ftsave-built": lambda o: _writing(f" $CAT(ft'save) {built(o.write / 'ftsave.txt')}, 1, gift"),
    "dumpk-built": lambda o: _writing(f" $CAT(du'mpk) k1, {built(o.write / 'dumpk.txt')}, 8, 0"),
    "fprints-built": lambda o: _writing(
        f' $CAT(fpr\'ints) {built(o.write / "fprints.txt")}, "pwned\\n"'),
    "imagesave-built": lambda o: _writing(
        f" iimg imagecreate 4, 4\n imagesave iimg, {built(o.write / 'image.png')}"),
    "hdf5write-built": lambda o: _writing(  # the comment makes the sandbox load the HDF5 plugin
        f" $CAT(hdf5'write) {built(o.write / 'data.h5')}, a1 ; hdf5write"),
    "pvsfwrite-built": lambda o: _writing(
        f" fs pvsanal a1, 1024, 256, 1024, 1\n $CAT(pvsf'write) fs, {built(o.write / 'f.pvx')}"),
    "fiopen-built": lambda o: _writing(
        f" ih $CAT(fi'open) {built(o.write / 'fiopen.txt')}, 0\n $CAT(fou'ti) ih, 0, 0, 1"),
    "embedded-file-parent-dir": lambda o: csd(
        "instr 1\nendin\n", before=f'<CsFile filename="../{o.stray}">\nhello\n</CsFile>\n'),
    "embedded-file-absolute": lambda o: csd(
        "instr 1\nendin\n", before=f"<CsFile filename={o.write}/embedded.txt>\nhi\n</CsFile>\n"),
    # Csound 6.18 lets the command line's -o win over the document's: kept for a sandbox that
    # might not pass one
    "output-option-first": lambda o: csd(
        "instr 1\n a1 poscil 0.3, 440\n outs a1, a1\nendin\n", options=f"-o {o.write}/out.wav"),
    "output-option-second": lambda o: csd(
        "instr 1\n a1 poscil 0.3, 440\n outs a1, a1\nendin\n",
        before=options_block(f"-o {o.write}/out.wav")),
    "pvanal-utility-second-options": lambda o: csd(
        "instr 1\nendin\n", before=options_block(f"-U pvanal {o.wav} {o.write}/anal.pvx")),
    "fout-hidden": lambda o: hidden(
        f' a1 poscil 0.3, 440\n fout {built(o.write / "fout.wav")}, 14, a1', words="fout"),
    "ftsave-hidden": lambda o: hidden(
        f' ift ftgen 0, 0, 16, 10, 1\n ftsave {built(o.write / "ftsave.txt")}, 1, ift'),
    "fprints-hidden": lambda o: hidden(f' fprints {built(o.write / "fprints.txt")}, "pwned"'),
    "imagesave-hidden": lambda o: hidden(
        f" iimg imagecreate 4, 4\n imagesave iimg, {built(o.write / 'image.png')}",
        words="imagecreate imagesave"),
}


@pytest.mark.parametrize("attack", WRITE)
def test_writing_outside_is_refused_or_contained(attack, outside):
    assert_both_modes_contained(WRITE[attack](outside), outside)


@pytest.mark.parametrize("where", ["sandbox-dir", "temp-dir"])
def test_a_256_megabyte_file_hits_the_file_size_limit(where, outside):
    # the temp dir is the host's under an unisolated Csound: the stray name is cleaned up after
    path = '"big.bin"' if where == "sandbox-dir" else built(TEMP / outside.stray)
    code = hidden(f" ibig ftgen 0, 0, -(2^25), -2, 0\n ftsave {path}, 1, ibig")
    result = run("render", code, outside, timeout=10)
    assert not result.ok, "a 256 MB file was written in a 0.5 s render: no file-size limit"
    assert_contained(result, outside)


# --- native code: a shared library whose constructor escapes ----------------------------------

EVIL_C = r"""
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>

/* Runs the moment Csound dlopens the library, before any opcode is looked at. */
__attribute__((constructor)) static void escape(void) {
    FILE *out = fopen(MARKER_PATH, "w");
    if (out) { fputs("native code ran\n", out); fclose(out); }
    FILE *in = fopen(SECRET_PATH, "r");
    char line[256];
    if (in) { while (fgets(line, sizeof line, in)) fputs(line, stderr); fclose(in); }
    if (fork() == 0) {
        setsid();
        prctl(PR_SET_NAME, PROCESS_NAME, 0, 0, 0);
        for (int fd = 0; fd < 3; fd++) close(fd);
        sleep(27);
        _exit(0);
    }
}
"""


@pytest.fixture
def evil_library(outside) -> Path:
    """``outside/plugins/libevil.so``: writes a marker into the canary folder, prints the secret
    and leaves a detached process named after the test's marker."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is not installed: the native-code attack builds its library with it")
    plugins = outside.root / "plugins"
    plugins.mkdir()
    (plugins / "evil.c").write_text(EVIL_C)
    library = plugins / "libevil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(library), str(plugins / "evil.c"),
                    f'-DMARKER_PATH="{outside.write}/native-ran"',
                    f'-DSECRET_PATH="{outside.secret}"', f'-DPROCESS_NAME="m{outside.marker}"'],
                   check=True, capture_output=True, timeout=120)
    outside.refresh()
    return library


def _embedded_library(library: Path) -> str:
    return (f'<CsFileB filename="evil.so">\n{base64.b64encode(library.read_bytes()).decode()}\n'
            "</CsFileB>\n")


NATIVE = {
    "opcode-lib-first-options": lambda lib: csd(
        "instr 1\nendin\n", options="--opcode-lib=./evil.so", before=_embedded_library(lib)),
    "opcode-lib-second-options": lambda lib: csd(
        "instr 1\nendin\n",
        before=_embedded_library(lib) + options_block("--opcode-lib=./evil.so")),
    "opcode-lib-third-options": lambda lib: csd(
        "instr 1\nendin\n", before=_embedded_library(lib) + options_block("-d") +
        options_block("--opcode-lib=./evil.so")),
    "opcode-dir-second-options": lambda lib: csd(
        "instr 1\nendin\n", before=options_block(f"--opcode-dir={lib.parent}")),
    # dssiinit dlopens any path it is given; no option needed
    "dssiinit-embedded-library": lambda lib: csd(
        CAT + "; dssiinit\ninstr 1\n ih $CAT(dssi'init) \"./evil.so\", 0, 1\nendin\n",
        before=_embedded_library(lib)),
    "dssiinit-outside-library": lambda lib: csd(
        CAT + f"; dssiinit\ninstr 1\n ih $CAT(dssi'init) {built(lib)}, 0, 1\nendin\n"),
    "dssiinit-hidden": lambda lib: hidden(' ih dssiinit "./evil.so", 0, 1', words="dssiinit",
                                          before=_embedded_library(lib)),
}


@pytest.mark.parametrize("attack", NATIVE)
def test_native_code_from_the_document_never_loads(attack, outside, evil_library):
    assert_both_modes_contained(NATIVE[attack](evil_library), outside, wait=1.0)


# --- processes that outlive the call ----------------------------------------------------------

DETACH = {
    "macro-arguments-render": ("render", SHELL["macro-arguments"]),
    "score-bin-check": ("check", SHELL["score-bin-sh"]),
    "hidden-system_i-render": ("render", SHELL["system_i-hidden"]),
    "omacro-system-k-rate": ("render", lambda o: csd(
        f'instr 1\n kres $S.tem 1, "{o.shell}"\nendin\n', before=options_block("--omacro:S=sys"))),
}


@pytest.mark.parametrize("attack", DETACH)
def test_no_detached_process_survives(attack, outside):
    mode, build = DETACH[attack]
    assert_contained(run(mode, build(outside), outside), outside, wait=2.0)


# --- network ----------------------------------------------------------------------------------

@pytest.fixture
def listeners():
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for sock in (udp, tcp):
        sock.bind(("127.0.0.1", 0))
    tcp.listen(8)
    yield udp, tcp
    udp.close()
    tcp.close()


SEND = " a1 poscil 0.3, 440\n"
NETWORK = {
    "socksend-udp": lambda udp, tcp: SEND + f' socksend a1, "127.0.0.1", {udp}, 256',
    "socksend-udp-built-name": lambda udp, tcp: SEND + f' $CAT(sock\'send) a1, "127.0.0.1", {udp}'
                                                       ", 256",
    "oscsend-udp-built-name": lambda udp, tcp: (
        f' $CAT(OSC\'send) 1, "127.0.0.1", {udp}, "/x", "s", "hello" ; OSCsend'),
    "stsend-tcp": lambda udp, tcp: SEND + f' stsend a1, "127.0.0.1", {tcp}',
    # Debian's Csound is built without strfromurl: an unknown opcode here, kept for other builds
    "strfromurl-tcp-built-name": lambda udp, tcp: (
        f' S1 $CAT(strfrom\'url) sprintf("http:%c%c127.0.0.1:%d/x", 47, 47, {tcp})\n prints S1'),
    "socksend-udp-hidden": lambda udp, tcp: hidden(SEND + f' socksend a1, "127.0.0.1", {udp}, 256'),
    "stsend-tcp-hidden": lambda udp, tcp: hidden(SEND + f' stsend a1, "127.0.0.1", {tcp}'),
}


@pytest.mark.parametrize("attack", NETWORK)
def test_nothing_reaches_the_network(attack, outside, listeners):
    udp, tcp = listeners
    body = NETWORK[attack](udp.getsockname()[1], tcp.getsockname()[1])
    code = body if "<CsoundSynthesizer>" in body else csd(CAT + "instr 1\n" + body + "\nendin\n")
    for mode in ("check", "render"):
        assert_contained(run(mode, code, outside), outside)
        ready, _, _ = select.select([udp, tcp], [], [], 0.3)
        arrived = ["a UDP datagram" if sock is udp else "a TCP connection" for sock in ready]
        assert not ready, f"{mode}: {arrived} reached the host"


PYTHON_ESCAPE = """
import ctypes, os, socket, sys, time
attempts = [lambda: print(open({secret!r}).read()),
            lambda: open({write!r} + '/python-ran', 'w').write('x'),
            lambda: socket.create_connection(('127.0.0.1', {tcp}), 1),
            lambda: socket.socket(type=socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp}))]
for attempt in attempts:
    try:
        attempt()
    except Exception as exc:
        print('python in the sandbox:', exc)
sys.stdout.flush()
if os.fork() == 0:
    os.setsid()
    ctypes.CDLL(None).prctl(15, b'm{marker}', 0, 0, 0)
    os.closerange(0, 3)
    time.sleep(27)
    os._exit(0)
"""


def test_python_running_inside_the_sandbox_stays_inside(outside, listeners):
    """Python opcodes hidden from the scan: arbitrary code, as a native library would run."""
    udp, tcp = listeners
    script = PYTHON_ESCAPE.format(secret=str(outside.secret), write=str(outside.write),
                                  tcp=tcp.getsockname()[1], udp=udp.getsockname()[1],
                                  marker=outside.marker)
    code = hidden(f" pyinit\n pyruni {{{{{script}}}}}", words="pyinit pyruni")
    assert_contained(run("render", code, outside), outside, wait=1.0)
    ready, _, _ = select.select([udp, tcp], [], [], 0.3)
    assert not ready, "python inside the sandbox reached a socket on the host"


# --- resource bombs ---------------------------------------------------------------------------

MARGIN = 20  # seconds past the time limit a killed call may take to return on a busy machine


@pytest.mark.parametrize("loop", [
    "instr 1\n icount = 0\n while 1 == 1 do\n  icount += 1\n od\nendin\n",
    "instr 1\n kcount = 0\n while kcount >= 0 do\n  kcount += 1\n od\nendin\n",
], ids=["init-time", "k-rate"])
def test_an_endless_loop_is_killed_at_the_time_limit(loop, outside):
    start = time.monotonic()
    result = run("render", csd(loop), outside, timeout=2)
    assert time.monotonic() - start < 2 + MARGIN, "the call did not return after its time limit"
    assert result.category == "timeout" and not result.ok
    assert_contained(result, outside)


def test_a_huge_table_hits_the_memory_limit(outside):
    code = csd("gibig ftgen 0, 0, -(2^28), 7, 0, 2^28, 1\ninstr 1\nendin\n")  # 2 GiB of doubles
    result = run("render", code, outside, memory_mb=256, timeout=10)
    assert not result.ok, f"a 2 GiB table fit a 256 MB limit: {result.category}"
    assert_contained(result, outside)


def test_a_day_long_score_is_cut_to_the_requested_seconds(outside):
    code = csd("instr 1\n a1 poscil 0.3, 440\n outs a1, a1\nendin\n", score="i 1 0 100000")
    result = run("render", code, outside)
    assert result.ok and 0.4 <= result.seconds <= 0.6, (result.category, result.seconds)
    assert_contained(result, outside)


BOMBS = {
    "include-dev-zero": csd("#define Z #/dev/zero#\n#includestr \"$Z\"\ninstr 1\nendin\n"),
    "recursive-macro": csd("#define A #$A.#\ninstr 1\n $A.\nendin\n"),
    "exponential-macro-1-gigabyte": csd(
        "#define L0 #xxxxxxxxxxxxxxxx#\n" +
        "".join(f"#define L{i} #{f'$L{i - 1}.' * 4}#\n" for i in range(1, 14)) +
        'instr 1\n S1 = "$L13."\nendin\n'),
    "five-megabyte-string": csd('instr 1\n S1 = "' + "x" * 5_000_000 + '"\n prints S1\nendin\n'),
    "five-megabyte-comment": csd("instr 1\n ;" + "x" * 5_000_000 + "\nendin\n"),
}


@pytest.mark.parametrize("attack", BOMBS)
def test_preprocessor_and_parser_bombs_are_contained(attack, outside):
    for mode in ("check", "render"):
        start = time.monotonic()
        result = run(mode, BOMBS[attack], outside, timeout=3)
        assert time.monotonic() - start < 3 + MARGIN, f"{mode}: no return after the time limit"
        assert result.category in sandbox.CATEGORIES
        assert_contained(result, outside)


# --- every <CsOptions> block is ignored -------------------------------------------------------

SINE = "instr 1\n a1 poscil 0.3, 440\n outs a1, a1\nendin\n"
SLOW_RATE = "-r 8000 -k 800"
# Unsandboxed, Csound 6.18 honours -r in the first three blocks but reads no block with
# attributes or in lower case, and the command line's -o overrides -odac: those stay, so that a
# sandbox relying on any of it fails here.
OPTIONS = {
    "odac-second": {"before": options_block("-odac")},
    "iadc-second": {"before": options_block("-iadc")},
    "midi-device-second": {"before": options_block("-M0")},
    "rtaudio-jack-second": {"before": options_block("-+rtaudio=jack")},
    "rtaudio-alsa-odac-first": {"options": "-+rtaudio=alsa -odac"},
    "sample-rate-first": {"options": SLOW_RATE},
    "sample-rate-second": {"before": options_block(SLOW_RATE)},
    "sample-rate-third": {"before": options_block("-d") + options_block(SLOW_RATE)},
    "block-with-attributes": {"before": f'<CsOptions id="x">\n{SLOW_RATE}\n</CsOptions>\n'},
    "lower-case-block": {"before": f"<csoptions>\n{SLOW_RATE}\n</csoptions>\n"},
}


@pytest.mark.parametrize("attack", OPTIONS)
def test_document_options_are_ignored(attack, outside):
    code = csd(SINE, score="i 1 0 1", **OPTIONS[attack])
    for mode in ("check", "render"):
        result = run(mode, code, outside)
        assert_contained(result, outside)
        if result.category == "refused":
            continue
        assert result.category == "ok", f"{mode}: {result.category} {result.diagnostics}"
        if mode == "render":
            assert result.sample_rate == 48000 and result.peak > 0.1, (
                f"the document's options changed the render: {result.sample_rate} Hz, "
                f"peak {result.peak}")
