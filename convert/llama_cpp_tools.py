"""llama.cpp's own conversion scripts, fetched at set-up time from PyPI.

The llama-cpp-python wheel has no ``convert_hf_to_gguf.py``; its source distribution does, at
the llama.cpp commit the library was built from (``vendor/llama.cpp/``, with the ``conversion/``
package and ``gguf-py/`` the scripts import). ``ensure`` downloads that sdist with pip, extracts
only those files into a folder named by version, and is a no-op when they are already there:

    .venv/bin/python -m csound_assistant.convert.llama_cpp_tools ensure   # scripts/setup.sh
    .venv/bin/python -m csound_assistant.convert.llama_cpp_tools ensure --sdist ./llama_cpp_python-0.3.36.tar.gz

The folder is ``$CSOUND_ASSISTANT_LLAMA_CPP_TOOLS`` if set, else
``<venv>/share/csound-assistant/llama.cpp-tools/<version>/``. No llama.cpp code is committed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from csound_assistant.artifacts import sha256_file
from csound_assistant.constants import (
    ENV_LLAMA_CPP_TOOLS,
    LLAMA_CPP_CONVERT_HF,
    LLAMA_CPP_CONVERT_LORA,
    LLAMA_CPP_PYTHON_DIST,
    LLAMA_CPP_SDIST_ROOT,
)
from csound_assistant.errors import ExportError

MARKER = "tools.json"
# What the converters need from vendor/llama.cpp/: files, and folders taken whole.
WANTED_FILES = (LLAMA_CPP_CONVERT_HF, LLAMA_CPP_CONVERT_LORA, "LICENSE")
WANTED_DIRS = ("conversion", "gguf-py", "requirements")


@dataclass(frozen=True)
class LlamaCppTools:
    root: Path
    version: str

    @property
    def convert_hf(self) -> Path:
        return self.root / LLAMA_CPP_CONVERT_HF

    @property
    def convert_lora(self) -> Path:
        return self.root / LLAMA_CPP_CONVERT_LORA

    @property
    def gguf_py(self) -> Path:
        return self.root / "gguf-py"

    def env(self) -> dict[str, str]:
        """Environment for running a converter: the sdist's gguf-py first on the path."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.gguf_py), env.get("PYTHONPATH", "")) if p
        )
        env.pop("NO_LOCAL_GGUF", None)
        return env


def installed_version() -> str:
    try:
        return importlib.metadata.version(LLAMA_CPP_PYTHON_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ExportError(
            f"{LLAMA_CPP_PYTHON_DIST} is not installed in {sys.prefix}; run `make setup` "
            "(it compiles llama.cpp once, ~12 min on 2 cores)"
        ) from None


def tools_root(version: str) -> Path:
    override = os.environ.get(ENV_LLAMA_CPP_TOOLS)
    if override:
        return Path(override).expanduser() / version
    return Path(sys.prefix) / "share" / "csound-assistant" / "llama.cpp-tools" / version


def _complete(root: Path, version: str) -> bool:
    marker = root / MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text()).get("version")
    except (OSError, ValueError):
        return False
    return recorded == version and all((root / f).is_file() for f in WANTED_FILES[:2]) and (
        root / "gguf-py" / "gguf" / "__init__.py"
    ).is_file()


def find(version: str | None = None) -> LlamaCppTools:
    """The extracted scripts for the installed llama-cpp-python; a clear error if missing."""
    version = version or installed_version()
    root = tools_root(version)
    if not _complete(root, version):
        raise ExportError(
            f"llama.cpp's conversion scripts for {LLAMA_CPP_PYTHON_DIST} {version} are not in "
            f"{root}; run `.venv/bin/python -m csound_assistant.convert.llama_cpp_tools ensure` "
            "(make setup does this; it downloads the sdist from PyPI once)"
        )
    return LlamaCppTools(root, version)


def _download_sdist(version: str, dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--disable-pip-version-check", "-d", str(dest), f"{LLAMA_CPP_PYTHON_DIST}=={version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("*.tar.gz"))
    if proc.returncode != 0 or not found:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise ExportError(
            f"could not download the {LLAMA_CPP_PYTHON_DIST}=={version} source distribution "
            f"from PyPI (offline?): {tail}\nFix: connect to the network and rerun, or download "
            f"llama_cpp_python-{version}.tar.gz elsewhere and pass `ensure --sdist FILE`"
        )
    return found[0]


def _extract(sdist: Path, version: str, dest: Path) -> None:
    """Copy the wanted members of ``<top>/vendor/llama.cpp/`` into ``dest``."""
    try:
        tar = tarfile.open(sdist)
    except (OSError, tarfile.TarError) as exc:
        raise ExportError(f"{sdist} is not a readable source distribution: {exc}") from None
    with tar:
        top = f"llama_cpp_python-{version}/{LLAMA_CPP_SDIST_ROOT}/"
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(top) or not (m.isfile() or m.isdir()):
                continue
            rel = m.name[len(top):]
            if rel in WANTED_FILES or rel.split("/")[0] in WANTED_DIRS:
                members.append(m.replace(name=rel, deep=False))
        names = {m.name for m in members}
        missing = [f for f in WANTED_FILES[:2] if f not in names]
        if missing:
            raise ExportError(
                f"{sdist} has no {', '.join(missing)} under {top}: is it the "
                f"{LLAMA_CPP_PYTHON_DIST} {version} sdist?"
            )
        tar.extractall(dest, members=members, filter="data")


def ensure(version: str | None = None, *, sdist: str | os.PathLike | None = None,
           log=print) -> LlamaCppTools:
    """Download and extract the scripts unless already there; return where they are."""
    version = version or installed_version()
    root = tools_root(version)
    if _complete(root, version):
        log(f"llama.cpp tools {version}: {root}")
        return LlamaCppTools(root, version)
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=root.parent) as tmp:
        tmp = Path(tmp)
        if sdist is None:
            log(f"llama.cpp tools: downloading the {LLAMA_CPP_PYTHON_DIST}=={version} sdist "
                "from PyPI (~77 MB, once)")
            sdist_path = _download_sdist(version, tmp / "sdist")
        else:
            sdist_path = Path(sdist)
            if not sdist_path.is_file():
                raise ExportError(f"--sdist {sdist_path} does not exist")
        staged = tmp / "tools"
        _extract(sdist_path, version, staged)
        marker = {
            "version": version,
            "sdist": sdist_path.name,
            "sdist_sha256": sha256_file(sdist_path),
            "extracted": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staged / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if root.exists():  # an incomplete earlier attempt
            shutil.rmtree(root)
        os.replace(staged, root)
    log(f"llama.cpp tools {version}: {root}")
    return LlamaCppTools(root, version)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m csound_assistant.convert.llama_cpp_tools",
        description="Fetch llama.cpp's convert_hf_to_gguf.py and friends from the "
        "llama-cpp-python sdist matching the installed library.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_ensure = sub.add_parser("ensure", help="download and extract if missing (idempotent)")
    p_ensure.add_argument("--sdist", help="use this llama_cpp_python-<version>.tar.gz (offline)")
    p_ensure.add_argument("--version", help="llama-cpp-python version (default: the installed)")
    p_where = sub.add_parser("where", help="print the folder, fail if missing")
    p_where.add_argument("--version")
    args = parser.parse_args(argv)
    try:
        if args.command == "ensure":
            ensure(args.version, sdist=args.sdist)
        else:
            print(find(args.version).root)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
