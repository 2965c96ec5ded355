"""The stages of ``csound-assistant pipeline`` and its closing summary.

Each ``build`` function gets the stage's output folder and whether an old one is there (then it
rebuilds with ``force``); ``Pipeline.stage`` (pipeline.py) decides whether to call it at all.
Stages read each other's folders through their typed records (stage_records.py): the GGUF the
package ships and the eval scores is ``Export.packaged_gguf``, not a name rebuilt here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from .artifacts import sha256_file
from .export_settings import QUANT_NOTES
from .pipeline_config import PipelineConfig
from .stage_records import Adapter, Base, BaseGguf, Data, Eval, Export, Feedback, Package, Splits

CONTINUE_CONFIG = "config.yaml"  # written into the package folder


def data_code_files() -> list[Path]:
    """The source files that decide the data stage's rows: the builder's own, the core's that
    make row text (the manual's reader, the fix-the-bug request) and the sandbox's."""
    import csound_assistant.data as data_package

    from . import fix_request, isolation, manual, sandbox, sandbox_plugins

    files = sorted(Path(data_package.__file__).parent.glob("*.py"))
    return files + [Path(m.__file__)
                    for m in (manual, fix_request, sandbox, sandbox_plugins, isolation)]


def data_code_sha() -> str:
    """One hash of ``data_code_files()``."""
    import hashlib

    digest = hashlib.sha256()
    for path in data_code_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_splits(root: Path, settings: dict, out: Path, stale: bool,
                 keep_in_train: frozenset[str] | None = None) -> None:
    """Split the data stage's rows into ``out`` (the rows of ``keep_in_train``, the adapter
    the train stage continues, stay in train), with the run's feedback folder's rows (if any)
    in train, never in validation or test. Damaged feedback rows stop it before it writes."""
    from csound_assistant.data.split import split_dataset

    feedback = Feedback.in_run(root) if Feedback.built_in(root) else None
    split_dataset(Data.in_run(root).rows_path, out, force=stale, seed=settings["seed"],
                  ratios=tuple(settings["ratios"]), keep_in_train=keep_in_train,
                  feedback=feedback)


def run_all(p, cfg: PipelineConfig) -> None:
    """Every stage in order on ``p``, a ``pipeline.Pipeline``."""
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

    # Rows from `data from-feedback` live in the feedback folder and join every new train split:
    # a split rebuilt because the data changed must not lose them. A new starter re-splits.
    feedback = Feedback.in_run(root) if Feedback.built_in(root) else None
    p.stage("split", Splits.FOLDER,
            cfg.split | ({"feedback": feedback.rows_sha256()} if feedback else {})
            | ({"keep_in_train": init_adapter} if init_adapter else {}),
            ["data"], split)

    def train(out, stale):
        _train(root, cfg, stale)

    # The train split's hash is part of the key: `data from-feedback` adds corrected rows to it,
    # and the next pipeline run retrains on them. So are the config file's and the weights of
    # the adapter it continues (init_adapter): an edited recipe or starter retrains too.
    train_rows = sha256_file(Splits.in_run(root).train)
    recipe = sha256_file(resolve_config_path(cfg.train["config"]))
    p.stage("train", Adapter.FOLDER, cfg.train | {"train_rows": train_rows, "recipe": recipe,
                                             "init_adapter": init_adapter},
            ["base", "split"], train)

    def export(out, stale):
        from csound_assistant.convert.export import export as run_export

        run_export(root / Adapter.FOLDER, out, merged_dir=root / "merged", force=stale,
                   splits_dir=root / Splits.FOLDER, name=cfg.package["name"], **cfg.export)

    p.stage("export", Export.FOLDER, cfg.export | {"name": cfg.package["name"]}, ["train"], export)

    def package(out, stale):
        from csound_assistant.editors.continue_config import write_continue_config
        from csound_assistant.modelfiles.render import write_modelfile

        export = Export.in_run(root)  # its packaged GGUF is the Modelfile's FROM
        write_modelfile(export.folder, out, name=cfg.package["name"], force=stale)
        write_continue_config(out / CONTINUE_CONFIG, force=True, ollama_model=cfg.package["name"],
                              prompt_format=export.prompt_format)

    p.stage("package", Package.FOLDER, cfg.package, ["export"], package)

    if _base_is_hf_folder(cfg):
        def base_gguf(out, stale):
            _convert_base(root, out, stale)

        # the base is quantized as the fine-tuned model is packaged, for a fair comparison
        p.stage("base-gguf", BaseGguf.FOLDER, Export.in_run(root).packaged_quant, ["base"],
                base_gguf)

    def evaluate(out, stale):
        from csound_assistant.eval.runner import run_eval

        models = {"base": str(_base_gguf(root, cfg)),
                  "fine-tuned": str(Export.in_run(root).packaged_gguf)}
        run_eval(models, out, test_path=Splits.in_run(root).test, force=stale,
                 prompt_formats={"base": Base.in_run(root).prompt_format}, **cfg.eval)

    after = ["export", "split"] + (["base-gguf"] if _base_is_hf_folder(cfg) else [])
    p.stage("eval", Eval.FOLDER, cfg.eval, after, evaluate)


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
    return BaseGguf.in_run(root).gguf


def _convert_base(root: Path, out: Path, stale: bool) -> None:
    """Convert and quantize the untrained base with llama.cpp's tools, carrying the same
    prompt format, so base and fine-tuned are compared on equal terms."""
    from csound_assistant.artifacts import stage_output
    from csound_assistant.convert.gguf_convert import convert
    from csound_assistant.convert.quantize import quantize
    from csound_assistant.prompt_format import get_format

    quant = Export.in_run(root).packaged_quant
    base = Base.in_run(root)
    with stage_output(out, force=stale) as tmp:
        f16, gguf = tmp / "base.F16.gguf", tmp / f"base.{quant}.gguf"
        convert(base.folder, f16, prompt_format=get_format(base.prompt_format),
                metadata={"name": "base"})
        quantize(f16, gguf, quant)
        f16.unlink()
        BaseGguf.write(tmp, gguf=gguf, quant=quant, base=str(base.folder))


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


def summary(p) -> str:
    """The closing SUMMARY.md of the run ``p`` (a ``pipeline.Pipeline``)."""
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

    export, package = Export.in_run(root), Package.in_run(root)
    gguf = export.packaged_gguf
    others = {q: export.gguf(q) for q in export.quant_types[1:]}
    continue_config = package.folder / CONTINUE_CONFIG
    lines += ["## Files", "",
              f"- GGUF: `{gguf}`",
              *(f"- also: `{other}`" for other in others.values()),
              f"- Modelfile: `{package.modelfile}`",
              f"- Continue config: `{continue_config}`",
              f"- Eval report: `{root / Eval.FOLDER / 'report.md'}`", ""]
    gate = export.raw.get("gate") or {}
    if gate.get("table"):
        lines += ["## Quantization gate (vs F16)", "", gate["table"], ""]
        if not gate.get("enforced", True):
            lines += ["Measured, not enforced (`export.gate: false`): a FAIL above did not stop "
                      "the export; the eval below scores that GGUF.", ""]
    if Eval.built_in(root):
        report = json.loads(Eval.in_run(root).report_json.read_text())
        lines += ["## Eval: base vs fine-tuned", "", _eval_table(report), ""]
    lines += [
        "## Use it", "",
        "```bash",
        f"csound-assistant serve {gguf}",
        *(f"csound-assistant serve {other}  # {QUANT_NOTES[quant]}"
          for quant, other in others.items() if quant in QUANT_NOTES),
        f"ollama create {package.name} -f {package.modelfile} && ollama run {package.name}",
        f"cp {continue_config} ~/.continue/config.yaml",
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

