"""LoRA training speed of the embedded SmolLM2-135M on this CPU, per configuration.

    python bench/cpu_train_speed.py runs/<run> [--steps 3] [--threads 2]

Times forward+backward+AdamW on length-grouped batches of the run's train split (the same
batches for every configuration) and reports tokens/s of wall time and of process CPU time
(the second is what 2 uncontended cores would give, times 2, on a shared machine), and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from csound_assistant.prompt_format import get_format
from csound_assistant.artifacts import read_record
from csound_assistant.train.backend import choose_backend, load_model
from csound_assistant.train.batching import BatchPlan, collate_grouped, real_tokens, trained_tokens
from csound_assistant.train.config import load_config
from csound_assistant.train.encode import encode_split, read_split, select_tasks, special_ids
from csound_assistant.train.recipe import _trained_positions_loss

VARIANTS = {  # "full logits": the vocabulary projection at every position (transformers' loss)
    "all-linear r16, all 30 layers, full logits": ["lora_layers=0"],
    "all-linear r16, all 30 layers": ["lora_layers=0"],
    "all-linear r16, last 15 layers": ["lora_layers=15"],
    "all-linear r16, last 8 layers": ["lora_layers=8"],
    "q/k/v/o r16, all layers": ["target_modules=q_proj,k_proj,v_proj,o_proj"],
    "all-linear r16, gradient checkpointing": ["gradient_checkpointing=true"],
}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", nargs="*", default=["max_length=512", "batch_tokens=2048"])
    ap.add_argument("--only", default=None, help="comma-separated variant numbers (1-based)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = args.run / "base"
    fmt = get_format(read_record(base)["prompt_format"])
    tok = AutoTokenizer.from_pretrained(base)
    ids = special_ids(tok, fmt)
    results = []
    print("| variant | tokens/s (wall) | tokens/s (CPU time / threads) | max RSS GiB |")
    print("|---|---|---|---|")
    names = list(VARIANTS)
    if args.only:
        names = [names[int(i) - 1] for i in args.only.split(",")]
    for name in names:
        cfg = load_config("cpu-smollm2", [*args.set, *VARIANTS[name]])
        rows = select_tasks(read_split(args.run / "splits" / "train.jsonl"), cfg.tasks, "train")
        split = encode_split(tok, fmt, rows, cfg.max_length, ids, "train")
        plan = BatchPlan(split.examples, False, cfg.batch_tokens, cfg.max_batch_rows, 0)
        model = load_model(base, cfg, choose_backend(cfg))
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()
        wall = cpu = 0.0
        tokens = 0
        for step in range(args.steps + 1):
            batch = plan.micro_batch(step)
            w, c = time.perf_counter(), time.process_time()
            inputs = collate_grouped(batch, ids["pad"])
            if "full logits" in name:
                loss = model(**inputs).loss
            else:  # what train/recipe.py does
                loss = _trained_positions_loss(model, inputs, trained_tokens(batch))
            loss.backward()
            opt.step()
            opt.zero_grad()
            if step:  # the first step warms up
                wall += time.perf_counter() - w
                cpu += time.process_time() - c
                tokens += real_tokens(batch)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        results.append((name, tokens / wall, tokens / cpu * args.threads, rss))
        print(f"| {name} | {tokens / wall:,.0f} | {tokens / cpu * args.threads:,.0f} | "
              f"{rss:.1f} |", flush=True)
        del model, opt


if __name__ == "__main__":
    main()
