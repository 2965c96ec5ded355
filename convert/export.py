"""``csound-assistant export``: adapter -> merged full-precision model -> F16 GGUF (+ GGUF LoRA)
-> quantized GGUFs -> quality gate -> one published folder.

    runs/<run>/merged/   the merged HF model (reused when made from the same adapter)
    runs/<run>/export/   <name>.F16.gguf, <name>.<QUANT>.gguf, <name>.lora.gguf, SHA256SUMS,
                         README.md (model card with Hub metadata), record.json

The export folder is built under a temporary name and renamed into place only when every file
is written and the gate passed, so an interrupted or failed export leaves nothing that looks
complete; the next export removes what a killed one left (``artifacts.remove_stale_partials``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from csound_assistant.artifacts import (is_complete, read_record, remove_stale_partials,
                                        sha256_file, stage_output)
from csound_assistant.constants import DEFAULT_MODEL_NAME
from csound_assistant.errors import ArtifactError, ExportError
from csound_assistant.export_settings import EXPORT_DEFAULTS
from csound_assistant.stage_records import Export

from . import gate as gate_mod
from .gguf_convert import convert, convert_lora
from .llama_cpp_tools import find as find_tools
from .merge import Adapter, merge, resolve_adapter
from .model_card import model_card
from .quantize import (check_quant_types, imatrix_supported, importance_matrix, quantize,
                       tensor_types)

DEFAULT_DATASET = "Csound manual examples (csound-doc 6.18, GFDL-1.2-or-later)"


def provenance(adapter: Adapter, name: str) -> dict:
    """Name, licence, base model and dataset for the GGUF metadata and the model card."""
    try:
        base_source = read_record(adapter.base_dir).get("source") or {}
    except ArtifactError:
        base_source = {}
    base_model = base_source.get("model_id") or adapter.config.get("base_model_name_or_path") \
        or adapter.base_dir.name
    looks_like_hub_id = base_model.count("/") == 1 and not Path(base_model).exists()
    data = adapter.record.get("data") or adapter.record.get("dataset") or {}
    dataset = data.get("name") if isinstance(data, dict) else str(data)
    return {
        "name": name,
        "license": base_source.get("license") or "other",
        "base_model": base_model,
        "base_model_url": f"https://huggingface.co/{base_model}" if looks_like_hub_id else None,
        "dataset": dataset or DEFAULT_DATASET,
        "description": f"{name}: {base_model} fine-tuned on Csound with LoRA, for writing and "
                       "completing Csound code",
        "tags": ["csound", "audio", "code", "lora"],
    }


def _merged_for(adapter: Adapter, merged_dir: Path, force: bool, log) -> tuple[Path, bool]:
    """Reuse ``merged_dir`` if it was made from this adapter; else (re)merge."""
    if is_complete(merged_dir):
        made_from = read_record(merged_dir).get("adapter", {}).get("sha256")
        if made_from == sha256_file(adapter.weights):
            log(f"merge: reusing {merged_dir} (same adapter)")
            return merged_dir, True
        if not force:
            raise ArtifactError(f"{merged_dir} was merged from another adapter; pass --force "
                                "to merge again")
    return merge(adapter.dir, merged_dir, base_dir=adapter.base_dir, force=True, log=log), False


def export(adapter_dir: str | Path, out_dir: str | Path, *,
           quant_types=EXPORT_DEFAULTS.quant_types, gate: bool = EXPORT_DEFAULTS.gate,
           lora: bool = EXPORT_DEFAULTS.lora, name: str = DEFAULT_MODEL_NAME,
           force: bool = False, merged_dir: str | Path | None = None,
           splits_dir: str | Path | None = None, base_dir: str | Path | None = None,
           imatrix: bool = EXPORT_DEFAULTS.imatrix, gate_tokens: int = EXPORT_DEFAULTS.gate_tokens,
           imatrix_tokens: int = EXPORT_DEFAULTS.imatrix_tokens, log=print) -> dict:
    """Run every export step; return the export record (also written as record.json, read
    back as ``stage_records.Export``)."""
    out_dir = Path(out_dir)
    quant_types = [q for q in check_quant_types(quant_types) if q != "F16"]
    adapter = resolve_adapter(adapter_dir, base_dir)
    if out_dir.exists() and not force:
        raise ArtifactError(f"{out_dir} already exists; pass --force to replace it (the old one "
                            "is kept until the new one is complete)")
    tools = find_tools()  # fail before the slow steps if the converter is missing
    merged_dir = Path(merged_dir) if merged_dir else out_dir.parent / "merged"
    for stage_dir in (out_dir, merged_dir):  # a killed export's leftovers: free the disk first
        remove_stale_partials(stage_dir.parent, stage_dir.name, log=log)
    splits_dir = Path(splits_dir or adapter.record.get("splits_dir")
                      or adapter.dir.parent / "splits")
    fmt, meta = adapter.prompt_format, provenance(adapter, name)
    timings, files = {}, {}

    def timed(step, fn, *a, **kw):
        start = time.perf_counter()
        result = fn(*a, **kw)
        timings[step] = round(time.perf_counter() - start, 2)
        return result

    merged_dir, reused = timed("merge", _merged_for, adapter, merged_dir, force, log)
    with stage_output(out_dir, force=force) as tmp:
        f16 = tmp / f"{name}.F16.gguf"
        timed("convert", convert, merged_dir, f16, prompt_format=fmt, metadata=meta,
              tools=tools, log=log)
        files[f16.name] = {"kind": "model", "quant": "F16", **tensor_types(f16)}
        if lora:
            lora_path = tmp / f"{name}.lora.gguf"
            timed("lora", convert_lora, adapter.dir, adapter.base_dir, lora_path, metadata=meta,
                  tools=tools, log=log)
            files[lora_path.name] = {"kind": "lora", "base": str(adapter.base_dir)}

        imatrix_info, im = {"used": False}, None
        if imatrix and quant_types:
            supported, why = imatrix_supported()
            if supported:
                texts, source = gate_mod.heldout_texts(splits_dir, fmt, "imatrix")
                im = timed("imatrix", importance_matrix, merged_dir,
                           gate_mod.spread(texts, imatrix_tokens), max_tokens=imatrix_tokens,
                           log=log)
                imatrix_info = {"used": True, "source": source, "tensors": len(im), "via": why}
            else:
                log(f"imatrix: {why}")
                imatrix_info = {"used": False, "reason": why}
        candidates = {}
        for q in quant_types:
            path = tmp / f"{name}.{q}.gguf"
            log(f"quantize: {q}")
            census = timed(f"quantize_{q}", quantize, f16, path, q, imatrix=im)
            files[path.name] = {"kind": "model", "quant": q, **census}
            candidates[q] = path

        gate_info = {"enforced": gate}
        if candidates:
            texts, source = gate_mod.heldout_texts(splits_dir, fmt, "gate")
            log(f"gate: {', '.join(candidates)} vs F16 on {source}")
            results = timed("gate", gate_mod.gate, f16, candidates,
                            gate_mod.spread(texts, gate_tokens), enforce=gate,
                            max_tokens=gate_tokens)
            gate_info.update(source=source, results=results, table=gate_mod.table(results))
            log(gate_info["table"])

        for fname, info in files.items():
            info.update(bytes=(tmp / fname).stat().st_size, sha256=sha256_file(tmp / fname))
        (tmp / "SHA256SUMS").write_text(
            "".join(f"{info['sha256']}  {fname}\n" for fname, info in sorted(files.items())))
        record_fields = dict(
            name=name, adapter=str(adapter.dir.resolve()), base=str(adapter.base_dir),
            merged=str(Path(merged_dir).resolve()), merged_reused=reused,
            # in the order asked for: the first is what `modelfile` and `eval run` pick
            quant_types=quant_types,
            prompt_format=fmt.to_record(), metadata=meta, files=files, imatrix=imatrix_info,
            gate=gate_info, timings_s=timings, llama_cpp_tools=str(tools.root),
            logits_check=read_record(merged_dir).get("logits_check"),
        )
        (tmp / "README.md").write_text(model_card(record_fields, adapter))
        record = Export.write(tmp, **record_fields)
    log(f"export: wrote {out_dir}")
    return record


def push(out_dir: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
         log=print) -> str:
    """Upload a finished export folder to the Hugging Face Hub; return the repo URL."""
    import os

    out_dir = Path(out_dir)
    if not is_complete(out_dir):
        raise ArtifactError(f"{out_dir} is not a finished export (no record.json): export first")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise ExportError("HF_HUB_OFFLINE is set: cannot push to the Hub offline; unset it and "
                          "log in (`huggingface-cli login` or HF_TOKEN)")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        created = json.loads((out_dir / "record.json").read_text()).get("created", "")
        api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="model",
                          commit_message=f"csound-assistant export {created}")
    except Exception as exc:  # network, auth and Hub errors come in many types
        raise ExportError(f"could not push {out_dir} to {repo_id}: {str(exc).splitlines()[0]} "
                          "(offline? not logged in? set HF_TOKEN or run `huggingface-cli login`)"
                          ) from exc
    url = f"https://huggingface.co/{repo_id}"
    log(f"push: {url}")
    return url
