"""Preference training on the sandbox's verdicts (DPO with an NLL term on the kept answer).

Rejection-sampling fine-tuning (budget_sweep.py verdicts/rows) learns only from the samples that
play. The same verdicts also say which samples did not: for a train prompt with one of each,
DPO (Rafailov et al. 2023) raises the kept answer's likelihood against the failed one's,
relative to the starting adapter; the NLL term on the kept answer (RPO, Pang et al. 2024) keeps
DPO from lowering both. The pairs come from train prompts only, like the self rows.

    python bench/dpo.py --base runs/aug5/base --adapter train/starter \\
        --verdicts /tmp/rft/long.jsonl,/tmp/rft/fim.jsonl \\
        --items .gpu/sweep/prompts-long.json,.gpu/sweep/prompts-fim.json \\
        --pairs 240 --out runs/dpo/adapter

Writes OUT (the adapter folder, with the starting adapter's record files so `export` takes it)
and OUT/dpo.json (settings, pairs, loss and reward-accuracy curve).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budget_sweep import _kept, prompt_text  # noqa: E402  (as self-training samples and keeps)


def make_pairs(verdict_paths: list[str], item_paths: list[str], n: int, seed: int) -> list[dict]:
    """At most one (kept, failed) pair per prompt; a failed answer that did not compile is
    preferred (the commonest failure), then any that did not play. Long kinds come first."""
    items = {}
    for path in item_paths:
        items.update({i["id"]: i for i in json.loads(Path(path).read_text())})
    good, bad = {}, {}
    for path in verdict_paths:
        for line in Path(path).read_text().splitlines():
            v = json.loads(line)
            if not v["answer"].strip() or v["id"] not in items:
                continue
            if _kept(v):
                good.setdefault(v["id"], []).append(v["answer"])
            elif not v["sound"]:
                bad.setdefault(v["id"], []).append((not v["compiled"], v["answer"]))
    rng = random.Random(seed)
    pairs = []
    for ident in sorted(set(good) & set(bad)):
        worst = [a for broken, a in bad[ident] if broken] or [a for _, a in bad[ident]]
        pairs.append({"item": items[ident], "chosen": rng.choice(good[ident]),
                      "rejected": rng.choice(worst)})
    rng.shuffle(pairs)
    fim = [p for p in pairs if p["item"]["prefix"] is not None]
    long = [p for p in pairs if p["item"]["prefix"] is None]
    chosen = (long + fim)[:n]  # the long kinds are the weak ones (bench/NOTES.md)
    rng.shuffle(chosen)
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True)
    p.add_argument("--adapter", required=True, help="the adapter to start from (and reference)")
    p.add_argument("--verdicts", required=True, help="verdict files, comma-separated")
    p.add_argument("--items", required=True, help="the items files they answered")
    p.add_argument("--pairs", type=int, default=240)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--nll", type=float, default=1.0, help="weight of the kept answer's NLL")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--accum", type=int, default=4, help="pairs per optimizer step")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch
    import torch.nn.functional as F
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from csound_assistant.convert.merge import load_prompt_format
    from csound_assistant.opcode_reference import Lookups

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    adapter = Path(args.adapter)
    fmt = load_prompt_format(adapter)
    lookups = Lookups.load(fmt.opcode_reference, fmt.fim_reference)
    tok = AutoTokenizer.from_pretrained(args.base)

    def encode(pair):
        item = pair["item"]
        stop = fmt.eos if item["prefix"] is None else fmt.fim_end
        ids = tok(prompt_text(fmt, lookups, item), add_special_tokens=False).input_ids
        return [(ids, tok(pair[k] + stop, add_special_tokens=False).input_ids)
                for k in ("chosen", "rejected")]

    pairs = make_pairs(args.verdicts.split(","), args.items.split(","), args.pairs, args.seed)
    encoded = [(pair, encode(pair)) for pair in pairs]
    encoded = [(pair, e) for pair, e in encoded
               if max(len(a) + len(b) for a, b in e) <= args.max_length]
    print(f"dpo: {len(encoded)} pairs ({len(pairs) - len(encoded)} longer than "
          f"{args.max_length} tokens left out)", flush=True)

    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter, is_trainable=True)

    def logps(seqs):
        """Summed log-probabilities of each answer given its prompt, and answer lengths."""
        width = max(len(a) + len(b) for a, b in seqs)
        ids = torch.full((len(seqs), width), tok.pad_token_id or 0)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, (a, b) in enumerate(seqs):
            ids[r, :len(a) + len(b)] = torch.tensor(a + b)
            mask[r, :len(a) + len(b)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        out = []
        for r, (a, b) in enumerate(seqs):
            lp = F.log_softmax(logits[r, len(a) - 1:len(a) + len(b) - 1], dim=-1)
            out.append(lp.gather(1, torch.tensor(b)[:, None]).sum())
        return torch.stack(out), torch.tensor([len(b) for _, b in seqs])

    start = time.time()
    model.eval()
    with torch.no_grad():
        reference = [logps(e)[0] for _, e in encoded]
    print(f"dpo: reference log-probs in {time.time() - start:.0f} s", flush=True)

    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps = -(-len(encoded) // args.accum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    curve, window = [], []
    for k, ((pair, seqs), ref) in enumerate(zip(encoded, reference)):
        lp, lengths = logps(seqs)
        margin = args.beta * ((lp[0] - ref[0]) - (lp[1] - ref[1]))
        loss = -F.logsigmoid(margin) + args.nll * (-lp[0] / lengths[0])
        (loss / args.accum).backward()
        window.append((loss.item(), float(margin > 0), margin.item()))
        if (k + 1) % args.accum == 0 or k + 1 == len(encoded):
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        if (k + 1) % 20 == 0 or k + 1 == len(encoded):
            n = len(window)
            point = {"pairs": k + 1, "loss": sum(w[0] for w in window) / n,
                     "reward_accuracy": sum(w[1] for w in window) / n,
                     "margin": sum(w[2] for w in window) / n,
                     "seconds": round(time.time() - start)}
            curve.append(point)
            window = []
            print(f"dpo: {point}", flush=True)

    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(adapter, tmp)  # record, prompt format, tokenizer files: what export reads
    model.save_pretrained(tmp)
    kinds = Counter(pair["item"]["kind"] for pair, _ in encoded)
    (tmp / "dpo.json").write_text(json.dumps(
        {"settings": vars(args), "pairs": len(encoded), "kinds": kinds, "curve": curve,
         "seconds": round(time.time() - start)}, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(f"dpo: wrote {out}")


if __name__ == "__main__":
    main()
