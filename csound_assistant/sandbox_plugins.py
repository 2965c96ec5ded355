"""Which Csound plugin libraries a piece of code needs, so the sandbox loads only those.

Csound opens every library in its plugin folder when it starts. On Debian's build a syntax
check takes ~105 ms with all 40 libraries and ~25 ms with none, and most of the difference is
a few heavy ones: Faust (LLVM), linear algebra, FluidSynth, PortMidi, the pvs extras, HDF5,
Ableton Link, STK (``bench/sandbox_throughput.py``). The sandbox gives Csound a folder of links
to every light library plus the heavy ones whose opcode names appear anywhere in the code's
text (strings and comments included, so the choice errs towards loading). Code that includes
other files gets every library but the never-loaded ones. The verdicts stay those of the full folder (tested), and a
check or render costs far less. The realtime audio/MIDI modules are never needed: the sandbox
runs with ``-+rtaudio=null -+rtmidi=null``.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# File names (without lib/.so) of libraries loaded only for code naming one of their opcodes.
HEAVY = ("faustcsound", "linear_algebra", "fluidOpcodes", "pmidi", "pvsops", "hdf5ops",
         "ableton_link_opcodes", "stkops", "py", "websocketIO", "jacko", "jackTransport",
         "virtual", "dssi4cs", "ipmidi", "osc", "joystick", "widgets", "image", "mixer")
# Never loaded: realtime I/O modules (the sandbox has no devices), and the Tcl/Tk control panel
# (control, setctrl, button, checkbox), which starts the external program `wish`
NEVER = ("rtalsa", "rtjack", "rtpa", "rtpulse", "control")
_CANDIDATES = ("/usr/lib/x86_64-linux-gnu/csound/plugins64-6.0",
               "/usr/lib/aarch64-linux-gnu/csound/plugins64-6.0",
               "/usr/lib/csound/plugins64-6.0", "/usr/local/lib/csound/plugins64-6.0")
_WORD = re.compile(r"[A-Za-z_]\w*")


def plugin_folder() -> Path | None:
    """The folder Csound reads plugins from: $OPCODE6DIR64, else the usual install paths."""
    if os.environ.get("OPCODE6DIR64"):
        return Path(os.environ["OPCODE6DIR64"])
    return next((Path(p) for p in _CANDIDATES if Path(p).is_dir()), None)


def _stem(lib: Path) -> str:
    return lib.name.removeprefix("lib").removesuffix(".so")


def list_opcodes(csound: str, flags: list[str], folder: Path | None = None) -> frozenset[str]:
    """The opcode names ``csound -z`` lists, with plugins from ``folder`` (None: Csound's own
    default). Raises OSError or SubprocessError when Csound cannot run."""
    env = {**os.environ, "OPCODE6DIR64": str(folder)} if folder is not None else None
    proc = subprocess.run([csound, "-z", *flags], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, errors="replace", timeout=20, env=env)
    head = (proc.stdout + proc.stderr).replace("\x00", "").split("end of score", 1)[0]
    return frozenset(re.findall(r"(?<![\w.])([A-Za-z_]\w*)(?![\w.:])", head))


@functools.lru_cache(maxsize=1)
def _work_root() -> Path:
    # A private folder per process (mkdtemp: mode 700, then opened to read for the unprivileged
    # user the sandbox may run Csound as); links only, removed at exit.
    root = Path(tempfile.mkdtemp(prefix="csound-assistant-plugins-"))
    root.chmod(0o755)
    atexit.register(shutil.rmtree, root, True)
    return root


_LOCK = threading.Lock()  # the sandbox's worker threads ask at the same time


@functools.lru_cache(maxsize=4)  # called under _LOCK: probed once, not once per thread
def heavy_opcodes(csound: str, flags: tuple[str, ...]) -> dict[Path, frozenset[str]] | None:
    """Opcode names each heavy library adds (probed once per process, in parallel), or None
    when the plugin folder is unknown or a probe fails (then the full folder is used)."""
    folder = plugin_folder()
    if folder is None:
        return None
    heavy = [lib for lib in sorted(folder.glob("lib*.so")) if _stem(lib) in HEAVY]
    try:
        empty = _work_root() / "probe-none"
        empty.mkdir(exist_ok=True)
        base = list_opcodes(csound, list(flags), empty)

        def probe(lib: Path) -> frozenset[str]:
            one = _work_root() / f"probe-{_stem(lib)}"
            one.mkdir(exist_ok=True)
            if not (one / lib.name).exists():
                (one / lib.name).symlink_to(lib)
            return list_opcodes(csound, list(flags), one) - base

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            added = list(pool.map(probe, heavy))
    except (OSError, subprocess.SubprocessError):
        return None
    if not base:
        return None
    return dict(zip(heavy, added))


def _folder_for(needed: tuple[Path, ...]) -> Path:
    """The folder of links to the light libraries and ``needed`` (made once; call under _LOCK)."""
    out = _work_root() / ("load-" + ("-".join(_stem(p) for p in needed) or "light"))
    if not out.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=_work_root()))
        for lib in sorted(plugin_folder().glob("lib*.so")):
            if _stem(lib) not in HEAVY + NEVER or lib in needed:
                (tmp / lib.name).symlink_to(lib)
        tmp.chmod(0o755)
        tmp.rename(out)  # complete before any Csound sees it
    return out


def folder_for(code: str, csound: str, flags: list[str]) -> str | None:
    """The plugin folder to give Csound for ``code`` (None: leave Csound's default)."""
    with _LOCK:
        heavy = heavy_opcodes(csound, tuple(flags))
        if not heavy:
            return None
        if "#include" in code:  # the included text is not seen here: every library it may need
            return str(_folder_for(tuple(heavy)))
        words = set(_WORD.findall(code))
        return str(_folder_for(tuple(lib for lib, names in heavy.items() if names & words)))


def full_folder(csound: str, flags: list[str]) -> str | None:
    """The folder of every library the sandbox may load (all but ``NEVER``); None when the
    plugin folder is unknown (Csound's default is used)."""
    with _LOCK:
        heavy = heavy_opcodes(csound, tuple(flags))
        return str(_folder_for(tuple(heavy))) if heavy else None
