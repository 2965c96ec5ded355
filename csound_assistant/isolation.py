"""Run Csound confined by the operating system: the sandbox's guarantee.

``csound_assistant.sandbox`` scans code before running it, but a scan of a macro language can be
fooled; what holds is this module. On Linux every Csound run goes through bubblewrap (``bwrap``,
installed by ``scripts/setup.sh``) with:

- no network, no IPC, its own PID namespace (when its first process dies the kernel kills every
  process in it, so nothing started inside outlives the run), no further user namespaces, a new
  session (no terminal injection), and ``--die-with-parent`` on top of a parent-death signal on
  bwrap itself: killing the Python process that asked kills the run;
- a filesystem of only the system libraries (``/usr/lib``...), the Csound binary, the plugin
  folder chosen for the run, a 64 MiB private ``/tmp`` and the run's own folder mounted read-only
  as ``/sandbox``; only the files named ``writable`` (the WAV of a render) can be written. No
  shell or other program exists inside, nothing of ``/etc``, ``/home`` or the project;
- an empty environment but for the variables Csound needs (no ``CSOUNDRC``, ``OPCODE6DIR64``
  pointing at the chosen plugin folder);
- CPU, address-space, file-size, core and process-count limits, and a non-root user: as root the
  run drops to ``nobody`` before bwrap starts.

Where bwrap is missing or cannot create namespaces (no unprivileged user namespaces, macOS),
``run`` raises ``IsolationUnavailable`` unless the user opted in with
``CSOUND_ASSISTANT_UNISOLATED=1``: then Csound runs with the limits alone (SECURITY.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import IsolationUnavailable

ENV_OPT_IN = "CSOUND_ASSISTANT_UNISOLATED"
NOBODY = 65534
INSIDE = "/sandbox"  # the run's folder, as Csound sees it
TMP_BYTES = 64 << 20
EXTRA_TASKS = 64  # processes and threads a run may add to its user's current count
_LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib")
_PLUGIN_DATA = ("/usr/share/stk",)  # the STK opcodes' wave tables (rawwaves)
_PR_SET_PDEATHSIG = 1


@dataclass
class Limits:
    timeout: float  # wall clock, seconds
    cpu_seconds: int
    memory_bytes: int
    file_bytes: int


@dataclass
class Outcome:
    returncode: int | None  # None when killed for the wall-clock limit; negative: a signal
    output: str  # stdout and stderr together, capped
    timed_out: bool
    elapsed: float


def opted_out_of_isolation() -> bool:
    return os.environ.get(ENV_OPT_IN, "").strip().lower() in ("1", "true", "yes")


def _as_root() -> bool:
    return os.geteuid() == 0


def _task_count(uid: int) -> int:
    """Processes and threads that ``uid`` runs now (RLIMIT_NPROC counts both)."""
    count = 0
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
    return count


def _preexec(limits: Limits | None, drop: bool, nproc: int | None):
    libc = ctypes.CDLL(None, use_errno=True)

    def setup():
        if limits is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        if drop:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        # after setuid, which clears it: the run dies with the thread that started it
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return setup


def _system_binds() -> list[str]:
    args: list[str] = []
    for folder in _LIBRARY_DIRS:
        if os.path.isdir(folder) and not os.path.islink(folder):
            args += ["--ro-bind", folder, folder]
    for top in ("/lib", "/lib64", "/lib32"):
        if os.path.islink(top):  # merged /usr: /lib -> usr/lib
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    if os.path.isfile("/etc/ld.so.cache"):  # library search paths; holds no secrets
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    for data in _PLUGIN_DATA:
        if os.path.isdir(data):
            args += ["--ro-bind", data, data]
    return args


def _csound_binary(csound: str) -> str:
    found = shutil.which(csound)
    if not found:
        raise FileNotFoundError(f"Csound ({csound!r}) is not on PATH: install it (scripts/setup.sh "
                                "does: apt-get install csound) or set CSOUND_ASSISTANT_CSOUND")
    return os.path.realpath(found)


def bwrap_path() -> str | None:
    """bwrap's absolute path, looked up on the caller's PATH: runs start with a cleared
    environment (PATH=/usr/bin:/bin), where a bwrap in /usr/local/bin would not be found."""
    return shutil.which("bwrap")


def bwrap_args(csound: str, workdir: Path, *, plugins: str | None,
               writable: tuple[str, ...] = ()) -> list[str]:
    """The bubblewrap command line that runs ``csound`` in ``workdir`` (mounted read-only at
    /sandbox, but for the ``writable`` file names in it)."""
    binary = _csound_binary(csound)
    args = [bwrap_path(), "--unshare-all", "--unshare-user", "--disable-userns",
            "--die-with-parent", "--new-session", *_system_binds()]
    if not any(binary.startswith(d + "/") for d in _LIBRARY_DIRS):
        args += ["--ro-bind", binary, binary]
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp",
             "--ro-bind", str(workdir), INSIDE]
    for name in writable:
        args += ["--bind", str(workdir / name), f"{INSIDE}/{name}"]
    if plugins:
        args += ["--ro-bind", plugins, plugins]
    env = {"PATH": "/usr/bin", "HOME": INSIDE, "LANG": "C.UTF-8", "TMPDIR": "/tmp",
           "SFDIR": INSIDE, "SSDIR": INSIDE, "SADIR": INSIDE, "INCDIR": INSIDE}
    if plugins:
        env["OPCODE6DIR64"] = plugins
    args += ["--clearenv", "--chdir", INSIDE]
    for key, value in env.items():
        args += ["--setenv", key, value]
    return [*args, "--", binary]


@functools.lru_cache(maxsize=4)
def probe(csound: str) -> str | None:
    """None when bubblewrap can confine ``csound`` here, else why not (said once, cached)."""
    if not bwrap_path():
        return ("bubblewrap (bwrap) is not installed: `apt-get install bubblewrap` (scripts/"
                "setup.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="csound-probe-") as tmp:
        os.chmod(tmp, 0o755)
        try:
            args = bwrap_args(csound, Path(tmp), plugins=None)
            proc = subprocess.run([*args, "--version"], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=30,
                                  preexec_fn=_preexec(None, _as_root(), None))
        except FileNotFoundError as exc:
            return str(exc)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"bubblewrap could not start: {exc}"
    output = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    if "bwrap:" in output or proc.returncode not in (0, 1):
        first = next((line for line in output.splitlines() if "bwrap" in line), output[:200])
        return (f"bubblewrap cannot create a sandbox here ({first.strip()}): it needs "
                "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or "
                "an AppArmor profile that allows bwrap)")
    return None


def status(csound: str) -> str:
    """"bubblewrap", or "none (opted in: ...)" when the user allowed unconfined runs."""
    reason = probe(csound)
    if reason is None:
        return "bubblewrap"
    if opted_out_of_isolation():
        return f"none ({ENV_OPT_IN}=1; {reason})"
    raise IsolationUnavailable(
        f"refusing to run Csound on untrusted code without isolation: {reason}. To run it "
        f"anyway with resource limits only (you trust the code), set {ENV_OPT_IN}=1.")


def _drain(stream, chunks: list[bytes], limit: int):
    """Keep the first ``limit`` bytes (and the last 64 KiB) of a possibly endless stream."""
    kept, tail = 0, b""
    while block := stream.read(65536):
        if kept < limit:
            chunks.append(block[: limit - kept])
            kept += min(len(block), limit - kept)
        else:
            tail = (tail + block)[-65536:]
    if tail:
        chunks.append(b"\n[... output truncated ...]\n" + tail)


def run(csound: str, args: list[str], workdir: Path, limits: Limits, *,
        plugins: str | None = None, writable: tuple[str, ...] = ()) -> Outcome:
    """Run ``csound args`` on the files of ``workdir``, confined; raises IsolationUnavailable
    when no confinement works here and the user has not opted in."""
    confined = status(csound) == "bubblewrap"
    drop = _as_root()
    if drop:  # nobody must read the folder and write the writable files
        os.chown(workdir, NOBODY, NOBODY)
        for path in workdir.iterdir():
            os.chown(path, NOBODY, NOBODY)
    nproc = _task_count(NOBODY if drop else os.getuid()) + EXTRA_TASKS
    if confined:
        argv = [*bwrap_args(csound, workdir, plugins=plugins, writable=writable), *args]
        env, cwd = {"PATH": "/usr/bin:/bin"}, "/"
    else:
        argv = [csound, *args]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir),
               "LANG": "C.UTF-8", **dict.fromkeys(("SFDIR", "SSDIR", "SADIR", "INCDIR"),
                                                  str(workdir))}
        if plugins:
            env["OPCODE6DIR64"] = plugins
        cwd = str(workdir)
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_preexec(limits, drop, nproc))
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(proc.stdout, chunks, 1 << 20), daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limits.timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # the group, and with bwrap the whole PID namespace: nothing it started survives
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(5)
    output = b"".join(chunks).decode("utf-8", errors="replace").replace("\x00", "")
    return Outcome(None if timed_out else proc.returncode, output, timed_out,
                   time.monotonic() - start)
