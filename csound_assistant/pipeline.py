"""``csound-assistant pipeline [CONFIG]``: the main job, every stage in order.

base import -> data build -> data split -> train -> export (merge, convert, quantize, gate)
-> modelfile + editor config -> eval (base vs fine-tuned).

Each stage's folder records a ``pipeline_key``: a hash of that stage's settings and the keys of
the stages it reads. A stage whose folder is complete with the same key is reused; a changed
setting or input reruns that stage and, through the keys, everything after it. Stages publish
their folders atomically, so a killed pipeline reruns only the unfinished stage (training resumes
from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import click

from . import pipeline_stages as stages
from .clicommon import domain_errors, run_option, work_dir_option
from .pipeline_config import PIPELINE_CONFIGS, PipelineConfig

__all__ = ["PIPELINE_CONFIGS", "Pipeline", "PipelineConfig", "remove_partials", "run_pipeline"]


def stage_key(settings, upstream_keys: list[str]) -> str:
    blob = json.dumps([settings, upstream_keys], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _existing(stage_dir: Path) -> dict:
    record = stage_dir / "record.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def _stamp_key(stage_dir: Path, key: str, seconds: float) -> None:
    """The stage's key, and how long it took to build (a rerun's summary still shows it)."""
    from .artifacts import write_json

    record_path = stage_dir / "record.json"
    record = json.loads(record_path.read_text())
    record["pipeline_key"] = key
    record["pipeline_seconds"] = round(seconds, 1)
    write_json(record_path, record)


@dataclass
class StageRun:
    name: str
    folder: Path
    seconds: float  # spent by this run (0 when reused)
    reused: bool
    built_seconds: float | None = None  # what building it took, this run or an earlier one


class Pipeline:
    """Runs stages in order, reusing those whose key matches."""

    def __init__(self, root: Path, echo=click.echo, rebuild_from: str | None = None):
        self.root = root
        self.echo = echo
        self.rebuild_from = rebuild_from  # this stage and every later one are rebuilt
        self.keys: dict[str, str] = {}
        self.runs: list[StageRun] = []

    def stage(self, name: str, folder: str, settings, after: list[str], build) -> Path:
        out = self.root / folder
        key = stage_key(settings, [self.keys[a] for a in after])
        self.keys[name] = key
        if name == self.rebuild_from:
            self.rebuild_from = "*"
        existing = _existing(out)
        if self.rebuild_from != "*" and existing.get("pipeline_key") == key:
            self.echo(f"[{name}] up to date: {out}")
            self.runs.append(StageRun(name, out, 0.0, True, existing.get("pipeline_seconds")))
            return out
        stale = out.exists()
        self.echo(f"[{name}] {'rebuilding (inputs changed)' if stale else 'building'}: {out}")
        start = time.monotonic()
        build(out, stale)
        seconds = time.monotonic() - start
        _stamp_key(out, key, seconds)
        self.echo(f"[{name}] done in {seconds:.0f} s")
        self.runs.append(StageRun(name, out, seconds, False, seconds))
        return out


def remove_partials(root: Path) -> None:
    """Delete the ``.<stage>.partial-*`` folders that killed runs left in ``root`` (never
    reused); a folder another live process is building stays."""
    from .artifacts import remove_stale_partials

    remove_stale_partials(root, log=click.echo)


STAGES = ("base", "data", "split", "train", "export", "package", "base-gguf", "eval")


def run_pipeline(cfg: PipelineConfig, work_dir: str | None = None,
                 rebuild_from: str | None = None) -> dict:
    from .artifacts import work_dir as resolve

    root = resolve(work_dir, cfg.run)
    root.mkdir(parents=True, exist_ok=True)
    remove_partials(root)
    p = Pipeline(root, rebuild_from=rebuild_from)
    stages.run_all(p, cfg)
    summary = stages.summary(p)
    (root / "SUMMARY.md").write_text(summary)
    click.echo("\n" + summary)
    return {"root": str(root), "stages": [r.__dict__ for r in p.runs]}


@click.command()
@click.argument("config", required=False)
@click.option("--from", "rebuild_from", type=click.Choice(STAGES), default=None,
              help="Rebuild this stage and every later one even if up to date.")
@work_dir_option
@run_option
def cli(config, rebuild_from, work_dir, run):
    """Run every stage, reusing finished ones: data build -> split -> train -> export
    (merge, convert, quantize, quality gate) -> Modelfile and editor configs -> eval of base vs
    fine-tuned. CONFIG is a YAML file or a shipped config name; with none it runs the embedded
    default (SmolLM2-135M-Instruct on CPU, ~15 min on 2 cores).

    \b
    Examples:
        csound-assistant pipeline
        csound-assistant pipeline codellama-7b.yaml --run codellama
        csound-assistant pipeline --from train     # retrain and redo what follows
    """
    with domain_errors():
        cfg = PipelineConfig.load(config)
        if run:
            cfg.run = run
        run_pipeline(cfg, work_dir, rebuild_from)
