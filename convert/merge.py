"""``csound-assistant export merge``: a peft LoRA adapter folded into its full-precision base.

The base is always loaded from its original full-precision weights: merging into a 4-bit model
rounds the LoRA update away (peft #2321), so a quantized base is refused.

The merge is checked like with like. The base is upcast to float32 (exact from bf16/fp16), the
update is folded in float32, and the merged logits must equal base+adapter (unmerged, float32)
on a sample prompt to float32 rounding: a wrong scale or a module left out fails this. Only
then are the weights rounded once to the saved dtype, and the written folder, read back, must
hold exactly those rounded weights. Comparing bf16 merged logits with bf16 base+adapter instead
measures bf16's rounding, which grows with depth (4% of the largest logit on a random 7B).
Memory: 4 bytes per parameter while merging.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

from csound_assistant.artifacts import read_record, sha256_file, stage_output, write_record
from csound_assistant.errors import ArtifactError, ExportError
from csound_assistant.prompt_format import PromptFormat, get_format

PROMPT_FORMAT_FILE = "prompt_format.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
DTYPES = ("auto", "float32", "float16", "bfloat16")
SAVED_DTYPES = DTYPES[1:]
# Largest allowed |merged - (base + adapter)| float32 logit difference, relative to the largest
# logit: the two differ only in float32 summation order (~1e-6 at 32 layers).
REL_TOLERANCE = 1e-4
SAMPLE_CONVERSATION = [
    {"role": "user", "content": "Write a Csound instrument that plays a 440 Hz sine wave."},
    {"role": "assistant", "content": "instr 1\n  aSig poscil 0.5, 440\n  outs aSig, aSig\nendin"},
]


@dataclass(frozen=True)
class Adapter:
    """A trained adapter folder, resolved to what merging and conversion need."""

    dir: Path
    base_dir: Path
    prompt_format: PromptFormat
    record: dict
    config: dict

    @property
    def weights(self) -> Path:
        return next(self.dir / f for f in ADAPTER_FILES if (self.dir / f).is_file())


def load_prompt_format(folder: Path) -> PromptFormat:
    """The ``PromptFormat`` saved as ``prompt_format.json`` (``PromptFormat.to_record()``)."""
    path = folder / PROMPT_FORMAT_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{folder} has no {PROMPT_FORMAT_FILE}: the training stage writes it beside the "
            "adapter; without it the GGUF cannot carry the trained chat template"
        )
    data = json.loads(path.read_text())
    name = data.get("name") if isinstance(data, dict) else data
    registered = get_format(name)
    if not isinstance(data, dict):
        return registered
    # Keep the trained strings (a custom system prompt, say) even where the registry differs.
    known = {f.name for f in fields(registered)}
    return type(registered)(**{k: v for k, v in data.items() if k in known})


def _base_dir_from(record: dict, config: dict, adapter_dir: Path) -> Path | None:
    base = record.get("base")
    candidates = [
        record.get("base_dir"),
        base if isinstance(base, str) else None,
        *((base.get("dir"), base.get("path")) if isinstance(base, dict) else ()),
        config.get("base_model_name_or_path"),
    ]
    for c in candidates:
        if c:
            path = Path(c)
            path = path if path.is_absolute() else (adapter_dir / path)
            if (path / "config.json").is_file():
                return path.resolve()
            if (Path(c) / "config.json").is_file():
                return Path(c).resolve()
    return None


def resolve_adapter(adapter_dir: str | Path, base_dir: str | Path | None = None) -> Adapter:
    """Check an adapter folder and find its base; report every problem at once."""
    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise ArtifactError(
            f"adapter folder not found: {adapter_dir} (run `csound-assistant train`)")
    problems = []
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if not config:
        problems.append("no adapter_config.json (not a peft adapter folder)")
    elif config.get("peft_type", "LORA") != "LORA":
        problems.append(f"adapter type {config.get('peft_type')!r}: only LoRA adapters are merged")
    if not any((adapter_dir / f).is_file() for f in ADAPTER_FILES):
        problems.append(f"no adapter weights ({' or '.join(ADAPTER_FILES)})")
    record = json.loads((adapter_dir / "record.json").read_text()) if (
        adapter_dir / "record.json").is_file() else {}
    try:
        fmt = load_prompt_format(adapter_dir)
    except Exception as exc:
        problems.append(str(exc))
        fmt = None
    base = Path(base_dir) if base_dir else _base_dir_from(record, config, adapter_dir)
    if base is None:
        problems.append("cannot find the base model: record.json names no base folder with a "
                        "config.json (pass --base DIR)")
    elif not (base / "config.json").is_file():
        problems.append(f"base folder {base} has no config.json")
    if problems:
        raise ArtifactError(f"{adapter_dir} is not a usable adapter:\n  " + "\n  ".join(problems))
    return Adapter(adapter_dir, Path(base), fmt, record, config)


def check_full_precision(base_dir: Path) -> str:
    """The base's weight dtype; refuse a quantized (4-bit, 8-bit, GPTQ, GGUF...) base."""
    config = json.loads((base_dir / "config.json").read_text())
    quant = config.get("quantization_config")
    if quant:
        method = quant.get("quant_method") or ("bitsandbytes" if quant.get("load_in_4bit")
                                               or quant.get("load_in_8bit") else "unknown")
        raise ExportError(
            f"the base {base_dir} is quantized ({method}); merging a LoRA update into quantized "
            "weights rounds it away (peft #2321). Merge into the original full-precision base: "
            "point --base at the fp16/bf16/fp32 checkpoint the adapter was trained from"
        )
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    return dtype if dtype in SAVED_DTYPES else "float32"


def _sample_ids(tokenizer, fmt: PromptFormat):
    text = fmt.bos + "".join(t for t, _ in fmt.chat_segments(SAMPLE_CONVERSATION))
    return tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(input_ids=ids.to(model.device)).logits.float().cpu()


@contextmanager
def _full_float32_matmuls():
    """TF32 matmuls (10 mantissa bits) would make the float32 check as loose as a bf16 one."""
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _round_to(model, dtype: str):
    """Round the float32 merged weights once to ``dtype``; refuse weights it cannot hold."""
    import torch

    model = model.to(getattr(torch, dtype))
    overflowed = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if overflowed:
        raise ExportError(
            f"the merged weights overflow {dtype} in {len(overflowed)} tensors (first: "
            f"{overflowed[0]}); nothing written. Save them as --dtype float32 or bfloat16")
    return model


def _check_written(folder: Path, model, dtype: str) -> int:
    """Read ``folder`` back; every weight must equal ``model``'s bit for bit. Returns the count."""
    import torch
    from transformers import AutoModelForCausalLM

    written = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    expected = model.state_dict()
    got = written.state_dict()
    problems = [f"{n}: not written" for n in expected if n not in got]
    problems += [f"{n}: not in the merged model" for n in got if n not in expected]
    problems += [f"{n}: differs from the checked {dtype} weight" for n in expected
                 if n in got and not torch.equal(got[n], expected[n].detach().cpu())]
    if problems:
        raise ExportError(
            f"the folder written for the merge does not read back as the checked weights "
            f"({len(problems)} problems; nothing published):\n  " + "\n  ".join(problems[:10]))
    return len(expected)


def merge(adapter_dir: str | Path, out_dir: str | Path, *, base_dir: str | Path | None = None,
          dtype: str = "auto", device: str = "auto", force: bool = False, log=print) -> Path:
    """Merge ``adapter_dir`` into its full-precision base; write a HF folder to ``out_dir``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    adapter = resolve_adapter(adapter_dir, base_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise ArtifactError(f"{out_dir} already exists; pass --force to replace it")
    base_dtype = check_full_precision(adapter.base_dir)
    dtype = base_dtype if dtype == "auto" else dtype
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"

    tok_dir = adapter.dir if (adapter.dir / "tokenizer_config.json").is_file() else adapter.base_dir
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    fmt = adapter.prompt_format
    pad_id = tokenizer.convert_tokens_to_ids(fmt.pad)
    if pad_id is None or pad_id == tokenizer.unk_token_id and fmt.pad != tokenizer.unk_token:
        raise ExportError(f"the prompt format's pad token {fmt.pad!r} is not in the vocabulary")

    log(f"merge: loading {adapter.base_dir} in float32 on {device} (saved as {dtype})")
    model = AutoModelForCausalLM.from_pretrained(adapter.base_dir, dtype=torch.float32)
    model.to(device).eval()
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ExportError(f"{adapter.base_dir} loaded with non-float weights; refusing to merge")
    ids = _sample_ids(tokenizer, fmt)
    with _full_float32_matmuls():
        base_logits = _logits(model, ids)
        model = PeftModel.from_pretrained(model, adapter.dir).eval()
        adapted_logits = _logits(model, ids)
        log("merge: folding the LoRA update into the float32 weights")
        model = model.merge_and_unload(safe_merge=True)
        merged_logits = _logits(model, ids)

    scale = max(1.0, float(adapted_logits.abs().max()))  # at least 1: tiny random models
    check = {
        "tokens": int(ids.shape[1]),
        "compared_in": "float32",
        "max_abs_diff_merged_vs_adapter": float((merged_logits - adapted_logits).abs().max()),
        "max_abs_adapter_effect": float((adapted_logits - base_logits).abs().max()),
        "largest_logit": scale,
        "tolerance": REL_TOLERANCE * scale,
        "same_top_token": float((merged_logits.argmax(-1) == adapted_logits.argmax(-1))
                                .float().mean()),
    }
    if check["max_abs_diff_merged_vs_adapter"] > check["tolerance"]:
        raise ExportError(
            "merged logits differ from base+adapter by "
            f"{check['max_abs_diff_merged_vs_adapter']:.3g} in float32 (tolerance "
            f"{check['tolerance']:.3g}, {REL_TOLERANCE:g} of the largest logit): the LoRA update "
            "was not folded in as the adapter computes it (scale, a module left out); nothing "
            "written")
    if check["max_abs_adapter_effect"] == 0.0:
        log("merge: warning: the adapter does not change any logit (an untrained LoRA has B = 0)")
    if dtype != "float32":
        model = _round_to(model, dtype)
        # Reported, not gated: what rounding to the saved dtype alone does to the logits.
        check[f"max_abs_diff_{dtype}_vs_float32"] = float(
            (_logits(model, ids) - merged_logits).abs().max())

    # The merged folder carries the trained format, so HF runtimes and the converter agree.
    tokenizer.chat_template = fmt.jinja_chat_template()
    tokenizer.pad_token = fmt.pad
    model.config.pad_token_id = pad_id
    model.generation_config.pad_token_id = pad_id
    with stage_output(out_dir, force=force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        check["weights_read_back"] = _check_written(tmp, model, dtype)
        tokenizer.save_pretrained(tmp)
        (tmp / PROMPT_FORMAT_FILE).write_text(json.dumps(fmt.to_record(), indent=2) + "\n")
        if (adapter.base_dir / "LICENSE").is_file():
            shutil.copy(adapter.base_dir / "LICENSE", tmp / "LICENSE")
        try:
            base_record = read_record(adapter.base_dir)
        except ArtifactError:
            base_record = {}
        write_record(
            tmp, "merged",
            adapter={"dir": str(adapter.dir.resolve()), "weights": adapter.weights.name,
                     "sha256": sha256_file(adapter.weights), "r": adapter.config.get("r"),
                     "lora_alpha": adapter.config.get("lora_alpha"),
                     "target_modules": adapter.config.get("target_modules"),
                     "method": adapter.record.get("method")
                     or adapter.record.get("config", {}).get("method")},
            base={"dir": str(adapter.base_dir.resolve()), "dtype": base_dtype,
                  "source": base_record.get("source")},
            dtype=dtype, prompt_format=fmt.name, pad_token_id=pad_id, logits_check=check,
            files={p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        )
    log(f"merge: wrote {out_dir} (merged vs base+adapter: max |Δlogit| "
        f"{check['max_abs_diff_merged_vs_adapter']:.2e}, adapter effect "
        f"{check['max_abs_adapter_effect']:.2e})")
    return out_dir
