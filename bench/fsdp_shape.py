"""QLoRA at CodeLlama-34B shape on one GPU: the plain recipe against FSDP2 with the parameters
offloaded to CPU memory (the layout that shards when only one card is there), each row in its
own process, one table of real tokens/s and peak GPU memory.

    python bench/fsdp_shape.py --out-dir /tmp/fsdp [--rows plain,fsdp-offload] [--steps 6]

A 34B checkpoint cannot be written to this machine's disk in bf16 (68 GB), so each child builds
the random base in 4 bits directly on the GPU, one decoder layer at a time (bf16 random weights
quantized to NF4 with double quantization, stored in bf16 words), then wraps it with the
recipe's own ``adapt`` (LoRA r16 on q/k/v/o, gradient checkpointing) and, for ``fsdp-offload``,
shards it with the recipe's ``sharding.shard``. Throughput does not depend on the weights' values.
Documents: the real dataset's lengths (train_throughput.py), packed 8,192 tokens per micro-batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CODELLAMA_34B = dict(vocab_size=32000, hidden_size=8192, intermediate_size=22016,
                     num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=8,
                     max_position_embeddings=16384, rope_theta=1e6, rms_norm_eps=1e-5,
                     bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
ROWS = ("plain", "fsdp-offload")


def build_4bit(layers: int):
    """A random CodeLlama-34B-shaped Llama in NF4 on the GPU, built a layer at a time."""
    import bitsandbytes as bnb
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from csound_assistant.train import attention

    config = LlamaConfig(**{**CODELLAMA_34B, "num_hidden_layers": 0})
    config._attn_implementation = attention.register()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
        for i in range(layers):
            layer = LlamaDecoderLayer(config, layer_idx=i).to(torch.bfloat16)
            for parent in list(layer.modules()):
                for name, linear in list(parent.named_children()):
                    if isinstance(linear, torch.nn.Linear):
                        setattr(parent, name, _nf4(bnb, linear))
            model.model.layers.append(layer)
    config.num_hidden_layers = layers
    config.layer_types = ["full_attention"] * layers
    model.is_loaded_in_4bit = True  # peft then wraps the Linear4bit layers with its bnb LoRA
    torch.cuda.empty_cache()
    return model


def _nf4(bnb, linear):
    import torch

    four = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                             compute_dtype=torch.bfloat16, compress_statistics=True,
                             quant_type="nf4", quant_storage=torch.bfloat16, device="meta")
    weight = linear.weight.data.normal_(0, 0.02)
    four.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True,
                                    quant_type="nf4", quant_storage=torch.bfloat16,
                                    module=four).to("cuda")
    return four


def row(name: str, steps: int, warmup: int, layers: int) -> dict:
    import torch

    from csound_assistant.train import sharding
    from csound_assistant.train.backend import adapt, choose_backend
    from csound_assistant.train.batching import BatchPlan, collate_packed, trained_tokens
    from csound_assistant.train.config import load_config
    from csound_assistant.train.encode import Encoded
    from csound_assistant.train.recipe import _init_distributed
    from train_throughput import docs_for_bench

    cfg = load_config("codellama-34b-qlora-fsdp", {"progress": False, "liger": "false"})
    backend = choose_backend(cfg)
    started = time.perf_counter()
    model = adapt(build_4bit(layers), cfg, backend)
    built = time.perf_counter() - started
    loaded_gib = torch.cuda.memory_allocated() / 2**30
    if name == "fsdp-offload":
        _init_distributed(backend)
        model = sharding.shard(model, backend.fsdp)
        torch.cuda.empty_cache()
    sharded_gib = torch.cuda.memory_allocated() / 2**30
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, **({} if backend.offload else
                                                              {"fused": True}))
    docs = [Encoded(ids, labels, "chat") for ids, labels in docs_for_bench(400)]
    plan = BatchPlan(docs, True, cfg.batch_tokens, cfg.max_batch_rows, seed=0)
    from csound_assistant.train.recipe import _trained_positions_loss

    model.train()
    losses, tokens = [], 0
    torch.cuda.reset_peak_memory_stats()
    for s in range(steps):
        if s == warmup:
            torch.cuda.synchronize()
            t0, tokens = time.perf_counter(), 0
        (batch,) = plan.step(s, 1)
        inputs = {k: v.cuda() if hasattr(v, "cuda") else v for k, v in collate_packed(batch).items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = _trained_positions_loss(model, inputs, trained_tokens(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        tokens += sum(len(e) for e in batch)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"row": name, "layers": layers, "backend": backend.describe(),
            "tokens_s": tokens / seconds, "timed_steps": steps - warmup, "seconds": seconds,
            "peak_train_gib": torch.cuda.max_memory_allocated() / 2**30,
            "loaded_gib": loaded_gib, "after_shard_gib": sharded_gib, "build_s": built,
            "local_fraction": sharding.local_fraction(model), "losses": losses}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("fsdp-out"))
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--layers", type=int, default=CODELLAMA_34B["num_hidden_layers"])
    ap.add_argument("--row-timeout", type=int, default=400)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.row:
        result = row(args.row, args.steps, args.warmup, args.layers)
        from train_throughput import versions

        result["versions"] = versions()
        (args.out_dir / f"fsdp-{args.row}.json").write_text(json.dumps(result, indent=1))
        return
    results = {}
    for name in args.rows.split(","):
        env = dict(os.environ)
        if name == "fsdp-offload":  # what `accelerate launch` with fsdp2-1gpu-offload.yaml sets
            env.update(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_OFFLOAD_PARAMS="true",
                       FSDP_TRANSFORMER_CLS_TO_WRAP="LlamaDecoderLayer")
        cmd = [sys.executable, __file__, "--row", name, "--out-dir", str(args.out_dir),
               "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--layers", str(args.layers)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                  timeout=args.row_timeout)
            log = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            log = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {args.row_timeout} s"
        (args.out_dir / f"fsdp-{name}.log").write_text(str(log))
        path = args.out_dir / f"fsdp-{name}.json"
        results[name] = json.loads(path.read_text()) if path.is_file() else {
            "failed": "\n".join(str(log).strip().splitlines()[-8:])}
        print(name, {k: v for k, v in results[name].items()
                     if k not in ("losses", "versions")}, flush=True)
    lines = ["| row | real tokens/s | peak GPU GiB (training) | GPU GiB after load | "
             "after shard | trainable share held |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "tokens_s" in r:
            lines.append(f"| {name} | {r['tokens_s']:,.0f} | {r['peak_train_gib']:.2f} | "
                         f"{r['loaded_gib']:.2f} | {r['after_shard_gib']:.2f} | "
                         f"{r['local_fraction']:.0%} |")
        else:
            lines.append(f"| {name} | failed: {r['failed'][-200:]} | | | | |")
    print("\n".join(lines))
    (args.out_dir / "fsdp-table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
