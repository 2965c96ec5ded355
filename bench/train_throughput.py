"""QLoRA training throughput at CodeLlama-7B shape: the seed's settings vs the project's.

Run on an NVIDIA GPU (H100 in bench/NOTES.md):

    python bench/train_throughput.py --out results.json [--lengths lengths.json]

It builds a random-init CodeLlama-7B-shaped Llama (vocab 32016, hidden 4096, 32 layers;
throughput does not depend on the weights' values), saves it to local disk, and for each
configuration loads it in 4-bit NF4 with double quantization and bf16 compute, adds LoRA,
turns on gradient checkpointing and times optimizer steps on documents whose lengths follow
the real dataset (``--lengths``: a JSON list of token counts and answer fractions from
``data stats``; default: a log-normal with the measured mean of 446 tokens). Reported:
tokens/s of real (non-pad) tokens, and peak GPU memory.

  (a) seed: r=16 on q/k/v/o, micro-batch 4 x accumulation 4, padded to the longest row,
      peft's prepare_model_for_kbit_training (fp32 norms and head), SDPA attention.
  (b) project: the same adapter, padding-free packing (one row of documents per micro-batch,
      varlen flash attention, per-document positions), Liger fused kernels, fused AdamW.

Also checks that packing keeps documents apart: the packed-varlen loss of a batch equals the
padded loss of the same documents; and that (a) and (b) give the same loss per step when fed
the same documents (same function, different speed).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # random_base

SEED_RUN = {"baseline_tokens_s": 1839, "baseline_peak_gib": 9.25}


def sample_docs(n: int, lengths_file: str | None, seed: int = 0):
    """(length, prompt_length) pairs like the dataset's."""
    rng = random.Random(seed)
    if lengths_file:
        table = json.loads(Path(lengths_file).read_text())
        return [tuple(rng.choice(table)) for _ in range(n)]
    docs = []
    sigma = 0.6
    mu = math.log(446) - sigma ** 2 / 2
    for _ in range(n):
        length = int(min(2048, max(48, rng.lognormvariate(mu, sigma))))
        docs.append((length, int(length * rng.uniform(0.15, 0.5))))
    return docs


def make_doc(length: int, prompt: int, gen: torch.Generator):
    ids = torch.randint(3, 32000, (length,), generator=gen).tolist()
    ids[-1] = 2  # EOS ends the answer
    labels = [-100] * prompt + ids[prompt:]
    return ids, labels


def load(path: Path, seed_style: bool, liger: bool, targets: list[str], r: int):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from csound_assistant.train import attention

    if liger:
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True,
                                    fused_linear_cross_entropy=True, cross_entropy=False)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16,
                               bnb_4bit_quant_storage=torch.bfloat16)
    attn = "sdpa" if seed_style else attention.register()
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant,
                                                 dtype=torch.bfloat16, device_map={"": 0},
                                                 attn_implementation=attn)
    model.config.use_cache = False
    if seed_style:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                             target_modules=targets, task_type="CAUSAL_LM"))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def padded(batch):
    width = max(len(i) for i, _ in batch)
    ids = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for r, (i, l) in enumerate(batch):
        ids[r, :len(i)], labels[r, :len(l)], mask[r, :len(i)] = torch.tensor(i), torch.tensor(l), 1
    return {"input_ids": ids.cuda(), "labels": labels.cuda(), "attention_mask": mask.cuda()}


def packed(batch):
    from csound_assistant.train.batching import collate_packed
    from csound_assistant.train.encode import Encoded

    out = collate_packed([Encoded(i, l, "chat") for i, l in batch])
    return {k: v.cuda() if hasattr(v, "cuda") else v for k, v in out.items()}


def n_labels(batch):
    return sum(sum(x != -100 for x in l[1:]) for _, l in batch)


def run_steps(model, steps_docs, layout, per_micro_norm: bool, liger: bool):
    """Train on ``steps_docs`` (a list of steps, each a list of micro-batches); per-step
    losses, real tokens/s after the first 2 steps, peak memory."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, fused=True)
    extra = {"skip_logits": True} if liger else {}
    losses, t0, tokens, peaks = [], None, 0, []
    torch.cuda.reset_peak_memory_stats()
    model.train()
    for s, micro in enumerate(steps_docs):
        if s == 2:
            torch.cuda.synchronize()
            t0, tokens = time.perf_counter(), 0
        total = sum(n_labels(b) for b in micro)
        step_loss = 0.0
        for batch in micro:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if per_micro_norm:  # the HF Trainer's seed behaviour: mean per micro-batch
                    out = model(**layout(batch), **extra)
                    loss = out.loss / len(micro)
                else:
                    out = model(**layout(batch), num_items_in_batch=total, **extra)
                    loss = out.loss
            loss.backward()
            step_loss += loss.item()
            tokens += sum(len(i) for i, _ in batch)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss)
        peaks.append(round(torch.cuda.max_memory_allocated() / 2**30, 2))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"tokens_s": tokens / seconds, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "losses": losses, "peak_after_step": peaks,
            "tokens_per_step": [sum(len(i) for b in m for i, _ in b) for m in steps_docs], "timed_steps": len(steps_docs) - 2, "seconds": seconds}


def pack_steps(docs, batch_tokens, steps):
    out, i = [], 0
    for _ in range(steps):
        batch, used = [], 0
        while i < len(docs) and used + len(docs[i][0]) <= batch_tokens:
            batch.append(docs[i])
            used += len(docs[i][0])
            i += 1
        out.append([batch])
    return out


def free(model):
    del model
    gc.collect()
    torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-dir", default="/tmp/codellama-7b-random")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--lengths", default=None)
    ap.add_argument("--steps", type=int, default=14, help="optimizer steps (first 2 untimed)")
    ap.add_argument("--batch-tokens", default="8192,16384", help="packed micro-batch sizes (b)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--skip-seed", action="store_true")
    ap.add_argument("--skip-same", action="store_true", help="skip (b) on (a)'s documents")
    args = ap.parse_args()
    path = Path(args.model_dir)
    from random_base import build

    build(path, args.layers)
    gen = torch.Generator().manual_seed(0)
    docs = [make_doc(n, p, gen) for n, p in sample_docs(4000, args.lengths)]
    print(f"documents: mean {sum(len(d[0]) for d in docs) / len(docs):.0f} tokens", flush=True)
    qkvo = ["q_proj", "k_proj", "v_proj", "o_proj"]
    results, checks = {}, {}

    def attempt(name, fn):
        try:
            results[name] = fn()
            print(name, {k: v for k, v in results[name].items() if k != "losses"}, flush=True)
            if args.out:  # keep what was measured even if a later configuration dies
                Path(args.out).write_text(json.dumps({"results": results}, indent=1))
        except Exception:  # one failed configuration must not lose the others' numbers
            traceback.print_exc()
            torch.cuda.empty_cache()

    # (a) the seed: 4 padded rows x 4 accumulation, per-micro-batch mean loss
    if not args.skip_seed:
        model = load(path, seed_style=True, liger=False, targets=qkvo, r=16)
        steps = [[docs[s * 16 + m * 4: s * 16 + m * 4 + 4] for m in range(4)]
                 for s in range(args.steps)]
        attempt("a seed", lambda: run_steps(model, steps, padded, True, False))
        free(model)

    # (b) packed + varlen + Liger; first the correctness checks on this model
    model = load(path, seed_style=False, liger=True, targets=qkvo, r=16)
    batch = docs[:6]
    model.eval()
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            n = n_labels(batch)
            lp = model(**packed(batch), num_items_in_batch=n, skip_logits=True).loss.item()
            lu = sum(model(**padded([d]), num_items_in_batch=n, skip_logits=True).loss.item()
                     for d in batch)
            lg = model(**padded(batch), num_items_in_batch=n, skip_logits=True).loss.item()
        checks["packed_vs_unpacked_loss"] = {"packed_varlen": lp, "one_by_one": lu,
                                             "padded_batch": lg, "rel_diff": abs(lp - lu) / abs(lu)}
    except Exception:
        traceback.print_exc()
    print("check", checks, flush=True)
    # same documents, same per-step normalisation: (b) layout must track (a)'s losses
    same = [[docs[s * 16: s * 16 + 16]] for s in range(args.steps)]
    if not args.skip_same:
        attempt("b same docs as a (16/step)", lambda: run_steps(model, same, packed, False, True))
    for bt in [int(x) for x in args.batch_tokens.split(",")]:
        attempt(f"b packed {bt} tok/micro-batch",
                lambda: run_steps(model, pack_steps(docs, bt, args.steps), packed, False, True))
    free(model)

    print("\n| config | real tokens/s | vs seed 1,839 | peak GiB |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['tokens_s']:,.0f} | {r['tokens_s'] / 1839:.1f}x | "
              f"{r['peak_gib']:.2f} |")
    if "a seed" in results and "b same docs as a (16/step)" in results:
        a, b = results["a seed"]["losses"], results["b same docs as a (16/step)"]["losses"]
        print("per-step loss a vs b (same docs):",
              " ".join(f"{x:.3f}/{y:.3f}" for x, y in zip(a, b)))
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "checks": checks,
                                              "info": info, **SEED_RUN}, indent=1))


if __name__ == "__main__":
    main()
