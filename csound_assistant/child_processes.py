"""Child processes die with their parent: a stopped ``data build`` leaves no Csound running.

The sandbox starts every Csound in a session of its own, so that a timeout kills its whole
group; but then a ``kill`` of our pid or a terminal's Ctrl-C never reaches it, and Python ends
on SIGTERM or SIGHUP without running any ``finally``. ``children_die_with_us()`` handles those
signals by killing each child's process group first. SIGKILL cannot be handled: there the
sandbox's ``bwrap --die-with-parent`` is what ends them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def child_pids(pid: int | None = None) -> list[int]:
    """The live children of ``pid`` (default: this process), from ``/proc``."""
    pid = os.getpid() if pid is None else pid
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                children.append(int(stat.parent.name))
    return children


def kill_children(sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to every child's process group (a child leading its own group, as the
    sandbox's Csound does) or to the child alone (one in our group). Returns the children."""
    children = child_pids()
    own_group = os.getpgrp()
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(child)
            if group == child and group != own_group:
                os.killpg(group, sig)
            else:
                os.kill(child, sig)
    return children


def _handler(signum, frame):
    kill_children()
    if signum == signal.SIGINT:
        signal.default_int_handler(signum, frame)  # KeyboardInterrupt: cleanups still run
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # end as the signal would have, with its exit status


@contextlib.contextmanager
def children_die_with_us():
    """Within the block, SIGTERM, SIGHUP and SIGINT kill every child process group before this
    process ends. Outside the main thread (where signals cannot be handled) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
