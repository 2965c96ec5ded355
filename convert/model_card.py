"""The export's ``README.md``: a Hugging Face model card (YAML metadata + what is in the folder,
how it was made, how to run it, and the quality gate's numbers)."""

from __future__ import annotations

import yaml

from .merge import Adapter


def _hub_metadata(record: dict) -> dict:
    meta = record["metadata"]
    card = {
        "license": meta["license"],
        "library_name": "gguf",
        "pipeline_tag": "text-generation",
        "language": ["en"],
        "tags": [*meta["tags"], "gguf", "llama.cpp"],
    }
    if meta.get("base_model_url"):  # only a Hub id is valid here
        card["base_model"] = meta["base_model"]
        card["base_model_relation"] = "finetune"
    return card


def model_card(record: dict, adapter: Adapter) -> str:
    meta, fmt, files = record["metadata"], record["prompt_format"], record["files"]
    name = meta["name"]
    main = next((f for f, i in files.items() if i.get("quant") not in (None, "F16")), None) \
        or next(f for f, i in files.items() if i.get("quant") == "F16")
    rows = "\n".join(
        f"| `{f}` | {i.get('quant', 'LoRA adapter (F16)')} | {i['bytes'] / 1e6:.1f} MB | "
        f"{i.get('bits_per_weight', '')} | `{i['sha256'][:16]}…` |"
        for f, i in sorted(files.items()))
    gate = record["gate"]
    gate_text = gate.get("table", "No quantized file: no gate.")
    imatrix = record["imatrix"]
    imatrix_text = (f"Importance matrix from {imatrix['source']} ({imatrix['tensors']} tensors)."
                    if imatrix.get("used")
                    else f"No importance matrix: {imatrix.get('reason', 'disabled')}.")
    lora_file = next((f for f, i in files.items() if i["kind"] == "lora"), None)
    lora_text = (f"`{lora_file}` is the LoRA adapter alone, for Ollama `ADAPTER` or "
                 f"llama-cpp-python `lora_path`, on an F16 GGUF of the base `{meta['base_model']}`."
                 if lora_file else "")
    cfg = adapter.config
    body = f"""
# {name}

{meta['description']}.

| file | type | size | bits/weight | sha256 |
|---|---|---|---|---|
{rows}

{lora_text}

## Prompt format

`{fmt['name']}`; the GGUF carries it as `tokenizer.chat_template`, with EOS `{fmt['eos']}`,
end-of-middle `{fmt['fim_end']}` and pad `{fmt['pad']}` (pad is never a stop token).
Fill in the middle: `{fmt['fim_prefix']}<prefix>{fmt['fim_suffix']}<suffix>{fmt['fim_middle']}`,
stop at `{fmt['fim_end']}`. Stop strings: {', '.join(f'`{s}`' for s in fmt['stop'])}.

## Run it

```python
from llama_cpp import Llama
llm = Llama("{main}", n_ctx=4096)
out = llm.create_chat_completion(
    [{{"role": "user", "content": "Write a Csound instrument that plays a 440 Hz sine."}}])
print(out["choices"][0]["message"]["content"])
```

```
ollama create {name} -f Modelfile   # Modelfile: FROM ./{main}
```

## How it was made

- Base: `{meta['base_model']}` (licence {meta['license']}), merged in full precision with a
  LoRA adapter (r={cfg.get('r')}, alpha={cfg.get('lora_alpha')}, modules
  {', '.join(sorted(cfg.get('target_modules') or []))}).
- Training data: {meta['dataset']}. The Csound manual is licensed GFDL-1.2-or-later.
- Converted with llama.cpp's `convert_hf_to_gguf.py` and quantized with llama.cpp's quantizer
  (llama-cpp-python {record.get('llama_cpp_tools', '').rstrip('/').split('/')[-1]}).
  {imatrix_text}

## Quality gate (quantized vs F16, held-out Csound text)

Source: {gate.get('source', '-')}. Enforced: {gate.get('enforced')}.

{gate_text}

## Limitations

A small model that writes plausible Csound which may not compile or sound as intended: check
output with `csound --syntax-check-only` before running it, and never run untrusted Csound
outside a sandbox (it can execute shell commands and write files).
"""
    return "---\n" + yaml.safe_dump(_hub_metadata(record), sort_keys=False) + "---\n" + body
