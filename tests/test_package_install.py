"""The package installs whole: the wheel built from the checkout carries every file the installed
package reads at run time and nothing test-only, and, installed into a fresh venv with the repo
out of reach, it serves the embedded model, scores an eval item and builds the VS Code extension
(those run under ``-m slow``: about a minute).

The fresh venv gets the pinned runtime dependencies without a download: a ``.pth`` path line
puts the project venv's site-packages on ``sys.path`` after its own. A path line does not run
the ``.pth`` files in that folder, so the project's editable install stays inactive there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from editors_helpers import free_port

REPO = Path(__file__).resolve().parents[1]

# Files the installed package reads (Path(__file__) / with_name in train/starter.py,
# train/config.py, csound_assistant/pipeline.py, modelfiles/render.py, eval/tasks.py,
# eval/natural_split.py, editors/vscode_build.py), relative to the installed package.
RUNTIME_FILES = [
    "train/starter/adapter_model.safetensors", "train/starter/adapter_config.json",
    "train/starter/record.json", "train/starter/prompt_format.json",
    "train/starter/train_config.yaml", "train/starter/train_rows.sha1.txt.gz",
    "train/starter/metrics.json", "improve/configs/starter.yaml",
    "train/configs/cpu-smollm2-starter.yaml", "pipelines/smollm2-scratch.yaml",
    "modelfiles/csound-assistant.Modelfile.tmpl",
    "eval/tasks.jsonl", "eval/natural/dev.jsonl", "eval/natural/heldout.jsonl",
    "editors/vscode/package.json", "editors/vscode/package-lock.json",
    "editors/vscode/extension.js", "editors/vscode/src/client.js", "editors/vscode/src/prompt.js",
    "editors/vscode/LICENSE", "editors/vscode/.vscodeignore",
]
# Every file of these checkout folders ships (their non-Python files are all read at run time).
WHOLE_FOLDERS = {"train/starter": "train/starter", "train/configs": "train/configs",
                 "improve/configs": "improve/configs",
                 "csound_assistant/pipelines": "pipelines", "eval/natural": "eval/natural",
                 "editors/vscode/src": "editors/vscode/src"}


def _tracked(folder: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", folder], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if not line.endswith(".py")]


def _test_only(name: str) -> bool:
    return name.endswith(".go") or "/editors/vscode/test/" in name


def build_wheel(out: Path) -> Path:
    """``pip wheel`` of a copy of the checkout's files (tracked and untracked, not ignored): the
    copy keeps ignored folders (node_modules, runs/) out and leaves the checkout's build/ and
    egg-info alone while others build there."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode()
    src = out / "src"
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the work tree is left out
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                           "--no-build-isolation", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = out.glob("csound_assistant-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_carries_the_runtime_files_and_nothing_test_only(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = [f"csound_assistant/{rel}" for rel in RUNTIME_FILES]
    for folder, installed in WHOLE_FOLDERS.items():
        expected += [f"csound_assistant/{installed}/{Path(f).relative_to(folder)}"
                     for f in _tracked(folder)]
    missing = sorted(set(expected) - names)
    assert not missing, (f"the wheel lacks {missing}: add them to [tool.setuptools.package-data] "
                         "(or the data folder to `packages`) in pyproject.toml")
    test_only = sorted(n for n in names if _test_only(n) or "/node_modules/" in n)
    assert not test_only, f"the wheel ships test-only files {test_only}: keep them in tests/"


# --- the installed package, run from outside the checkout --------------------------------------

class Installed:
    def __init__(self, venv: Path, cwd: Path):
        self.venv, self.cwd = venv, cwd
        self.cli = str(venv / "bin" / "csound-assistant")
        self.env = {k: v for k, v in os.environ.items()
                    if k != "PYTHONPATH" and not k.startswith("CSOUND_ASSISTANT_")}

    def run(self, *args, timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    def python(self, code: str) -> str:
        return self.run(str(self.venv / "bin" / "python"), "-c", code).stdout.strip()


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("installed")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # Installed before the .pth exists, so pip sees only the new venv.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=300)
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                              "'purelib'))"], capture_output=True, text=True, check=True)
    project_site = sysconfig.get_path("purelib")  # where the pinned runtime dependencies are
    (Path(purelib.stdout.strip()) / "project-venv.pth").write_text(project_site + "\n")
    cwd = root / "work"
    cwd.mkdir()
    return Installed(venv, cwd)


@pytest.mark.slow
def test_installed_package_is_the_wheel_not_the_checkout(installed):
    where = Path(installed.python("import csound_assistant; print(csound_assistant.__file__)"))
    assert where.is_relative_to(installed.venv), f"imported from {where}, not the fresh venv"
    package = where.parent
    for rel in RUNTIME_FILES:
        assert (package / rel).is_file(), f"the installed package lacks {rel}"
    assert not [p for p in package.rglob("*") if _test_only(str(p))]
    assert "Usage: csound-assistant" in installed.run(installed.cli, "--help").stdout
    # the installed modules find their data beside themselves and read it
    paths = installed.python(
        "from csound_assistant.eval.tasks import load_tasks, TASKS_PATH\n"
        "from csound_assistant.train.starter import STARTER_DIR, load\n"
        "from csound_assistant.editors.vscode_build import EXTENSION_DIR\n"
        "starter = load('starter')\n"
        "assert load_tasks() and starter.seen\n"
        "print(TASKS_PATH, STARTER_DIR, EXTENSION_DIR, sep='\\n')").splitlines()
    assert all(Path(p).is_relative_to(package) for p in paths), paths


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_installed_serve_answers_a_chat_request(installed, embedded_gguf):
    port = free_port()
    log_path = installed.cwd / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [installed.cli, "serve", str(embedded_gguf), "--prompt-format", "chatml", "--port",
             str(port), "--threads", "2", "--n-ctx", "512", "--log-level", "warning"],
            cwd=installed.cwd, env=installed.env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while not _healthy(url):
            if server.poll() is not None:
                pytest.fail(f"serve exited ({server.returncode}):\n{log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer /health:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "csound-assistant", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Name one Csound opcode."}]})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["usage"]["completion_tokens"] >= 1
        assert isinstance(body["choices"][0]["message"]["content"], str)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.slow
def test_installed_eval_scores_one_item_in_the_sandbox(installed):
    # The shipped task file's shortest fill-in-the-middle item: a whole chat answer takes
    # minutes of CPU decoding on a shared machine, a one-line middle seconds.
    shipped = Path(installed.python(
        "from csound_assistant.eval.tasks import TASKS_PATH; print(TASKS_PATH)"))
    tasks = [json.loads(line) for line in shipped.read_text().splitlines() if line.strip()]
    fim = min((t for t in tasks if t["kind"] == "fim"), key=lambda t: len(t["reference"]))
    task_file = installed.cwd / "one-task.jsonl"
    task_file.write_text(json.dumps(fim) + "\n")
    out = installed.cwd / "eval"
    installed.run(installed.cli, "eval", "run", "embedded", "--tasks", str(task_file),
                  "--no-test", "--limit", "1", "--max-new-tokens", "1", "--threads", "2",
                  "--out", str(out), timeout=600)
    report = json.loads((out / "report.json").read_text())
    (item,) = report["items"]
    assert item["id"] == fim["id"] and item["tokens"] >= 1
    # Csound judged the answer in the sandbox: it compiled, or Csound said why not
    assert item["compiled"] or item["errors"], item


@pytest.mark.slow
def test_installed_editor_vscode_builds_the_extension(installed):
    """`npm ci` + `vsce package` inside the installed package (needs npm's cache or registry)."""
    out = installed.cwd / "vsix"
    vsix = Path(installed.run(installed.cli, "editor", "vscode", "--out-dir", str(out),
                              timeout=600).stdout.strip().splitlines()[-1])
    assert vsix.parent == out
    names = zipfile.ZipFile(vsix).namelist()
    assert {"extension/extension.js", "extension/src/client.js", "extension/src/prompt.js",
            "extension/package.json"} <= set(names)
    assert not any(n.startswith(("extension/node_modules/", "extension/test/")) for n in names)
