"""Ollama Modelfiles rendered from the one prompt format: ``csound-assistant modelfile``.

The Modelfile points at the export stage's packaged GGUF (``Export.packaged_gguf``, the first
quant type the export was asked for: ``FROM ./<name>.Q8_0.gguf``) or at a base plus the LoRA GGUF
(``FROM <base>`` + ``ADAPTER ./<name>.lora.gguf``), carries the TEMPLATE from
``PromptFormat.ollama_template()`` (FIM for ``{{ if .Suffix }}`` and for a lone CSD file, the
end-of-file cursor Ollama sends without a suffix: README.md), a ``PARAMETER
stop`` for every end token and turn marker, and the training system prompt.
``tests/test_modelfiles_*.py`` parse the result the way ``ollama create`` does and render it with
Go's text/template (``tests/gotemplate``) to prove it reproduces the training text.
"""

from __future__ import annotations

import os
import shutil
import string
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from csound_assistant.artifacts import RECORD_NAME, stage_output
from csound_assistant.constants import (
    DEFAULT_MODEL_NAME, EMBEDDED_LICENSE, MODELFILE_ADAPTER, MODELFILE_FROM, MODELFILE_PARAMETER,
    QUANT_TYPES,
)
from csound_assistant.errors import ArtifactError, ConfigError
from csound_assistant.prompt_format import PromptFormat, get_format, stop_strings
from csound_assistant.sampling import REPEAT_PENALTY, TOP_P
from csound_assistant.stage_records import Export, Package

TEMPLATE_PATH = Path(__file__).with_name("csound-assistant.Modelfile.tmpl")
MODELFILE_NAME = "Modelfile"
LINK_MODES = ("symlink", "copy", "path")


# repeat_penalty 1.0: Ollama's default (1.1) penalises tokens seen in the last 64, and code
# repeats itself by nature; SmolLM2 and Llama tokenizers spell numbers digit by digit, so the
# penalty turned "sr = 44100" into "sr = 440" (eval/README.md).
DEFAULT_PARAMETERS = {"temperature": 0.2, "top_p": TOP_P, "num_ctx": 4096,
                      "repeat_penalty": REPEAT_PENALTY}

LICENSE_TEXTS = {
    EMBEDDED_LICENSE: (
        "Apache-2.0: the base model (HuggingFaceTB/SmolLM2-135M-Instruct) and this fine-tune.\n"
        "Training data derived from The Canonical Csound Reference Manual, "
        "GFDL-1.2-or-later."
    ),
}


@dataclass(frozen=True)
class ExportedModel:
    """What the Modelfile needs from an export folder: one of its GGUFs and the format."""

    export: Export
    gguf: Path  # the quantized merged model
    prompt_format: PromptFormat

    @property
    def export_dir(self) -> Path:
        return self.export.folder

    @property
    def lora(self) -> Path | None:
        return self.export.lora_gguf

    @property
    def record(self) -> dict:
        return self.export.raw


def read_export(export_dir: str | os.PathLike, *, quant: str | None = None,
                prompt_format: str | None = None) -> ExportedModel:
    """The GGUF of ``quant`` (None: the export's packaged one) and the trained prompt format
    (or ``prompt_format``) of a finished export folder."""
    if quant is not None and quant not in QUANT_TYPES:
        raise ConfigError(f"unknown quant type {quant!r}; choose one of: {', '.join(QUANT_TYPES)}")
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ArtifactError(f"export folder {export_dir} does not exist: run `csound-assistant "
                            "export` first or pass --export-dir")
    export = Export.read(export_dir)
    gguf = export.gguf(quant) if quant else export.packaged_gguf
    fmt = get_format(prompt_format) if prompt_format else export.prompt_format
    return ExportedModel(export, gguf, fmt)


def _check_quotable(label: str, text: str) -> None:
    """Ollama's parser ends a value at the next triple quote and drops non-printable runes."""
    if '"""' in text:
        raise ConfigError(f"the {label} contains '\"\"\"', which a Modelfile cannot quote")
    for ch in text:
        if ch not in "\n\t\r " and unicodedata.category(ch)[0] in "CZ":
            raise ConfigError(
                f"the {label} contains {ch!r} ({unicodedata.name(ch, 'control')}), which "
                "Ollama's Modelfile parser drops"
            )


def _parameter(name: str, value) -> str:
    text = str(value)
    if text != text.strip() or '"' in text or not text:
        raise ConfigError(f"PARAMETER {name} value {value!r} cannot be written unquoted")
    return f"{MODELFILE_PARAMETER} {name} {text}"


# Ollama has no hook to run a lookup: say so where an Ollama user looks.
LOOKUP_NOTE = (
    "# This model was trained with manual lookups (the manual's synopsis of each opcode a request\n"
    "# names, under the request; for completions, of the opcodes on the cursor's line).\n"
    "# `csound-assistant serve` adds them; Ollama cannot, so here it answers from memory and\n"
    "# gets argument lists wrong more often (bench/NOTES.md).\n")


def render_modelfile(prompt_format: PromptFormat, *, model_lines: list[str],
                     name: str = DEFAULT_MODEL_NAME, source: str = "a built model",
                     parameters: dict | None = None, license_text: str | None = None,
                     modelfile_hint: str = MODELFILE_NAME) -> str:
    """The Modelfile text, from the shipped template ``csound-assistant.Modelfile.tmpl``."""
    template = prompt_format.ollama_template()
    parameters = {**DEFAULT_PARAMETERS, **(parameters or {})}
    license_text = license_text or "See the base model's licence."
    for label, text in (("TEMPLATE", template), ("SYSTEM", prompt_format.system),
                        ("LICENSE", license_text)):
        _check_quotable(label, text)
    for line in model_lines:
        _check_quotable("FROM/ADAPTER line", line)
    stop_lines = [_parameter("stop", stop) for stop in stop_strings(prompt_format)]
    value_lines = [_parameter(key, value) for key, value in parameters.items()]
    return string.Template(TEMPLATE_PATH.read_text()).substitute(
        name=name,
        description="a Csound code assistant",
        source=source,
        prompt_format=prompt_format.name,
        modelfile_hint=modelfile_hint,
        model_lines="\n".join(model_lines),
        template=template,
        system=prompt_format.system,
        parameter_lines="\n".join(stop_lines + value_lines),
        license=license_text,
        lookup_note=(LOOKUP_NOTE if prompt_format.opcode_reference or prompt_format.fim_reference
                     else ""),
    )


def _place(src: Path, folder: Path, link: str) -> str:
    """Make ``src`` reachable from ``folder``; return the path to write after FROM/ADAPTER."""
    if link == "path":
        return os.path.relpath(os.path.abspath(src), os.path.abspath(folder))
    target = folder / src.name
    if link == "symlink":
        target.symlink_to(os.path.relpath(os.path.abspath(src), os.path.abspath(folder)))
    else:
        shutil.copy2(src, target)
    return f"./{src.name}"


def _license_for(record: dict) -> str | None:
    """Licence text from the export record (``metadata.license`` is the base model's)."""
    metadata = record.get("metadata") or {}
    key = record.get("license") or metadata.get("license")
    if not isinstance(key, str) or key.lower() in ("", "other"):
        return None
    if key.lower() in LICENSE_TEXTS:
        return LICENSE_TEXTS[key.lower()]
    base = metadata.get("base_model")
    return f"{key}: the base model{f' ({base})' if base else ''} and this fine-tune."


def _default_base(record: dict) -> str | None:
    """What the adapter was trained on: an Ollama name or GGUF given in the record, else the
    full-precision HF folder (Ollama imports safetensors folders with FROM)."""
    named = record.get("base_ollama") or record.get("base_gguf")
    if named:
        return named
    base = record.get("base")
    if isinstance(base, str) and any(Path(base).glob("model*.safetensors")):
        return base
    return None


def write_modelfile(export_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                    name: str = DEFAULT_MODEL_NAME, use_adapter: bool = False,
                    force: bool = False, base: str | None = None, quant: str | None = None,
                    link: str = "symlink", prompt_format: str | None = None,
                    parameters: dict | None = None, license_text: str | None = None) -> Path:
    """Write ``<out_dir>/Modelfile`` (+ record.json) for the model in ``export_dir``.

    ``link`` says how the Modelfile reaches the GGUF: ``symlink`` (``FROM ./x.gguf`` with a
    relative link into the export folder), ``copy`` (a self-contained folder) or ``path``
    (``FROM ../export/x.gguf``). With ``use_adapter`` it writes ``FROM <base>`` +
    ``ADAPTER ./<name>.lora.gguf``; ``base`` is an Ollama model name or the base GGUF file the
    adapter was trained on (default: the export record's full-precision base folder). ``quant``
    None uses the export's packaged GGUF (its first quant type). Returns the Modelfile's path.
    """
    if link not in LINK_MODES:
        raise ConfigError(f"unknown link mode {link!r}; choose one of: {', '.join(LINK_MODES)}")
    if not name or any(ch.isspace() for ch in name):
        raise ConfigError(f"model name {name!r} must be one word, e.g. {DEFAULT_MODEL_NAME}")
    model = read_export(export_dir, quant=quant, prompt_format=prompt_format)
    out_dir = Path(out_dir)
    parameters = {**DEFAULT_PARAMETERS, **(model.record.get("ollama_parameters") or {}),
                  **(parameters or {})}
    base = base or _default_base(model.record)
    if use_adapter:
        if model.lora is None:
            raise ArtifactError(
                f"{model.export_dir} has no <name>.lora.gguf: export the adapter "
                "(`csound-assistant export --lora`) or drop --adapter"
            )
        if not base:
            raise ConfigError(
                "--adapter needs --base: the Ollama model name (e.g. codellama:7b-code) or the "
                "GGUF of the non-quantized base the adapter was trained on"
            )
    # A package folder holding only other stages' files (the Continue config) is no Modelfile
    # to protect: fill it in without --force, keeping those files.
    force = force or (out_dir.is_dir() and not (out_dir / MODELFILE_NAME).exists())
    with stage_output(out_dir, force=force) as tmp:
        _keep_foreign_files(out_dir, tmp)
        files = {}
        if use_adapter:
            base_path = Path(base).expanduser()
            from_value = _place(base_path, tmp, "path") if base_path.exists() else base
            adapter = _place(model.lora, tmp, link)
            model_lines = [f"{MODELFILE_FROM} {from_value}", f"{MODELFILE_ADAPTER} {adapter}"]
            files["adapter"] = {"path": str(model.lora), "sha256": model.export.sha256(model.lora)}
        else:
            from_value = _place(model.gguf, tmp, link)
            model_lines = [f"{MODELFILE_FROM} {from_value}"]
            files["gguf"] = {"path": str(model.gguf), "sha256": model.export.sha256(model.gguf)}
        text = render_modelfile(
            model.prompt_format, model_lines=model_lines, name=name,
            source=str(model.export_dir), parameters=parameters,
            license_text=license_text or _license_for(model.record),
            modelfile_hint=str(out_dir / MODELFILE_NAME),
        )
        (tmp / MODELFILE_NAME).write_text(text)
        Package.write(
            tmp, name=name, modelfile=MODELFILE_NAME, export_dir=str(model.export_dir), link=link,
            use_adapter=use_adapter, base=base if use_adapter else None,
            prompt_format=model.prompt_format.name, stop=stop_strings(model.prompt_format),
            parameters=parameters, files=files,
            ollama_create=f"ollama create {name} -f {out_dir / MODELFILE_NAME}",
        )
    return out_dir / MODELFILE_NAME


OWN_FILES = {MODELFILE_NAME, RECORD_NAME}


def _keep_foreign_files(old_dir: Path, new_dir: Path) -> None:
    """Carry files other stages wrote into the package folder (the Continue config) over."""
    if not old_dir.is_dir():
        return
    for path in old_dir.iterdir():
        if path.name in OWN_FILES or path.is_symlink() or path.suffix == ".gguf":
            continue
        if path.is_file():
            shutil.copy2(path, new_dir / path.name)
