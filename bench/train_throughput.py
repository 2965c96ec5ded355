"""QLoRA training throughput at CodeLlama-7B shape: the seed's own script vs the project's
recipe and its speed variants, every row in its own process, one table.

Run on an NVIDIA GPU (`bash bench/gpu_session.sh bench`, results in bench/NOTES.md):

    python bench/train_throughput.py --out-dir results/ [--rows seed-sft,default,...]
        [--lengths bench/results/train-lengths-smollm2.json]
    python bench/train_throughput.py --rows seed-sft,default,shipped-before --dry-run

It builds a random-init CodeLlama-7B-shaped Llama (`random_base.py`; throughput does not depend
on the weights' values), then runs each row as a child process (this script with ``--row``,
or `seed_sft.py` for the seed) so that no row's peak memory holds another's model:

  gemm-peak  a bf16 matrix product at the layers' shapes: the FLOP/s the utilisation is of
  seed-sft   the seed: trl's SFTTrainer with the seed guide's arguments (`seed_sft.py`)
  default    the project's recipe as shipped (train/configs/codellama-7b-qlora.yaml: packed
             8,192-token micro-batches, varlen attention, Liger, gradient checkpointing, LoRA
             dropout 0, the fused LoRA forward by lora_kernel=auto), its model loaded and its
             LoRA kernel applied by the recipe's own `load_model` and `apply_lora_kernel`;
             also checks that packing keeps documents apart and fused = peft, and profiles
             one step
  shipped-before  the shipped config before dropout 0 and the fused forward (dropout 0.05,
             peft's LoRA forward): `--rows seed-sft,default,shipped-before` is the table
  others     the same with one or more knobs changed (ROWS below); ``probe-T`` rows measure
             peak memory against the number of un-checkpointed layers at T tokens per
             micro-batch, and the parent then times ``T-keepK`` with the largest K that stays
             under the seed's peak (linear in K, 0.15 GiB margin)

Every row trains on documents with the real dataset's lengths (``--lengths``; random ids, the
first part of each masked as prompt) and reports real (non-pad) tokens/s after 2 untimed steps,
peak GPU memory of its whole process, and useful FLOP/s over the measured bf16 GEMM rate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # random_base, seed_sft
SHIPPED = HERE.parent / "train" / "configs" / "codellama-7b-qlora.yaml"
LENGTHS = HERE / "results" / "train-lengths-smollm2.json"
SHAPE = dict(hidden=4096, intermediate=11008, layers=32, vocab=32016)
MARGIN_GIB = 0.15

# name -> overrides of the shipped config, plus bench-only knobs: keep (layers not
# checkpointed), compile (torch.compile each decoder layer), probe (keep values to measure),
# profile (one step's kernels, and the packing and fused = peft checks). The rows that compare
# LoRA forwards name dropout and kernel in full, so they mean what bench/NOTES.md measured
# before the shipped config changed (every row in its tables up to then ran peft's forward).
ROWS = {
    "default": {"profile": True},
    "shipped-before": {"lora_dropout": 0.05, "lora_kernel": "peft"},
    "dropout0": {"lora_dropout": 0.0, "lora_kernel": "peft"},
    "fused": {"lora_dropout": 0.05, "lora_kernel": "fused"},
    "fused-dropout0": {"lora_dropout": 0.0, "lora_kernel": "fused"},
    "12288": {"batch_tokens": 12288},
    "16384": {"batch_tokens": 16384},
    "probe-8192": {"probe": [0, 4]},
    "probe-4096": {"batch_tokens": 4096, "probe": [0, 8]},
    "probe-2048": {"batch_tokens": 2048, "probe": [0, 16]},
    "compile": {"compile": True},
    "no-liger": {"liger": "false"},
}
BENCH_ONLY = ("profile", "probe", "compile")
DEFAULT_ROWS = "gemm-peak,seed-sft,default,shipped-before,dropout0,12288"


def versions() -> dict:
    import importlib.metadata as md

    import torch

    out = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "cuda": torch.version.cuda}
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes",
                 "liger-kernel", "datasets", "huggingface-hub"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def docs_for_bench(n: int, lengths: str | None = None, seed: int = 0):
    """``n`` (input_ids, labels) documents of random ids whose lengths and prompt lengths are
    drawn from ``lengths`` (the real dataset's), each ending in EOS (2)."""
    import torch

    rng = random.Random(seed)
    table = json.loads(Path(lengths or LENGTHS).read_text())
    gen = torch.Generator().manual_seed(seed)
    docs = []
    for length, prompt in (rng.choice(table) for _ in range(n)):
        ids = torch.randint(3, 32000, (length,), generator=gen).tolist()
        ids[-1] = 2
        docs.append((ids, [-100] * prompt + ids[prompt:]))
    return docs


def flops_per_token(docs, recompute: float) -> float:
    """Forward + input-gradient backward + the checkpointed re-forward (``recompute``: the
    share of layers re-run) per real token; attention over each document's causal context.
    LoRA's own products are ~0.3% and left out."""
    h, i, n_layers, vocab = (SHAPE[k] for k in ("hidden", "intermediate", "layers", "vocab"))
    n = [len(ids) for ids, _ in docs]
    context = sum(x * (x + 1) / 2 for x in n) / sum(n)  # keys per query, token-weighted
    linear = n_layers * (4 * h * h + 3 * h * i)
    attention = n_layers * 4 * h * context
    head = 2 * h * vocab
    return (2 * linear + head + attention) + (2 * linear + head + 2 * attention) \
        + recompute * (2 * linear + attention)


# --- child: one project row -------------------------------------------------------------------

def row_config(name: str):
    """The row's train config (the shipped one with its overrides), the overrides, and its
    bench-only knobs."""
    from csound_assistant.train.config import load_config

    if name.split("-keep")[0] not in ROWS and "-keep" not in name:
        raise SystemExit(f"unknown row {name!r}: choose seed-sft, gemm-peak, {', '.join(ROWS)} "
                         "or T-keepK")
    spec = dict(ROWS.get(name.split("-keep")[0], {}))
    if "-keep" in name:
        spec["batch_tokens"] = int(name.split("-keep")[0])
    bench_only = {k: spec.pop(k) for k in BENCH_ONLY if k in spec}
    return load_config(SHIPPED, {**spec, "progress": False}), spec, bench_only


def project_row(name: str, model_dir: Path, steps: int, warmup: int, lengths: str | None,
                keep: int, out_dir: Path) -> dict:
    import torch

    from csound_assistant.train.backend import choose_backend, load_model
    from csound_assistant.train.batching import BatchPlan, collate_packed, trained_tokens
    from csound_assistant.train.encode import Encoded
    from csound_assistant.train.fused_lora import apply_lora_kernel

    cfg, spec, bench_only = row_config(name)
    backend = choose_backend(cfg)
    model = load_model(model_dir, cfg, backend)
    lora_kernel = apply_lora_kernel(model, cfg.lora_kernel, backend)  # as train/recipe.py does
    layers = model.get_base_model().model.layers
    for layer in layers[len(layers) - keep:] if keep else []:
        layer.gradient_checkpointing = False
    if bench_only.get("compile"):
        for layer in layers:
            layer.compile(dynamic=True)
    docs = docs_for_bench(max(2000, steps * cfg.batch_tokens // 400), lengths)
    examples = [Encoded(ids, labels, "chat") for ids, labels in docs]
    plan = BatchPlan(examples, True, cfg.batch_tokens, cfg.max_batch_rows, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                            fused=True)
    extra = {"skip_logits": True} if backend.liger else {}
    result = {"config": {**spec, **bench_only, "keep_layers": keep,
                         "batch_tokens": cfg.batch_tokens, "lora_dropout": cfg.lora_dropout,
                         "lora_kernel": lora_kernel, "liger": backend.liger},
              "backend": backend.describe()}

    def step(s: int) -> int:
        micro = plan.step(s, cfg.grad_accum)
        total = sum(trained_tokens(b) for b in micro)
        for batch in micro:
            inputs = {k: v.cuda(non_blocking=True) if hasattr(v, "cuda") else v
                      for k, v in collate_packed(batch).items()}
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if backend.liger:
                    loss = model(**inputs, num_items_in_batch=total, **extra).loss
                else:
                    from csound_assistant.train.recipe import _trained_positions_loss
                    loss = _trained_positions_loss(model, inputs, total)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        return sum(len(e) for b in micro for e in b)

    model.train()
    losses = []
    if "probe" in bench_only:  # peak memory against un-checkpointed layers, 2 steps each
        peaks = {}
        for k in bench_only["probe"]:
            for i, layer in enumerate(layers):
                layer.gradient_checkpointing = i < len(layers) - k
            torch.cuda.reset_peak_memory_stats()
            for s in range(2):
                step(s)
            peaks[k] = torch.cuda.max_memory_allocated() / 2**30
        return {**result, "probe_peaks_gib": peaks}

    tokens, peaks = 0, []
    for s in range(steps):
        if s == warmup:
            torch.cuda.synchronize()
            t0, tokens = time.perf_counter(), 0
        tokens += step(s)
        peaks.append(round(torch.cuda.max_memory_allocated() / 2**30, 3))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    result.update(tokens_s=tokens / seconds, seconds=seconds, timed_steps=steps - warmup,
                  peak_gib=torch.cuda.max_memory_allocated() / 2**30, peak_after_step=peaks,
                  losses=[x.item() for x in losses], flops_per_token=flops_per_token(
                      docs, (len(layers) - keep) / len(layers)))
    checks = result.setdefault("checks", {})
    if lora_kernel == "fused":
        checks["fused_vs_peft_lora"] = fused_check(model, examples[:6], extra)
    if bench_only.get("profile"):
        checks["packed_vs_unpacked"] = packing_check(model, examples[:6], extra)
        result["profile"] = profile_step(lambda: step(steps), out_dir / f"profile-{name}.txt")
    return result


def packing_check(model, examples, extra) -> dict:
    """The packed-varlen loss of 6 documents against the same documents one at a time and as a
    padded batch: equal (to bf16 noise) only if no document attends to another."""
    import torch

    from csound_assistant.train.batching import collate_grouped, collate_packed, trained_tokens

    n = trained_tokens(examples)

    def loss(batch):
        batch = {k: v.cuda() if hasattr(v, "cuda") else v for k, v in batch.items()}
        return model(**batch, num_items_in_batch=n, **extra).loss.item()

    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        packed = loss(collate_packed(examples))
        one_by_one = sum(loss(collate_grouped([e], 0)) for e in examples)
        padded = loss(collate_grouped(examples, 0))
    model.train()
    return {"packed_varlen": packed, "one_by_one": one_by_one, "padded_batch": padded,
            "rel_diff": abs(packed - one_by_one) / abs(one_by_one)}


def fused_check(model, examples, extra) -> dict:
    """The loss of a packed batch with the fused LoRA forward and with peft's own."""
    import torch

    from csound_assistant.train.batching import collate_packed, trained_tokens
    from csound_assistant.train.fused_lora import fuse_lora, unfuse_lora

    batch = {k: v.cuda() if hasattr(v, "cuda") else v
             for k, v in collate_packed(examples).items()}
    losses = []
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for fused in (True, False):
            (fuse_lora if fused else unfuse_lora)(model)
            losses.append(model(**batch, num_items_in_batch=trained_tokens(examples),
                                **extra).loss.item())
    fuse_lora(model)
    model.train()
    return {"fused": losses[0], "peft": losses[1],
            "rel_diff": abs(losses[0] - losses[1]) / abs(losses[1])}


# first match wins: flash-attention's kernel names carry cutlass types, so attention goes first
KERNEL_KINDS = [("attention", ("flash", "fmha", "attn")),
                ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "cublas", "splitk")),
                ("nf4 dequant", ("dequant",)), ("dropout", ("dropout",)),
                ("liger / triton", ("triton", "liger", "_rms_norm", "_swiglu", "_rope",
                                    "cross_entropy", "element_mul")),
                ("torch elementwise", ("elementwise", "reduce", "copy", "cat", "fill")),
                ("other", ("",))]


def profile_step(run_step, path: Path) -> dict:
    """CUDA time of one optimizer step by kernel kind; the top kernels go to ``path``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run_step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    try:
        path.write_text(events.table(sort_by="self_device_time_total", row_limit=40))
    except (AttributeError, KeyError):
        path.write_text(events.table(sort_by="self_cuda_time_total", row_limit=40))
    kinds: dict[str, float] = {}
    for e in events:
        us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        key = e.key.lower()
        kind = next(k for k, words in KERNEL_KINDS if any(w in key for w in words))
        kinds[kind] = kinds.get(kind, 0.0) + us / 1e3
    return {"ms_by_kind": {k: round(v, 1) for k, v in kinds.items()}}


def gemm_peak() -> dict:
    """Median bf16 TFLOP/s of the layers' products at 8,192 tokens (CUDA events)."""
    import torch

    rates = {}
    for n, k in ((11008, 4096), (4096, 4096), (4096, 11008)):
        a = torch.randn(8192, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        times = []
        for i in range(60):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            if i >= 10:
                times.append(start.elapsed_time(end) / 1e3)
        times.sort()
        rates[f"8192x{k}x{n}"] = 2 * 8192 * k * n / times[len(times) // 2] / 1e12
    return {"tflops": rates, "tflops_mean": sum(rates.values()) / len(rates)}


# --- parent: every row in its own process, one table --------------------------------------

def run_child(name: str, args, out_dir: Path, keep: int = 0) -> dict:
    path = out_dir / f"row-{name}.json"
    path.unlink(missing_ok=True)
    if name == "seed-sft":
        cmd = [sys.executable, str(HERE / "seed_sft.py"), str(args.model_dir), "--out", str(path),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
        cmd += ["--lengths", args.lengths] if args.lengths else []
    else:
        cmd = [sys.executable, __file__, "--row", name, "--keep", str(keep), "--out-dir",
               str(out_dir), "--model-dir", str(args.model_dir), "--steps", str(args.steps),
               "--warmup", str(args.warmup)] + (["--lengths", args.lengths] if args.lengths else [])
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=args.row_timeout, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        log = f"{exc.stdout or ''}{exc.stderr or ''}\ntimed out after {args.row_timeout} s"
    (out_dir / f"row-{name}.log").write_text(log if isinstance(log, str) else log.decode())
    wall = round(time.perf_counter() - started, 1)
    if not path.is_file():
        tail = "\n".join(str(log).strip().splitlines()[-6:])
        print(f"{name}: failed after {wall} s\n{tail}", flush=True)
        return {"failed": tail, "wall_s": wall}
    result = {**json.loads(path.read_text()), "wall_s": wall}
    brief = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()
             if k in ("tokens_s", "peak_gib", "probe_peaks_gib", "tflops_mean", "wall_s")}
    print(f"{name}: {brief}", flush=True)
    return result


def keep_under(probe: dict, bar_gib: float, n_layers: int) -> int:
    """The most un-checkpointed layers whose peak, linear between the probed points, stays
    ``MARGIN_GIB`` under ``bar_gib``."""
    (k0, p0), (k1, p1) = sorted((int(k), v) for k, v in probe.items())[:2]
    slope = (p1 - p0) / (k1 - k0)
    return max(0, min(n_layers, math.floor((bar_gib - MARGIN_GIB - p0) / slope)))


def table(results: dict, docs) -> str:
    seed = results.get("seed-sft", {})
    gemm = results.get("gemm-peak", {}).get("tflops_mean")
    lines = ["| row | LoRA dropout, forward | real tokens/s | vs seed | peak GiB "
             "| <= seed's peak | useful TFLOP/s | of measured GEMM rate |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "tokens_s" not in r:
            continue
        flops = r.get("flops_per_token") or flops_per_token(docs, 1.0)
        tflops = r["tokens_s"] * flops / 1e12
        ratio = f"{r['tokens_s'] / seed['tokens_s']:.2f}x" if "tokens_s" in seed else "-"
        fits = ("yes" if r["peak_gib"] <= seed["peak_gib"] else "no") if "peak_gib" in seed else "-"
        util = f"{tflops / gemm:.0%}" if gemm else "-"
        c = r.get("config", {})
        if name == "seed-sft":
            from seed_sft import SEED

            c = {"lora_dropout": SEED["lora_dropout"], "lora_kernel": "peft"}
        lora = f"{c['lora_dropout']:g}, {c['lora_kernel']}" if "lora_kernel" in c else "-"
        lines.append(f"| {name} | {lora} | {r['tokens_s']:,.0f} | {ratio} | {r['peak_gib']:.2f} "
                     f"| {fits} | {tflops:.0f} | {util} |")
    if gemm:
        floor = gemm * 1e12 / flops_per_token(docs, 1.0)
        lines.append(f"\nmeasured bf16 GEMM rate {gemm:.0f} TFLOP/s; "
                     f"{flops_per_token(docs, 1.0) / 1e9:.1f} GFLOP per real token with full "
                     f"checkpointing: floor {floor:,.0f} tokens/s (no dequantisation, no overhead)")
    return "\n".join(lines)


def dry_run(rows: list[str]) -> None:
    from csound_assistant.train.config import load_config

    shipped = load_config(SHIPPED, {"progress": False}).to_dict()
    print(f"shipped: {SHIPPED.relative_to(HERE.parent)}: lora_dropout "
          f"{shipped['lora_dropout']}, lora_kernel {shipped['lora_kernel']} (auto: fused on "
          "CUDA, train/fused_lora.py)")
    for name in rows:
        if name in ("seed-sft", "gemm-peak"):
            print(f"{name}: {'bench/seed_sft.py' if name == 'seed-sft' else 'bf16 GEMMs'}")
            continue
        cfg, _, bench_only = row_config(name)
        changed = {k: v for k, v in cfg.to_dict().items() if v != shipped[k]}
        kernel = "fused" if cfg.lora_kernel == "auto" else cfg.lora_kernel
        print(f"{name}: {changed or 'the shipped config exactly'}; LoRA forward on CUDA "
              f"{kernel}" + (f"; bench-only {bench_only}" if bench_only else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("bench-out"))
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/codellama-7b-random"))
    ap.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated: seed-sft, gemm-peak, "
                    f"{', '.join(ROWS)}, or T-keepK")
    ap.add_argument("--lengths", default=None, help=f"default: {LENGTHS.relative_to(HERE.parent)}")
    ap.add_argument("--steps", type=int, default=14, help="optimizer steps per row")
    ap.add_argument("--warmup", type=int, default=2, help="of which untimed")
    ap.add_argument("--row-timeout", type=int, default=240, help="seconds per child")
    ap.add_argument("--budget", type=int, default=0, help="seconds: start no row after this")
    ap.add_argument("--dry-run", action="store_true", help="print each row's train config "
                    "against the shipped one and the LoRA forward it gets on CUDA; run nothing")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--keep", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dry_run:
        dry_run([r.strip() for r in args.rows.split(",") if r.strip()])
        return
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.row:
        result = (gemm_peak() if args.row == "gemm-peak" else
                  project_row(args.row, args.model_dir, args.steps, args.warmup, args.lengths,
                              args.keep, args.out_dir))
        result["versions"] = versions()
        (args.out_dir / f"row-{args.row}.json").write_text(json.dumps(result, indent=1))
        return

    queue = [r.strip() for r in args.rows.split(",") if r.strip()]
    for name in queue:  # an unknown row fails now, not after the base is built
        if name not in ("seed-sft", "gemm-peak"):
            row_config(name)
    started = time.perf_counter()
    subprocess.run([sys.executable, str(HERE / "random_base.py"), str(args.model_dir)], check=True)
    docs = docs_for_bench(2000, args.lengths)
    results: dict = {}
    summary = args.out_dir / "train_throughput.json"
    while queue:
        name = queue.pop(0)
        if args.budget and time.perf_counter() - started > args.budget:
            print(f"{name}: skipped, past the --budget of {args.budget} s", flush=True)
            continue
        try:
            results[name] = run_child(name, args, args.out_dir,
                                      keep=int(name.split("-keep")[1]) if "-keep" in name else 0)
        except Exception:  # one row's failure must not lose the others
            results[name] = {"failed": traceback.format_exc()}
        probe = results[name].get("probe_peaks_gib")
        bar = results.get("seed-sft", {}).get("peak_gib")
        if probe and bar:
            k = keep_under(probe, bar, SHAPE["layers"])
            queue.insert(0, f"{name.split('-')[1]}-keep{k}")
        summary.write_text(json.dumps({"results": results, "command": sys.argv,
                                       "lengths": args.lengths or str(LENGTHS)}, indent=1))
    print("\n" + table(results, docs))
    (args.out_dir / "table.md").write_text(table(results, docs) + "\n")


if __name__ == "__main__":
    main()
