"""The pipeline: shipped configs, stage reuse by key, and (slow) a real end-to-end run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from csound_assistant.artifacts import stage_output, write_record
from csound_assistant.errors import ConfigError
from csound_assistant.pipeline import PIPELINE_CONFIGS, Pipeline, PipelineConfig, remove_partials


@pytest.mark.parametrize("path", sorted(PIPELINE_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    from csound_assistant.train.config import load_config

    cfg = PipelineConfig.load(path)
    assert cfg.run and cfg.export["quant_types"]
    load_config(cfg.train["config"], cfg.train.get("overrides"))  # the train config exists


def test_unknown_key_and_missing_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: x\ntrian: {}\n")
    with pytest.raises(ConfigError, match="unknown key.*trian"):
        PipelineConfig.load(bad)
    with pytest.raises(ConfigError, match="codellama-7b.yaml"):
        PipelineConfig.load(tmp_path / "nope.yaml")


def _builder(calls, name):
    def build(out, stale):
        calls.append(name)
        with stage_output(out, force=stale) as tmp:
            write_record(tmp, name)
    return build


def test_stages_are_reused_until_an_input_changes(tmp_path):
    def run(settings_a, settings_b):
        calls = []
        p = Pipeline(tmp_path, echo=lambda *_: None)
        p.stage("a", "a", settings_a, [], _builder(calls, "a"))
        p.stage("b", "b", settings_b, ["a"], _builder(calls, "b"))
        return calls

    assert run({"x": 1}, {"y": 1}) == ["a", "b"]
    assert run({"x": 1}, {"y": 1}) == []
    assert run({"x": 1}, {"y": 2}) == ["b"]            # only b's settings changed
    assert run({"x": 2}, {"y": 2}) == ["a", "b"]       # a changed: b follows
    assert json.loads((tmp_path / "b" / "record.json").read_text())["pipeline_key"]
    calls = []
    p = Pipeline(tmp_path, echo=lambda *_: None, rebuild_from="b")
    p.stage("a", "a", {"x": 2}, [], _builder(calls, "a"))
    p.stage("b", "b", {"y": 2}, ["a"], _builder(calls, "b"))
    assert calls == ["b"]
    # the reused stage still reports what building it took
    a, b = p.runs
    assert a.reused and a.seconds == 0.0 and a.built_seconds is not None
    assert not b.reused and b.built_seconds == b.seconds
    assert json.loads((tmp_path / "a" / "record.json").read_text())["pipeline_seconds"] >= 0


def test_a_failed_stage_is_rebuilt_and_partials_are_removed(tmp_path):
    p = Pipeline(tmp_path, echo=lambda *_: None)

    def crash(out, stale):
        with stage_output(out, force=stale) as tmp:
            (tmp / "half.bin").write_text("x")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        p.stage("a", "a", {}, [], crash)
    assert not (tmp_path / "a").exists()
    (tmp_path / ".a.partial-left-by-kill").mkdir()
    remove_partials(tmp_path)
    assert list(tmp_path.iterdir()) == []
    calls = []
    Pipeline(tmp_path, echo=lambda *_: None).stage("a", "a", {}, [], _builder(calls, "a"))
    assert calls == ["a"]


SMALL = """\
run: small
data: {limit: 40}
train:
  config: cpu-smollm2
  overrides: {max_steps: 4, eval_every: 2, save_every: 2, time_budget_minutes: 0}
export: {quant_types: [Q8_0, Q4_K_M], gate: false}
eval: {limit: 3, max_new_tokens: 48}
"""


def _pipeline(tmp_path, *extra):
    cfg = tmp_path / "small.yaml"
    cfg.write_text(SMALL)
    return [sys.executable, "-m", "csound_assistant.cli", "pipeline", str(cfg),
            "--work-dir", str(tmp_path / "runs"), *extra]


@pytest.mark.slow
def test_end_to_end_small_then_reused(tmp_path):
    """Every stage for real on the embedded model (tiny settings), then a rerun reuses all."""
    first = subprocess.run(_pipeline(tmp_path), capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root = tmp_path / "runs" / "small"
    for stage in ("base", "data", "splits", "adapter", "export", "package", "eval"):
        assert json.loads((root / stage / "record.json").read_text())["pipeline_key"]
    summary = (root / "SUMMARY.md").read_text()
    assert "compile@1" in summary and "ollama create" in summary
    assert (root / "export" / "csound-assistant.Q4_K_M.gguf").is_file()
    # the Modelfile ships the GGUF the eval scored: the first quant type, not Q4_K_M always
    modelfile = (root / "package" / "Modelfile").read_text()
    assert "FROM ./csound-assistant.Q8_0.gguf" in modelfile, modelfile[:400]
    assert (root / "package" / "csound-assistant.Q8_0.gguf").is_file()
    again = subprocess.run(_pipeline(tmp_path), capture_output=True, text=True)
    assert again.returncode == 0
    assert again.stdout.count("up to date") == 7, again.stdout


@pytest.mark.slow
def test_killed_pipeline_resumes(tmp_path):
    proc = subprocess.Popen(_pipeline(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    for line in proc.stdout:  # kill it as soon as training has started
        if line.startswith("[train] building"):
            break
    time.sleep(20)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    root = tmp_path / "runs" / "small"
    assert not (root / "adapter").exists()
    resumed = subprocess.run(_pipeline(tmp_path), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for stage in ("base", "data", "split"):
        assert f"[{stage}] up to date" in resumed.stdout
    assert (root / "eval" / "record.json").is_file()
    assert not list(Path(root).glob(".*.partial-*"))


def test_default_config_is_the_embedded_cpu_run():
    from csound_assistant.train.config import load_config

    cfg = PipelineConfig.load(None)
    assert cfg.base is None and cfg.launcher == []
    train_cfg = load_config(cfg.train["config"])
    assert train_cfg.method in ("auto", "lora") and train_cfg.init_adapter == "starter"
    assert cfg.export["quant_types"][0] == "Q8_0"  # the first is packaged and scored
    scratch = PipelineConfig.load("smollm2-scratch.yaml")
    assert load_config(scratch.train["config"]).init_adapter == ""


def test_data_key_follows_the_builders_code(tmp_path, monkeypatch):
    """An edited data builder (or sandbox) rebuilds the data on the next run."""
    import shutil

    import csound_assistant.data as data_package
    from csound_assistant.pipeline_stages import data_code_sha

    before = data_code_sha()
    assert before == data_code_sha()
    copy = tmp_path / "data"
    shutil.copytree(Path(data_package.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(data_package, "__file__", str(copy / "__init__.py"))
    assert data_code_sha() == before  # same sources, same key
    (copy / "minimal.py").write_text((copy / "minimal.py").read_text() + "\n# edited\n")
    assert data_code_sha() != before
