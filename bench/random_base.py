"""A random-init Llama of CodeLlama-7B shape as a base folder (``runs/<run>/base``).

For GPU benchmarks and QLoRA runs where CodeLlama's weights cannot be downloaded: throughput
and memory do not depend on the weights' values. With ``--tokenizer DIR`` the vocabulary is
that tokenizer's and the folder gets the tokenizer and a record naming ``--prompt-format``, so
``csound-assistant train run`` can train on it end to end.

    python bench/random_base.py /tmp/cl7b [--layers 32] [--tokenizer DIR --prompt-format chatml]
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


def build(out: Path, layers: int = 32, tokenizer_dir: str | None = None,
          prompt_format: str = "chatml") -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    t = time.perf_counter()
    shape = {**CODELLAMA_7B, "num_hidden_layers": layers}
    tokenizer = None
    if tokenizer_dir:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        shape.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id)
    config = LlamaConfig(**shape)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    if tokenizer is not None:
        from csound_assistant.artifacts import write_record

        tokenizer.save_pretrained(out)
        write_record(out, "base", source={"kind": "random-init", "shape": "CodeLlama-7B",
                                          "layers": layers}, dtype="bfloat16",
                     prompt_format=prompt_format, architecture=["LlamaForCausalLM"])
    print(f"random base {out} ({layers} layers, vocab {shape['vocab_size']}) in "
          f"{time.perf_counter() - t:.0f} s", flush=True)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tokenizer", default=None)
    ap.add_argument("--prompt-format", default="chatml")
    a = ap.parse_args()
    build(a.out, a.layers, a.tokenizer, a.prompt_format)
