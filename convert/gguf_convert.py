"""``csound-assistant export convert`` and ``export lora``: llama.cpp's own converters, run as
subprocesses with the project's Python, then the prompt format written into the GGUF.

``convert_hf_to_gguf.py`` turns the merged HF folder into an F16 GGUF; ``convert_lora_to_gguf.py``
turns the peft adapter into a GGUF LoRA (for Ollama ``ADAPTER`` and llama-cpp-python
``lora_path``). The chat template, stop tokens, pad and FIM token ids, name, base model, dataset
and licence, and the manual the model learned from (its opcode table for the Csound-aware decoder,
its synopses for the lookups, so that both travel with the model) are then written with gguf-py
(a metadata-only copy of the file) and read back to check. Every output appears under its final
name only when complete.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from csound_assistant import constants as C
from csound_assistant.errors import ConfigError, DataError, ExportError
from csound_assistant.opcode_reference import OpcodeReference
from csound_assistant.opcode_table import OpcodeTable
from csound_assistant.prompt_format import PromptFormat

from .llama_cpp_tools import LlamaCppTools, find

OUTTYPES = ("f32", "f16", "bf16", "q8_0")


@contextlib.contextmanager
def staged_file(final: Path):
    """A temp path beside ``final``; renamed to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; a published file is not
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def run_tool(tools: LlamaCppTools, script: Path, args: list[str], what: str, log=print) -> None:
    """Run one of llama.cpp's scripts; a failure becomes one ExportError with its last lines."""
    cmd = [sys.executable, str(script), *args]
    log(f"{what}: {script.name} {' '.join(args)}")
    proc = subprocess.Popen(cmd, cwd=tools.root, env=tools.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip())
            del lines[:-40]
        proc.wait()
    except BaseException:  # Ctrl-C or a kill of us: never leave the converter running
        proc.kill()
        proc.wait()
        raise
    if proc.returncode != 0:
        errors = [ln for ln in lines if "error" in ln.lower() or "exception" in ln.lower()]
        detail = "\n".join((errors or lines)[-6:])
        raise ExportError(
            f"{what} failed: llama.cpp's {script.name} exited with status {proc.returncode}:\n"
            f"{detail}\n(command: {' '.join(cmd)})"
        )


def convert(merged_dir: str | Path, gguf_path: str | Path, *, prompt_format: PromptFormat,
            metadata: dict, outtype: str = "f16", tools: LlamaCppTools | None = None,
            log=print) -> Path:
    """HF folder -> GGUF (``outtype``) carrying the prompt format and ``metadata``."""
    merged_dir, gguf_path = Path(merged_dir), Path(gguf_path)
    if outtype not in OUTTYPES:
        raise ExportError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    if not (merged_dir / "config.json").is_file():
        raise ExportError(f"{merged_dir} has no config.json: not a merged HF model folder")
    tools = tools or find()
    with staged_file(gguf_path) as tmp:
        raw = tmp.with_name(tmp.name + ".raw")
        try:
            run_tool(tools, tools.convert_hf,
                     [str(merged_dir.resolve()), "--outtype", outtype, "--outfile",
                      str(raw.resolve()), "--model-name",
                      metadata.get("name", C.DEFAULT_MODEL_NAME)],
                     "convert", log)
            embed_metadata(raw, tmp, prompt_format, metadata)
        finally:
            raw.unlink(missing_ok=True)
        verify_metadata(tmp, prompt_format, metadata)
    values, why_not = manual_values()
    if not values:
        log(f"convert: no opcode table or synopses written into {gguf_path.name} ({why_not}); "
            "the server will use the manual installed where it runs, or decode plain and answer "
            "without lookups")
    return gguf_path


def convert_lora(adapter_dir: str | Path, base_dir: str | Path, gguf_path: str | Path, *,
                 metadata: dict, outtype: str = "f16", tools: LlamaCppTools | None = None,
                 log=print) -> Path:
    """peft LoRA adapter -> GGUF LoRA adapter (applies to a GGUF of the same base)."""
    gguf_path = Path(gguf_path)
    tools = tools or find()
    with staged_file(gguf_path) as tmp:
        raw = tmp.with_name(tmp.name + ".raw")
        try:
            run_tool(tools, tools.convert_lora,
                     [str(Path(adapter_dir).resolve()), "--base", str(Path(base_dir).resolve()),
                      "--outtype", outtype, "--outfile", str(raw.resolve())],
                     "lora", log)
            if _field(_reader(raw), C.GGUF_ADAPTER_TYPE) != "lora":
                raise ExportError(f"{raw} is not a GGUF LoRA adapter (adapter.type missing)")
            # The converter names the adapter after folder paths; write the real provenance.
            name = metadata.get("name", C.DEFAULT_MODEL_NAME) + " LoRA"
            embed_metadata(raw, tmp, None, {**metadata, "name": name})
        finally:
            raw.unlink(missing_ok=True)
    return gguf_path


# --- metadata ------------------------------------------------------------------------------
def _reader(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(path, "r")
    except Exception as exc:
        raise ExportError(f"cannot read {path} as GGUF: {exc}") from exc


def _field(reader, key):
    field = reader.get_field(key)
    return None if field is None else field.contents()


def token_id(tokens: list[str], text: str) -> int:
    """The id of a special token given as prompt-format text (CodeLlama's carry spaces)."""
    for candidate in (text, text.strip(), "\u2581" + text.strip()):
        with contextlib.suppress(ValueError):
            return tokens.index(candidate)
    raise ExportError(f"token {text!r} is not in the GGUF's vocabulary")


def prompt_format_ids(tokens: list[str], fmt: PromptFormat) -> dict[str, int]:
    """GGUF token-id keys for the format: stop tokens, pad (never EOS) and the FIM roles.

    EOS is the end of an answer; EOT is the end of a FIM middle when that differs (llama.cpp
    stops on both, and does the same for CodeLlama's ``<EOT>``).
    """
    ids = {
        C.GGUF_EOS_TOKEN_ID: token_id(tokens, fmt.eos),
        C.GGUF_EOT_TOKEN_ID: token_id(tokens, fmt.fim_end),
        C.GGUF_PAD_TOKEN_ID: token_id(tokens, fmt.pad),
        C.GGUF_FIM_PRE_TOKEN_ID: token_id(tokens, fmt.fim_prefix),
        C.GGUF_FIM_SUF_TOKEN_ID: token_id(tokens, fmt.fim_suffix),
        C.GGUF_FIM_MID_TOKEN_ID: token_id(tokens, fmt.fim_middle),
    }
    if ids[C.GGUF_PAD_TOKEN_ID] in (ids[C.GGUF_EOS_TOKEN_ID], ids[C.GGUF_EOT_TOKEN_ID]):
        raise ExportError(
            f"pad token {fmt.pad!r} is a stop token: training would never learn to stop")
    return ids


def general_values(metadata: dict) -> dict:
    """key -> (value, GGUFValueType) for name, licence, base model, dataset, tags."""
    from gguf import GGUFValueType as T

    out = {C.GGUF_GENERAL_NAME: (metadata.get("name", C.DEFAULT_MODEL_NAME), T.STRING)}
    if metadata.get("license"):
        out[C.GGUF_GENERAL_LICENSE] = (metadata["license"], T.STRING)
    if metadata.get("description"):
        out[C.GGUF_GENERAL_DESCRIPTION] = (metadata["description"], T.STRING)
    if metadata.get("tags"):
        out[C.GGUF_GENERAL_TAGS] = (list(metadata["tags"]), T.ARRAY)
    if metadata.get("base_model"):
        out[C.GGUF_GENERAL_BASE_MODEL_COUNT] = (1, T.UINT32)
        out[C.GGUF_GENERAL_BASE_MODEL] = (metadata["base_model"], T.STRING)
        if metadata.get("base_model_url"):
            out[C.GGUF_GENERAL_BASE_MODEL_REPO_URL] = (metadata["base_model_url"], T.STRING)
    if metadata.get("dataset"):
        out[C.GGUF_GENERAL_DATASET_COUNT] = (1, T.UINT32)
        out[C.GGUF_GENERAL_DATASET] = (metadata["dataset"], T.STRING)
    return out


def manual_values() -> tuple[dict[str, str], str]:
    """The installed manual as a model GGUF carries it, ({key: value}, ''): its opcode table
    (the decoder's) and its synopses (the lookups'); or ({}, why there is no manual)."""
    try:
        return {C.GGUF_OPCODE_TABLE: OpcodeTable.from_manual().to_gguf(),
                C.GGUF_SYNOPSES: OpcodeReference.from_manual().to_gguf()}, ""
    except (DataError, ConfigError) as exc:
        return {}, str(exc)


def metadata_values(tokens: list[str], fmt: PromptFormat, metadata: dict) -> dict:
    """key -> (value, GGUFValueType) for everything ``export`` writes into a model GGUF."""
    from gguf import GGUFValueType as T

    out = {C.GGUF_CHAT_TEMPLATE: (fmt.jinja_chat_template(), T.STRING)}
    out.update({k: (v, T.UINT32) for k, v in prompt_format_ids(tokens, fmt).items()})
    if fmt.opcode_reference:  # eval and the server add manual synopses as training did
        out[C.GGUF_OPCODE_REFERENCE] = (True, T.BOOL)
    if fmt.fim_reference:
        out[C.GGUF_FIM_REFERENCE] = (True, T.BOOL)
    # the decoder's opcodes and the lookups' synopses: those of the manual the model learned from
    out.update({key: (value, T.STRING) for key, value in manual_values()[0].items()})
    return {**out, **general_values(metadata)}


def embed_metadata(src: Path, dst: Path, fmt: PromptFormat | None, metadata: dict) -> None:
    """Copy GGUF ``src`` to ``dst`` with the prompt format (model files) and ``metadata`` keys
    (re)written; earlier base-model, dataset and tag entries are replaced, not mixed with ours."""
    from gguf import GGUFValueType, GGUFWriter

    reader = _reader(src)
    if fmt is None:
        new = general_values(metadata)
    else:
        tokens = list(_field(reader, C.GGUF_TOKEN_LIST) or [])
        if not tokens:
            raise ExportError(f"{src} has no {C.GGUF_TOKEN_LIST}: cannot place the prompt format")
        new = metadata_values(tokens, fmt, metadata)
    replaced = ("general.base_model.", "general.dataset.", C.GGUF_CHAT_TEMPLATE,
                C.GGUF_GENERAL_TAGS)
    writer = GGUFWriter(dst, arch=_field(reader, C.GGUF_ARCHITECTURE), endianess=reader.endianess)
    alignment = _field(reader, "general.alignment")
    if alignment is not None:
        writer.data_alignment = alignment
    for field in reader.fields.values():
        name = field.name
        if (name == C.GGUF_ARCHITECTURE or name.startswith("GGUF.") or name in new
                or name.startswith(replaced)):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for key, (value, vtype) in new.items():
        sub = GGUFValueType.STRING if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype,
                               tensor.data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()


def read_metadata(gguf_path: str | Path) -> dict:
    """Every key of a GGUF except the vocabulary arrays, as Python values."""
    reader = _reader(Path(gguf_path))
    skip = (C.GGUF_TOKEN_LIST, "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
            "tokenizer.ggml.scores")
    return {k: f.contents() for k, f in reader.fields.items()
            if not k.startswith("GGUF.") and k not in skip}


def verify_metadata(gguf_path: Path, fmt: PromptFormat, metadata: dict) -> None:
    """Read the file back: every key we meant to write has the value we meant."""
    reader = _reader(gguf_path)
    tokens = list(_field(reader, C.GGUF_TOKEN_LIST))
    wrong = [f"{key}: wanted {value!r}, found {_field(reader, key)!r}"
             for key, (value, _) in metadata_values(tokens, fmt, metadata).items()
             if _field(reader, key) != value]
    if wrong:
        raise ExportError(f"{gguf_path} lacks the metadata written to it:\n  " + "\n  ".join(wrong))
