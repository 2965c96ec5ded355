"""The stages of ``csound-assistant pipeline`` and its closing summary.

Each ``build`` function gets the stage's output folder and whether an old one is there (then it
rebuilds with ``force``); ``Pipeline.stage`` decides whether to call it at all.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .artifacts import read_record, sha256_file
from .pipeline import Pipeline, PipelineConfig


FEEDBACK_ROWS = Path("feedback") / "rows.jsonl"  # what `data from-feedback` publishes in a run


def data_code_sha() -> str:
    """One hash of the data builder's and the sandbox's source files."""
    import hashlib

    import csound_assistant.data as data_package

    from . import isolation, sandbox, sandbox_plugins

    files = sorted(Path(data_package.__file__).parent.glob("*.py"))
    files += [Path(m.__file__) for m in (sandbox, sandbox_plugins, isolation)]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_splits(root: Path, settings: dict, out: Path, stale: bool,
                 keep_in_train: frozenset[str] | None = None) -> None:
    """Split ``root/data/rows.jsonl`` into ``out`` (the rows of ``keep_in_train``, the adapter
    the train stage continues, stay in train), then add the feedback rows (if any) to its
    train split, never to validation or test. Damaged feedback rows stop it before it writes."""
    from csound_assistant.data.split import split_dataset

    feedback, rows = root / FEEDBACK_ROWS, []
    if feedback.is_file():
        from csound_assistant.data.validate import read_rows
        from csound_assistant.errors import DataError

        rows, problems = read_rows(feedback)
        if problems:
            raise DataError(f"{feedback} is damaged (rebuild it with `csound-assistant data "
                            "from-feedback --force`)", problems)
    split_dataset(root / "data" / "rows.jsonl", out, force=stale, seed=settings["seed"],
                  ratios=tuple(settings["ratios"]), keep_in_train=keep_in_train)
    if rows:
        from csound_assistant.eval.feedback_rows import merge_into_train

        merge_into_train(out, [row for _, row in rows])


def run_all(p: Pipeline, cfg: PipelineConfig) -> None:
    root = p.root

    def base(out, stale):
        from csound_assistant.base.importer import import_base

        import_base(cfg.base, out, dtype=cfg.base_dtype, force=stale)

    p.stage("base", "base", {"source": cfg.base, "dtype": cfg.base_dtype}, [], base)

    def data(out, stale):
        from csound_assistant.data.build import build_dataset

        build_dataset(out, force=stale, progress=True, **cfg.data)

    # The builder's own code is part of the key too: a new kind of row, or a sandbox that judges
    # differently, rebuilds the data (and so everything after it) on the next run.
    p.stage("data", "data", cfg.data | {"code": data_code_sha()}, [], data)

    from csound_assistant.train.config import resolve_config_path
    from csound_assistant.train.starter import fingerprint, load

    init_spec = _train_config(cfg).init_adapter
    init_adapter = fingerprint(init_spec)

    def split(out, stale):
        # the rows the continued adapter (the starter) saw stay in train, whatever the data
        kept = load(init_spec).seen if init_spec else None
        build_splits(root, cfg.split, out, stale, keep_in_train=kept)

    # Rows from `data from-feedback` live in feedback/rows.jsonl and join every new train split:
    # a split rebuilt because the data changed must not lose them. A new starter re-splits.
    feedback = root / FEEDBACK_ROWS
    p.stage("split", "splits",
            cfg.split | ({"feedback": sha256_file(feedback)} if feedback.is_file() else {})
            | ({"keep_in_train": init_adapter} if init_adapter else {}),
            ["data"], split)

    def train(out, stale):
        _train(root, cfg, stale)

    # The train split's hash is part of the key: `data from-feedback` adds corrected rows to it,
    # and the next pipeline run retrains on them. So are the config file's and the weights of
    # the adapter it continues (init_adapter): an edited recipe or starter retrains too.
    train_rows = sha256_file(root / "splits" / "train.jsonl")
    recipe = sha256_file(resolve_config_path(cfg.train["config"]))
    p.stage("train", "adapter", cfg.train | {"train_rows": train_rows, "recipe": recipe,
                                             "init_adapter": init_adapter},
            ["base", "split"], train)

    def export(out, stale):
        from csound_assistant.convert.export import export as run_export

        run_export(root / "adapter", out, merged_dir=root / "merged", force=stale,
                   splits_dir=root / "splits", name=cfg.package["name"], **cfg.export)

    p.stage("export", "export", cfg.export | {"name": cfg.package["name"]}, ["train"], export)

    def package(out, stale):
        from csound_assistant.editors.continue_config import write_continue_config
        from csound_assistant.modelfiles.render import write_modelfile

        from csound_assistant.modelfiles.render import read_export

        write_modelfile(root / "export", out, name=cfg.package["name"],
                        quant=_packaged_quant(cfg), force=stale)
        write_continue_config(out / "config.yaml", force=True, ollama_model=cfg.package["name"],
                              prompt_format=read_export(root / "export").prompt_format)

    p.stage("package", "package", cfg.package, ["export"], package)

    if _base_is_hf_folder(cfg):
        def base_gguf(out, stale):
            _convert_base(root, cfg, out, stale)

        p.stage("base-gguf", "base-gguf", _packaged_quant(cfg), ["base"], base_gguf)

    def evaluate(out, stale):
        from csound_assistant.eval.runner import run_eval

        models = {"base": str(_base_gguf(root, cfg)), "fine-tuned": str(_final_gguf(root, cfg))}
        run_eval(models, out, test_path=root / "splits" / "test.jsonl", force=stale,
                 prompt_formats={"base": read_record(root / "base")["prompt_format"]},
                 **cfg.eval)

    after = ["export", "split"] + (["base-gguf"] if _base_is_hf_folder(cfg) else [])
    p.stage("eval", "eval", cfg.eval, after, evaluate)


def _packaged_quant(cfg: PipelineConfig) -> str:
    """The first quant type: the GGUF the package ships and the eval scores (the base's
    comparison GGUF too)."""
    return cfg.export["quant_types"][0]


def _export_gguf(root: Path, cfg: PipelineConfig, quant: str) -> Path:
    return root / "export" / f"{cfg.package['name']}.{quant}.gguf"


def _final_gguf(root: Path, cfg: PipelineConfig) -> Path:
    return _export_gguf(root, cfg, _packaged_quant(cfg))


def _base_is_hf_folder(cfg: PipelineConfig) -> bool:
    return cfg.base is not None and Path(cfg.base).expanduser().is_dir()


def _base_gguf(root: Path, cfg: PipelineConfig) -> Path:
    """The GGUF of the untrained base for the comparison: the embedded one, the user's GGUF, or
    (for a HF-folder base) the ``base-gguf`` stage's conversion at the same quant type."""
    if cfg.base is None:
        from csound_assistant.base.importer import embedded_gguf

        return embedded_gguf()
    if not _base_is_hf_folder(cfg):
        return Path(cfg.base).expanduser()
    return root / "base-gguf" / f"base.{_packaged_quant(cfg)}.gguf"


def _convert_base(root: Path, cfg: PipelineConfig, out: Path, stale: bool) -> None:
    """Convert and quantize the untrained base with llama.cpp's tools, carrying the same
    prompt format, so base and fine-tuned are compared on equal terms."""
    from csound_assistant.artifacts import stage_output, write_record
    from csound_assistant.convert.gguf_convert import convert
    from csound_assistant.convert.quantize import quantize
    from csound_assistant.prompt_format import get_format

    quant = _packaged_quant(cfg)
    fmt = get_format(read_record(root / "base")["prompt_format"])
    with stage_output(out, force=stale) as tmp:
        f16 = tmp / "base.F16.gguf"
        convert(root / "base", f16, prompt_format=fmt, metadata={"name": "base"})
        quantize(f16, tmp / f"base.{quant}.gguf", quant)
        f16.unlink()
        write_record(tmp, "base-gguf", quant=quant, base=str(root / "base"))


def _train_overrides(cfg: PipelineConfig) -> list[str]:
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
            for k, v in cfg.train.get("overrides", {}).items()]


def _train_config(cfg: PipelineConfig):
    from csound_assistant.train.config import load_config

    return load_config(cfg.train["config"], _train_overrides(cfg))


def _train(root: Path, cfg: PipelineConfig, stale: bool) -> None:
    """Train in-process, or under ``cfg.launcher`` (accelerate) for several GPUs. Resumes from
    the last checkpoint of an interrupted run with the same settings."""
    from csound_assistant.errors import ArtifactError, ConfigError
    from csound_assistant.train import checkpoint
    from csound_assistant.train.recipe import CHECKPOINTS

    ckpt_root = root / CHECKPOINTS
    resume = checkpoint.latest(ckpt_root) is not None
    overrides = _train_overrides(cfg)
    if cfg.launcher:
        args = [*cfg.launcher, "-m", "csound_assistant.cli", "train", "run",
                "-c", cfg.train["config"], "--work-dir", str(root.parent), "--run", root.name,
                *(["--resume"] if resume else []), *(["--force"] if stale else []),
                *[a for o in overrides for a in ("--set", o)]]
        subprocess.run(args, check=True)
        return
    train_cfg = _train_config(cfg)
    from csound_assistant.train.recipe import train

    try:
        train(train_cfg, root, resume=resume, force=stale)
    except (ConfigError, ArtifactError) as exc:
        if not resume:
            raise
        # The checkpoints belong to different settings: start over.
        print(f"[train] not resuming ({exc}); training from the start")
        shutil.rmtree(ckpt_root, ignore_errors=True)
        train(train_cfg, root, resume=False, force=stale)


def summary(p: Pipeline, cfg: PipelineConfig) -> str:
    root = p.root
    lines = ["# csound-assistant pipeline summary", "", f"Run folder: `{root}`", ""]
    lines += ["| stage | folder | time to build | this run |", "|---|---|---|---|"]
    for r in p.runs:
        took = f"{r.built_seconds:.0f} s" if r.built_seconds is not None else "?"
        lines.append(f"| {r.name} | `{r.folder.name}/` | {took} | "
                     f"{'reused' if r.reused else 'built'} |")
    this_run = sum(r.seconds for r in p.runs)
    to_build = sum(r.built_seconds or 0.0 for r in p.runs)
    lines += [f"| **total** | | {to_build:.0f} s ({to_build / 60:.1f} min) | "
              f"{this_run:.0f} s ({this_run / 60:.1f} min) |", ""]

    export = read_record(root / "export")
    gguf = _final_gguf(root, cfg)
    others = {q: _export_gguf(root, cfg, q) for q in cfg.export["quant_types"][1:]}
    lines += ["## Files", "",
              f"- GGUF: `{gguf}`",
              *(f"- also: `{other}`" for other in others.values()),
              f"- Modelfile: `{root / 'package' / 'Modelfile'}`",
              f"- Continue config: `{root / 'package' / 'config.yaml'}`",
              f"- Eval report: `{root / 'eval' / 'report.md'}`", ""]
    if export.get("gate", {}).get("table"):
        lines += ["## Quantization gate (vs F16)", "", export["gate"]["table"], ""]
        if not export["gate"].get("enforced", True):
            lines += ["Measured, not enforced (`export.gate: false`): a FAIL above did not stop "
                      "the export; the eval below scores that GGUF.", ""]
    report = root / "eval" / "report.json"
    if report.is_file():
        lines += ["## Eval: base vs fine-tuned", "", _eval_table(json.loads(report.read_text())), ""]
    lines += [
        "## Use it", "",
        "```bash",
        f"csound-assistant serve {gguf}",
        *(f"csound-assistant serve {other}  # the fastest to decode on a CPU"
          for quant, other in others.items() if quant == "IQ4_NL-out4"),
        f"ollama create {cfg.package['name']} -f {root / 'package' / 'Modelfile'} "
        f"&& ollama run {cfg.package['name']}",
        f"cp {root / 'package' / 'config.yaml'} ~/.continue/config.yaml",
        "```",
    ]
    return "\n".join(lines) + "\n"


def _eval_table(report: dict) -> str:
    rows = ["| model | compile@1 | sound@1 | opcode coverage | tasks |", "|---|---|---|---|---|"]
    for label, m in report["models"].items():
        s = m["summary"]
        rows.append(f"| {label} | {s['compile@1']:.2f} | {s['sound@1']:.2f} | "
                    f"{s.get('opcode_coverage', 0):.2f} | {s['tasks']} |")
    return "\n".join(rows)

