"""Build the VS Code extension in ``editors/vscode/`` into a ``.vsix``: ``editor vscode``.

``npm ci`` installs the pinned ``@vscode/vsce`` from ``package-lock.json`` (node_modules is not
committed), then ``vsce package`` writes ``csound-assistant-<version>.vsix``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from csound_assistant.errors import ArtifactError, ConfigError

EXTENSION_DIR = Path(__file__).with_name("vscode")


def node_tools() -> dict[str, str]:
    """Paths of node and npm; a clear error when either is missing."""
    tools = {name: shutil.which(name) for name in ("node", "npm")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not found on PATH: the VS Code extension is built with "
            "node >= 20 and npm. Run `make setup` (apt packages nodejs npm) or install Node.js "
            "from https://nodejs.org, then retry"
        )
    return tools


def _run(cmd: list[str], cwd: Path, what: str, timeout: float) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "npm_config_fund": "false",
                                   "npm_config_audit": "false"})
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"{what} took longer than {timeout:.0f} s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-2000:]
        raise ArtifactError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return proc.stdout


def build_vsix(*, out_dir: str | os.PathLike | None = None, install: bool = True,
               extension_dir: Path = EXTENSION_DIR, log=print) -> Path:
    """``npm ci`` (when ``install`` or node_modules is missing) and ``vsce package``."""
    tools = node_tools()
    manifest = json.loads((extension_dir / "package.json").read_text())
    out_dir = Path(out_dir) if out_dir else extension_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    vsix = (out_dir / f"{manifest['name']}-{manifest['version']}.vsix").resolve()
    vsce = extension_dir / "node_modules" / ".bin" / "vsce"
    if install or not vsce.exists():
        log("npm ci (installs the pinned @vscode/vsce into editors/vscode/node_modules)")
        _run([tools["npm"], "ci", "--no-fund", "--no-audit"], extension_dir, "npm ci", 600)
    log(f"vsce package -> {vsix}")
    _run([str(vsce), "package", "--allow-missing-repository", "--out", str(vsix)], extension_dir,
         "vsce package", 300)
    if not vsix.is_file():
        raise ArtifactError(f"vsce reported success but wrote no {vsix}")
    return vsix
