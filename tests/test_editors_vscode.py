"""The VS Code extension: its node tests (request building, response handling, the real server
on the embedded GGUF), its manifest, and the .vsix build."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile

import pytest
from click.testing import CliRunner

from csound_assistant.editors.cli import cli
from csound_assistant.editors.vscode_build import EXTENSION_DIR, build_vsix, node_tools
from csound_assistant.errors import ConfigError
from editors_helpers import API_KEY, running_server


def _node_test(*paths, env=None) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: run `make setup` (apt packages nodejs npm)")
    proc = subprocess.run([node, "--test", *paths], cwd=EXTENSION_DIR, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})
    counts = {key: int(n) for key, n in re.findall(r"^# (pass|fail|skipped|tests) (\d+)$",
                                                    proc.stdout, re.M)}
    assert proc.returncode == 0 and counts.get("fail") == 0, proc.stdout[-4000:] + proc.stderr
    return counts


def test_node_unit_tests():
    counts = _node_test("test/prompt.test.js", "test/client.test.js", "test/extension.test.js")
    assert counts["pass"] >= 19 and counts["skipped"] == 0


def test_extension_against_the_real_server(embedded_gguf, tmp_path):
    with running_server(embedded_gguf, tmp_path / "server.log") as url:
        counts = _node_test("test/server.test.js", env={
            "CSOUND_ASSISTANT_TEST_SERVER_URL": url, "CSOUND_ASSISTANT_TEST_API_KEY": API_KEY})
    assert counts["skipped"] == 0 and counts["pass"] == 3


def test_server_test_says_why_it_skips():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSOUND_ASSISTANT_TEST")}
    proc = subprocess.run(["node", "--test", "test/server.test.js"], cwd=EXTENSION_DIR, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "SKIP set CSOUND_ASSISTANT_TEST_SERVER_URL" in proc.stdout


def test_manifest():
    manifest = json.loads((EXTENSION_DIR / "package.json").read_text())
    contributes = manifest["contributes"]
    assert {"command": "csoundAssistant.completeAtCursor",
            "title": "Csound Assistant: Complete at Cursor"} in contributes["commands"]
    settings = contributes["configuration"]["properties"]
    for key in ("serverUrl", "apiKey", "maxTokens", "enable"):
        assert f"csoundAssistant.{key}" in settings
    assert settings["csoundAssistant.serverUrl"]["default"].startswith("http://127.0.0.1")
    assert "onLanguage:csound" in manifest["activationEvents"]
    # Without a Csound language extension or an open folder it still starts (issue 26).
    assert "onStartupFinished" in manifest["activationEvents"]
    assert manifest["engines"]["vscode"] == "^1.82.0"  # the first with node 18's fetch
    assert (EXTENSION_DIR / manifest["main"]).is_file()
    # vsce is pinned exactly, and the lock file agrees.
    version = manifest["devDependencies"]["@vscode/vsce"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    lock = json.loads((EXTENSION_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@vscode/vsce"]["version"] == version
    # The logic modules stay importable without VS Code (node runs them in tests).
    for module in (EXTENSION_DIR / "src").glob("*.js"):
        assert "require('vscode')" not in module.read_text(), module


def test_missing_node_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="node.*npm.*make setup"):
        node_tools()
    result = CliRunner().invoke(cli, ["vscode"])
    assert result.exit_code == 1 and "not found on PATH" in result.output


@pytest.mark.slow
def test_vsix_builds(tmp_path):
    """`npm ci` + `vsce package`: about a minute, and needs the npm registry (or its cache)."""
    vsix = build_vsix(out_dir=tmp_path, log=lambda _: None)
    names = zipfile.ZipFile(vsix).namelist()
    assert "extension/extension.js" in names and "extension/src/prompt.js" in names
    assert "extension/package.json" in names
    assert not any(n.startswith(("extension/node_modules/", "extension/test/")) for n in names)
