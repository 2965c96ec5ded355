"""Helpers for the Modelfile tests: build the Go renderer, fake an export folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GO_SOURCE = REPO / "tests" / "gotemplate" / "main.go"


def build_gotemplate(tmp: Path) -> Path:
    """``go build`` the renderer into ``tmp`` with its own GOCACHE/GOPATH (no network)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is not installed: run `make setup` (apt package golang-go)")
    out = tmp / "gotemplate"
    env = {**os.environ, "GOCACHE": str(tmp / "gocache"), "GOPATH": str(tmp / "gopath"),
           "GOFLAGS": "", "GO111MODULE": "off", "CGO_ENABLED": "0", "GOPROXY": "off"}
    subprocess.run([go, "build", "-o", str(out), str(GO_SOURCE)], check=True, env=env,
                   capture_output=True, text=True, timeout=300)
    return out


class GoTemplate:
    """Runs the Go renderer on a batch of requests (see tests/gotemplate/main.go)."""

    def __init__(self, binary: Path):
        self.binary = binary

    def run(self, requests: list[dict]) -> list[dict]:
        proc = subprocess.run([str(self.binary)], input=json.dumps(requests),
                              capture_output=True, text=True, timeout=60, check=True)
        return json.loads(proc.stdout)

    def one(self, request: dict) -> str:
        (result,) = self.run([request])
        if "error" in result:
            raise AssertionError(f"Go renderer: {result['error']}")
        return result["prompt"]

    def parse_modelfile(self, text: str) -> list[tuple[str, str]]:
        (result,) = self.run([{"modelfile": text}])
        if "error" in result:
            raise AssertionError(f"Ollama's parser would reject the Modelfile: {result['error']}")
        return [(c["name"], c["args"]) for c in result["commands"]]


def fake_export(folder: Path, gguf: Path, *, prompt_format="chatml", name="csound-assistant",
                lora: bool = False, record: dict | None = None) -> Path:
    """An export folder with the real GGUF symlinked in as ``<name>.Q4_K_M.gguf``, its record
    written by the export stage's own writer (``Export.write``); ``record`` overrides fields
    (``quant_types`` lists more types: link their files in yourself)."""
    from csound_assistant.prompt_format import get_format
    from csound_assistant.stage_records import Export

    folder.mkdir(parents=True)
    (folder / f"{name}.Q4_K_M.gguf").symlink_to(gguf)
    if lora:
        (folder / f"{name}.lora.gguf").symlink_to(gguf)
    fields = {"name": name, "quant_types": ["Q4_K_M"],
              "prompt_format": get_format(prompt_format).to_record(),
              "metadata": {"license": "apache-2.0",
                           "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct"},
              **(record or {})}
    files = {f"{name}.{q}.gguf": {"kind": "model", "quant": q} for q in fields["quant_types"]}
    if lora:
        files[f"{name}.lora.gguf"] = {"kind": "lora"}
    Export.write(folder, files=files, **fields)
    return folder
