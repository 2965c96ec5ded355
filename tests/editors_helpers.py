"""Start the project's real server (`csound-assistant serve`) on a GGUF for editor tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
API_KEY = "editor-test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(gguf: Path, log_path: Path, *, prompt_format: str = "chatml",
                   api_key: str | None = API_KEY, timeout: float = 120.0):
    """Yield the base URL of `csound-assistant serve GGUF` on a free loopback port."""
    port = free_port()
    cmd = [sys.executable, "-m", "csound_assistant.cli", "serve", str(gguf), "--prompt-format",
           prompt_format, "--port", str(port), "--threads", "2", "--log-level", "warning"]
    if api_key:
        cmd += ["--api-key", api_key]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSOUND_ASSISTANT_")}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not answer /health in {timeout:.0f} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
