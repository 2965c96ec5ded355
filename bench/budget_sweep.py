"""Which training recipe teaches the embedded model the most Csound for the main job's budget?

The main job trains for about five minutes on 2 CPU cores, and one try there costs ten minutes
with its eval. A GPU runs the same recipe (LoRA, same batches, same number of optimizer steps)
in seconds, so this sweeps recipes there and scores every answer here, with the real sandbox:

    python bench/budget_sweep.py items --run runs/demo --limit 40 --out .gpu/sweep/items.json
    # on the GPU (base imported to $W/base, splits in $W/splits, wheels installed):
    python bench/budget_sweep.py train --work $W --items .gpu/sweep/items.json --out $OUT \\
        --variant now:max_steps=57 --variant lr3e-3:max_steps=57,learning_rate=3e-3
    python bench/budget_sweep.py score FILES_AT --out bench/results/budget-sweep

A variant's ``splits=DIR`` (not a config key) trains it on DIR's train/validation files instead
of ``$W/splits`` (say, a build with ``--fim-cuts 3``); ``--jobs N`` trains and answers N variants
at once, each in its own process (a 135M model keeps an H200 ~15% busy, so two or three share
one GPU well; each writes NAME.log in the out folder).

``train --adapter ref=DIR`` answers with an adapter trained earlier (a baseline, scored by the
same greedy transformers path as the variants); ``--keep-adapters`` sends each variant's adapter
back in parts that fit the device's return limits.

Self-training (sampling train prompts, judging the answers, keeping what plays as rows) was
done here by hand for the shipped starter; it is now a product command, ``csound-assistant
improve self-train`` (improve/). This script only measures recipes.

``items`` and ``score`` need Csound (this machine); ``train`` needs a CUDA GPU and the training
stack. Answers are greedy, from the merged bf16 model with transformers, with the eval's token
budget per item: close to, not the same as, the llama.cpp Q4_K_M answers of `eval run`, so the
sweep ranks recipes and `pipeline` gives the numbers.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "train" / "configs" / "cpu-smollm2.yaml"
# What makes a GPU step do a CPU step's work: plain LoRA, no time budget, no checkpoints.
ON_GPU = {"method": "lora", "device": "auto", "time_budget_minutes": 0, "save_every": 0}


def items_command(args) -> None:
    from csound_assistant.artifacts import write_json
    from csound_assistant.eval.runner import collect_items, token_budget

    items = collect_items(test_path=Path(args.run) / "splits" / "test.jsonl", limit=args.limit)
    write_json(args.out, [{"id": i.id, "kind": i.kind, "source": i.source, "messages": i.messages,
                           "prefix": i.prefix, "suffix": i.suffix, "reference": i.reference,
                           "required_opcodes": i.required_opcodes, "seconds": i.seconds,
                           "budget": token_budget(i, args.max_new_tokens)} for i in items])
    print(f"{len(items)} items -> {args.out}")


def _parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition(":")
    return name, [s for s in re.split(r",(?![^\[]*\])", sets) if s]  # lists keep commas


def train_command(args) -> None:
    if not (args.variant or args.adapter):
        raise SystemExit("train: give at least one --variant or --adapter")
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    items = json.loads(Path(args.items).read_text())
    if args.jobs > 1 and len(args.variant) + len(args.adapter) > 1:
        return _train_in_parallel(args)
    for text in args.adapter:  # answered first: a baseline's answers survive a call cut short
        name, _, folder = text.partition("=")
        start = time.time()
        answers = generate(work / "base", Path(folder), items, batch=args.batch)
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
        result = {"variant": name, "overrides": [f"adapter={folder}"], "train_seconds": None,
                  "metrics": metrics, "answers": answers}
        (out / f"{name}.json").write_text(json.dumps(result))
        print(f"== {name}: {len(answers)} answers from {folder} in {time.time() - start:.0f} s",
              flush=True)
    for text in args.variant:
        name, sets = _parse_variant(text)
        splits = next((s.partition("=")[2] for s in sets if s.startswith("splits=")), None)
        sets = [s for s in sets if not s.startswith("splits=")]
        run = work / name
        run.mkdir(parents=True, exist_ok=True)
        for part, target in (("base", work / "base"), ("splits", Path(splits or work / "splits"))):
            if not (run / part).exists():
                (run / part).symlink_to(target.resolve())
        overrides = [*(f"{k}={v}" for k, v in ON_GPU.items()), *sets]
        command = [sys.executable, "-m", "csound_assistant.cli", "train", "run", "-c",
                   args.config, "--work-dir", str(work), "--run", name, "--force"]
        for item in overrides:
            command += ["--set", item]
        print(f"== {name}: {' '.join(overrides)}", flush=True)
        start = time.time()
        subprocess.run(command, check=True, cwd=work)  # not the source tree: the installed package
        trained = time.time() - start
        print(f"== {name}: trained in {trained:.0f} s", flush=True)
        if args.keep_adapters:  # before answering: a call cut during generation still has it
            keep_adapter(run / "adapter", out, name)
        if args.no_answers:
            continue
        start = time.time()
        answers = generate(run / "base", run / "adapter", items, batch=args.batch)
        metrics = json.loads((run / "adapter" / "metrics.json").read_text())
        result = {"variant": name, "overrides": overrides, "train_seconds": trained,
                  "metrics": metrics, "answers": answers}
        (out / f"{name}.json").write_text(json.dumps(result))
        print(f"== {name}: {len(answers)} answers in {time.time() - start:.0f} s", flush=True)


def _train_in_parallel(args) -> None:
    """Each variant and each adapter to answer in a child process of this script,
    ``args.jobs`` at a time."""
    out = Path(args.out)
    common = [sys.executable, __file__, "train", "--work", args.work, "--items", args.items,
              "--out", args.out, "--config", args.config, "--batch", str(args.batch)]
    common += ["--keep-adapters"] * args.keep_adapters + ["--no-answers"] * args.no_answers
    waiting = [("--adapter", a) for a in args.adapter] + [("--variant", v) for v in args.variant]
    running, failed = [], []
    while waiting or running:
        while waiting and len(running) < args.jobs:
            flag, text = waiting.pop(0)
            name = text.partition("=")[0] if flag == "--adapter" else _parse_variant(text)[0]
            log = open(out / f"{name}.log", "w")
            running.append((name, subprocess.Popen([*common, flag, text], stdout=log,
                                                   stderr=subprocess.STDOUT), log))
            print(f"== {name}: started (log {out / name}.log)", flush=True)
        time.sleep(5)
        for job in [j for j in running if j[1].poll() is not None]:
            running.remove(job)
            job[2].close()
            print(f"== {job[0]}: exit {job[1].returncode}", flush=True)
            if job[1].returncode:
                failed.append(job[0])
    if failed:
        raise SystemExit(f"variants failed: {', '.join(failed)} (see their logs)")


# The device sends back at most 8 files of 16 MiB (64 MiB in all): an r64 adapter is ~78 MB in
# fp32, ~39 MB in bf16, so the weights travel as bf16 in 15 MB parts.
PART_BYTES = 15 * 2**20


def keep_adapter(adapter: Path, out: Path, name: str) -> None:
    """``adapter`` as ``out/<name>-adapter.tar.gz.NN`` (folder ``adapter/``, LoRA weights in
    bfloat16) plus ``<name>-adapter.sha256``; at home ``cat NAME-adapter.tar.gz.?? >
    NAME-adapter.tar.gz && sha256sum -c NAME-adapter.sha256`` (or gpu_smollm2.sh unpack)."""
    import hashlib
    import shutil
    import tarfile
    import tempfile

    import torch
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapter"
        shutil.copytree(adapter, folder, ignore=shutil.ignore_patterns("checkpoint-*"))
        weights = folder / "adapter_model.safetensors"
        tensors = load_file(weights)
        save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v
                   for k, v in tensors.items()}, weights, metadata={"format": "pt"})
        packed = Path(tmp) / f"{name}-adapter.tar.gz"
        with tarfile.open(packed, "w:gz") as tar:
            tar.add(folder, arcname="adapter")
        data = packed.read_bytes()
    for k in range(0, len(data), PART_BYTES):
        (out / f"{packed.name}.{k // PART_BYTES:02d}").write_bytes(data[k:k + PART_BYTES])
    (out / f"{name}-adapter.sha256").write_text(
        f"{hashlib.sha256(data).hexdigest()}  {packed.name}\n")
    print(f"== {name}: adapter kept, {len(data) / 2**20:.1f} MiB in "
          f"{-(-len(data) // PART_BYTES)} parts", flush=True)


def prompt_text(fmt, lookups, item: dict) -> str:
    """The text training rendered before an item's answer (PromptFormat.segments, with the
    adapter's manual lookups): a chat prompt, or BOS and a FIM prompt."""
    prefix, suffix = item["prefix"], item["suffix"]
    if prefix is None:
        return fmt.chat_prompt(lookups.messages(item["messages"]))
    return fmt.bos + fmt.fim_prompt(lookups.fim_prefix(prefix, suffix), suffix)


def generate(base: Path, adapter: Path, items: list[dict], *, batch: int) -> dict[str, str]:
    """Greedy answers, batched with left padding; each item stops at a stop token or its own
    token budget."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from csound_assistant.convert.merge import load_prompt_format
    from csound_assistant.opcode_reference import Lookups

    fmt = load_prompt_format(adapter)
    lookups = Lookups.load(fmt.opcode_reference, fmt.fim_reference)
    tok = AutoTokenizer.from_pretrained(base)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: only to try the script
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).to(device)
    model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    special = tok.convert_tokens_to_ids
    stops = [special(fmt.eos), special(fmt.fim_end)]
    pad = special(fmt.pad)

    def prompt(item):
        return tok(prompt_text(fmt, lookups, item), add_special_tokens=False).input_ids

    answers, order = {}, sorted(items, key=lambda i: i["budget"])
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        prompts = [prompt(i) for i in chunk]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts]).to(device)
        mask = (torch.arange(width)[None, :] >= torch.tensor(
            [width - len(p) for p in prompts])[:, None]).long().to(device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max(i["budget"] for i in chunk),
                                 eos_token_id=stops, pad_token_id=pad)
        for item, row in zip(chunk, out[:, width:].tolist()):
            row = row[:item["budget"]]
            cut = min((row.index(s) for s in stops if s in row), default=len(row))
            answers[item["id"]] = tok.decode(row[:cut], skip_special_tokens=False)
    return answers


def _item(i: dict):
    """An items-file entry (``items``) as the eval's Item."""
    from csound_assistant.eval.tasks import Item

    return Item(i["id"], i["kind"], i["source"], messages=i["messages"], prefix=i["prefix"],
                suffix=i["suffix"], required_opcodes=i["required_opcodes"],
                reference=i["reference"], seconds=i["seconds"])


def score_command(args) -> None:
    from csound_assistant.eval.runner import score_answer

    items = {i["id"]: i for i in json.loads(Path(args.items).read_text())}
    on_gpu = {f"{k}={v}" for k, v in ON_GPU.items()}
    table = []
    for path in sorted(Path(args.answers).glob("*.json")):
        result = json.loads(path.read_text())
        rows = []
        for ident, answer in result["answers"].items():
            i = items[ident]
            rows.append({"source": i["source"], "kind": i["kind"],
                         **score_answer(_item(i), answer)})
        mean = lambda rs, key: sum(r[key] for r in rs) / max(1, len(rs))  # noqa: E731
        test = [r for r in rows if r["source"] == "test"]
        m = result["metrics"]
        table.append({
            "variant": result["variant"], "steps": m.get("steps"),
            "tokens": m.get("tokens_seen"), "val_loss": m.get("val_loss_end"),
            "compile": mean(rows, "compiled"), "sound": mean(rows, "sound"),
            "compile_tasks": mean([r for r in rows if r["source"] == "tasks"], "compiled"),
            "compile_test": mean(test, "compiled"), "sound_test": mean(test, "sound"),
            "sound_test_by_kind": {k: mean([r for r in test if r["kind"] == k], "sound")
                                   for k in sorted({r["kind"] for r in test})},
            "items": len(rows),
            "overrides": " ".join(o for o in result["overrides"] if o not in on_gpu),
        })
    lines = ["| variant | steps | tokens | val loss | compile@1 | sound@1 | compile tasks "
             "| compile test | sound test | overrides |", "|---" * 10 + "|"]
    for t in table:
        val = f"{t['val_loss']:.3f}" if isinstance(t["val_loss"], float) else "-"
        lines.append(f"| {t['variant']} | {t['steps']} | {t['tokens']} | {val} | "
                     f"{t['compile']:.2f} | {t['sound']:.2f} | {t['compile_tasks']:.2f} | "
                     f"{t['compile_test']:.2f} | "
                     f"{t['sound_test']:.2f} | {t['overrides']} |")
    # where a recipe gains or loses: sound@1 on the test split per task kind (n = items)
    kinds = sorted({k for t in table for k in t["sound_test_by_kind"]})
    counts = {k: sum(1 for i in items.values() if i["source"] == "test" and i["kind"] == k)
              for k in kinds}
    lines += ["", "sound@1 on the test split by kind:", "",
              "| variant | " + " | ".join(f"{k} ({counts[k]})" for k in kinds) + " |",
              "|---" * (len(kinds) + 1) + "|"]
    for t in table:
        by_kind = t["sound_test_by_kind"]
        lines.append(f"| {t['variant']} | " + " | ".join(
            f"{by_kind[k]:.2f}" if k in by_kind else "-" for k in kinds) + " |")
    print("\n".join(lines))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.json").write_text(json.dumps(table, indent=1))
        (out / "sweep.md").write_text("\n".join(lines) + "\n")
        plot(table, out / "sweep.png")


def plot(table: list[dict], path: Path) -> None:
    """compile@1 and sound@1 per variant, over all items and on the test split alone."""
    import matplotlib

    from csound_assistant.artifacts import atomic_write

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("compile", "compile@1"), ("sound", "sound@1"), ("compile_test", "compile@1, test"),
            ("sound_test", "sound@1, test")]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(table)), 3.5))
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        ax.bar([i + k * width for i in range(len(table))], [t[key] for t in table], width,
               label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(table))],
                  [t["variant"] for t in table])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of items")
    ax.legend(fontsize=8)
    ax.set_title(f"recipe sweep, {table[0]['items']} items each" if table else "recipe sweep")
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("items", help="write the eval items (needs Csound)")
    p.add_argument("--run", required=True)
    p.add_argument("--limit", type=int, default=40)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--out", required=True)
    p = sub.add_parser("train", help="train and answer each variant, answer each --adapter "
                       "(needs a CUDA GPU)")
    p.add_argument("--work", required=True, help="holds base/ and splits/")
    p.add_argument("--items", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=str(CONFIG))
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--variant", action="append", default=[],
                   help="NAME:key=value,key=value (config overrides)")
    p.add_argument("--adapter", action="append", default=[],
                   help="NAME=DIR: answer with this trained adapter folder (no training)")
    p.add_argument("--no-answers", action="store_true",
                   help="train (and keep) only: answer the adapters in a later call")
    p.add_argument("--jobs", type=int, default=1,
                   help="variants trained and answered at once, each in its own process")
    p.add_argument("--keep-adapters", action="store_true",
                   help="send each trained variant's adapter back: $OUT/NAME-adapter.tar.gz.NN")
    p = sub.add_parser("score", help="score the answers with the sandbox (needs Csound)")
    p.add_argument("answers", help="folder of <variant>.json")
    p.add_argument("--items", required=True)
    p.add_argument("--out", default=None)
    args = parser.parse_args()
    {"items": items_command, "train": train_command,
     "score": score_command}[args.command](args)


if __name__ == "__main__":
    main()
