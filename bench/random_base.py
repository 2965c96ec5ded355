"""A random-init Llama of CodeLlama-7B (or TinyLlama-1.1B) shape as a base folder.

For GPU benchmarks and QLoRA runs where CodeLlama's weights cannot be downloaded: throughput
and memory do not depend on the weights' values. With ``--tokenizer DIR`` the vocabulary is
that tokenizer's and the folder gets the tokenizer and a record naming ``--prompt-format``, so
``csound-assistant train run`` can train on it end to end.

    python bench/random_base.py /tmp/cl7b [--layers 32] [--tokenizer DIR --prompt-format chatml]
    python bench/random_base.py /tmp/tl1b --shape tinyllama-1.1b --dtype float32 \
        --tokenizer runs/demo/merged        # a 1.1B model for CPU serving benchmarks

With a tokenizer folder that holds ``prompt_format.json`` (a merged or adapter folder), that
file is copied too, so ``csound-assistant export convert`` can turn the base into a GGUF.
"""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

CODELLAMA_7B = dict(vocab_size=32016, hidden_size=4096, intermediate_size=11008,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                    max_position_embeddings=16384, rope_theta=1e6, rms_norm_eps=1e-5,
                    bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
TINYLLAMA_1B = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                    num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                    max_position_embeddings=2048, rope_theta=1e4, rms_norm_eps=1e-5,
                    bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
SHAPES = {"codellama-7b": CODELLAMA_7B, "tinyllama-1.1b": TINYLLAMA_1B}


def build(out: Path, layers: int | None = None, tokenizer_dir: str | None = None,
          prompt_format: str = "chatml", shape_name: str = "codellama-7b",
          dtype: str = "bfloat16") -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    t = time.perf_counter()
    shape = dict(SHAPES[shape_name])
    if layers:
        shape["num_hidden_layers"] = layers
    layers = shape["num_hidden_layers"]
    tokenizer = None
    if tokenizer_dir:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        shape.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id)
    config = LlamaConfig(**shape)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    if tokenizer is not None:
        from csound_assistant.stage_records import Base

        tokenizer.save_pretrained(out)
        if (Path(tokenizer_dir) / "prompt_format.json").is_file():
            import shutil

            shutil.copy(Path(tokenizer_dir) / "prompt_format.json", out)
        Base.write(out, source={"kind": "random-init", "shape": shape_name, "layers": layers},
                   dtype=dtype, prompt_format=prompt_format, architecture=["LlamaForCausalLM"])
    print(f"random base {out} ({layers} layers, vocab {shape['vocab_size']}) in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="codellama-7b")
    ap.add_argument("--layers", type=int, default=None, help="default: the shape's")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--prompt-format", default="chatml")
    a = ap.parse_args()
    build(a.out, a.layers, a.tokenizer, a.prompt_format, a.shape, a.dtype)
