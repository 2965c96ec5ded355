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

``sample --adapter NAME=FILE.gguf`` answers with an exported GGUF through llama.cpp (the eval's
model, which stops a greedy loop or a closed CSD early) instead of transformers: the CPU path.
Round three's 492 greedy answers to long and fix prompts took 45 minutes on 2 cores; round two's
batched transformers answered 832 prompts, mostly one-line FIM middles, in 57.

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


def generate(base: Path, adapter: Path, items: list[dict], *, batch: int, samples: int = 1,
             temperature: float = 0.8, seed: int = 0,
             deadline: float | None = None) -> dict[str, str]:
    """Greedy answers, batched with left padding; each item stops at a stop token or its own
    token budget. With ``samples`` N > 1, N sampled answers per item (``temperature``, top-p
    0.95), keyed ``ID~k``. No batch starts after ``deadline`` (a ``time.time()``): the answers so
    far come back from a call that would otherwise be cut at its limit."""
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

    if samples > 1:
        torch.manual_seed(seed)
        items = [{**i, "id": f"{i['id']}~{k}"} for i in items for k in range(samples)]
    sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95} if samples > 1 \
        else {"do_sample": False}
    answers, order = {}, sorted(items, key=lambda i: i["budget"])
    for start in range(0, len(order), batch):
        if deadline and time.time() > deadline:
            print(f"deadline: {len(order) - start} of {len(order)} answers not started",
                  flush=True)
            break
        chunk = order[start:start + batch]
        prompts = [prompt(i) for i in chunk]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts]).to(device)
        mask = (torch.arange(width)[None, :] >= torch.tensor(
            [width - len(p) for p in prompts])[:, None]).long().to(device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, **sampling,
                                 max_new_tokens=max(i["budget"] for i in chunk),
                                 eos_token_id=stops, pad_token_id=pad)
        for item, row in zip(chunk, out[:, width:].tolist()):
            row = row[:item["budget"]]
            cut = min((row.index(s) for s in stops if s in row), default=len(row))
            answers[item["id"]] = tok.decode(row[:cut], skip_special_tokens=False)
    return answers


def generate_gguf(gguf: Path, items: list[dict], *, samples: int = 1, temperature: float = 0.8,
                  seed: int = 0, threads: int = 2, deadline: float | None = None) -> dict[str, str]:
    """The same answers as ``generate`` from an exported GGUF, through the eval's llama.cpp
    model (its prompt format and lookups come from the file's metadata): on a CPU this is the
    fast path, one sequence at a time, cut early where greedy decoding loops or a CSD closes."""
    from csound_assistant.eval.models import GGUFModel

    model = GGUFModel(gguf, n_ctx=4096, n_threads=threads)
    answers = {}
    temp = temperature if samples > 1 else 0.0
    for n, item in enumerate(items):  # in the file's order: a deadline cuts its end
        if deadline and time.time() > deadline:
            print(f"deadline: {len(items) - n} of {len(items)} items not started", flush=True)
            break
        for k in range(samples):
            key = f"{item['id']}~{k}" if samples > 1 else item["id"]
            kw = {"max_tokens": item["budget"], "temperature": temp, "seed": seed * 1000 + k}
            gen = (model.chat(item["messages"], **kw) if item["prefix"] is None
                   else model.fim(item["prefix"], item["suffix"], **kw))
            answers[key] = gen.text
        if n % 50 == 0:
            print(f"{n}/{len(items)} items, {len(answers)} answers", flush=True)
    model.close()
    return answers


def prompts_command(args) -> None:
    """Train-split rows of the given kinds as items to sample (ids ``train-LINE``); references
    are not rendered first (thousands of them): an item no sample plays simply adds nothing."""
    from csound_assistant.artifacts import write_json
    from csound_assistant.eval.runner import token_budget
    from csound_assistant.eval.tasks import load_test_split

    kinds = set(args.kinds.split(","))
    rows = Path(args.split).read_text().splitlines()
    done = {}  # prompt id -> rows earlier rounds give it
    if args.skip_kept:
        usable, _ = usable_samples(args.skip_kept, rows, args.fix_similarity)
        done = {k: len(v) for k, v in usable.items()}
    items = []
    for i in load_test_split(args.split):
        line = int(i.id.partition("-")[2])
        meta = json.loads(rows[line - 1]).get("meta") or {}
        if i.kind.removeprefix("fim:") not in kinds or (args.no_cuts and meta.get("cut")):
            continue
        if done and done.get(f"train-{line}", 0) >= (args.per_item_fim if i.prefix is not None
                                                     else args.per_item):
            continue  # an earlier round already gave this prompt all the rows `rows` takes
        budget = token_budget(i, args.max_new_tokens)
        items.append({"id": f"train-{line}", "kind": i.kind, "source": "train",
                      "messages": i.messages, "prefix": i.prefix, "suffix": i.suffix,
                      "reference": i.reference, "required_opcodes": i.required_opcodes,
                      "seconds": i.seconds,
                      "budget": min(budget, args.max_budget) if args.max_budget else budget})
    write_json(args.out, items)
    counts = {}
    for i in items:
        counts[i["kind"]] = counts.get(i["kind"], 0) + 1
    print(f"{len(items)} prompts -> {args.out}: {counts}")


def sample_command(args) -> None:
    """``--samples`` sampled answers per item from one adapter; with ``--jobs`` N, N processes
    each answer every N-th item (a 135M model leaves the GPU mostly idle)."""
    from csound_assistant.artifacts import atomic_write

    name, _, folder = args.adapter.partition("=")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.jobs > 1 and args.shard is None:
        common = [sys.executable, __file__, "sample", "--work", args.work, "--items", args.items,
                  "--out", args.out, "--adapter", args.adapter, "--batch", str(args.batch),
                  "--samples", str(args.samples), "--temperature", str(args.temperature),
                  "--seconds", str(args.seconds), "--started", str(args.started)]
        jobs = [subprocess.Popen([*common, "--shard", f"{k}/{args.jobs}"],
                                 stdout=open(out / f"{name}-{k}.log", "w"),
                                 stderr=subprocess.STDOUT) for k in range(args.jobs)]
        codes = [job.wait() for job in jobs]
        if any(codes):
            raise SystemExit(f"sampling failed: exit codes {codes} (see {out}/{name}-K.log)")
        return
    k, n = map(int, (args.shard or "0/1").split("/"))
    items = json.loads(Path(args.items).read_text())[k::n]
    start = time.time()
    deadline = args.started + args.seconds if args.seconds else None
    if folder.endswith(".gguf"):
        answers = generate_gguf(Path(folder), items, samples=args.samples, seed=k,
                                temperature=args.temperature, deadline=deadline)
        metrics = {"gguf": folder}
    else:
        answers = generate(Path(args.work) / "base", Path(folder), items, batch=args.batch,
                           samples=args.samples, temperature=args.temperature, seed=k,
                           deadline=deadline)
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
    with atomic_write(out / f"{name}-{k}.json") as fh:  # `verdicts` reads every NAME-K.json
        fh.write(json.dumps(
            {"variant": name, "overrides": [f"adapter={folder}", f"samples={args.samples}",
                                            f"temperature={args.temperature}"],
             "train_seconds": None, "metrics": metrics, "answers": answers}))
    print(f"== {name} shard {k}/{n}: {len(answers)} answers in {time.time() - start:.0f} s",
          flush=True)


def _item(i: dict):
    """An items-file entry (``items``/``prompts``) as the eval's Item."""
    from csound_assistant.eval.tasks import Item

    return Item(i["id"], i["kind"], i["source"], messages=i["messages"], prefix=i["prefix"],
                suffix=i["suffix"], required_opcodes=i["required_opcodes"],
                reference=i["reference"], seconds=i["seconds"])


def _judge(job: tuple[dict, str, str]) -> dict:
    from csound_assistant.eval.runner import score_answer

    i, key, answer = job
    verdict = score_answer(_item(i), answer)
    return {"key": key, "id": i["id"], "kind": i["kind"], "answer": answer,
            **{k: verdict[k] for k in ("category", "compiled", "sound", "coverage")}}


def verdicts_command(args) -> None:
    """Score every sampled answer in the sandbox, ``--workers`` at a time; one JSON line per
    answer, then pass rates by kind."""
    from multiprocessing import Pool

    from tqdm import tqdm

    from csound_assistant.artifacts import atomic_write

    items = {i["id"]: i for i in json.loads(Path(args.items).read_text())}
    jobs = []
    for path in sorted(Path(args.answers).glob("*.json")):
        for key, answer in json.loads(path.read_text())["answers"].items():
            jobs.append((items[key.partition("~")[0]], key, answer))
    pool = Pool(args.workers) if args.workers > 1 else None
    judged = pool.imap_unordered(_judge, jobs, chunksize=4) if pool else map(_judge, jobs)
    with atomic_write(args.out) as fh:
        for verdict in tqdm(judged, total=len(jobs), desc="sandbox", unit="answer"):
            fh.write(json.dumps(verdict) + "\n")
    if pool:
        pool.close()
    _verdict_summary(Path(args.out))


def _kept(verdict: dict) -> bool:
    """A sample worth learning from: it plays, and it uses the opcode the request named."""
    return verdict["sound"] and verdict["coverage"] in (None, 1.0)


def _verdict_summary(path: Path) -> None:
    by_kind: dict[str, dict[str, list[bool]]] = {}
    for line in path.read_text().splitlines():
        v = json.loads(line)
        by_kind.setdefault(v["kind"], {}).setdefault(v["id"], []).append(_kept(v))
    print("| kind | prompts | kept samples | prompts with one kept |\n|---|---|---|---|")
    for kind, groups in sorted(by_kind.items()):
        flat = [x for g in groups.values() for x in g]
        print(f"| {kind} | {len(groups)} | {sum(flat) / len(flat):.2f} | "
              f"{sum(any(g) for g in groups.values()) / len(groups):.2f} |")


def _split_row(rows: list[str], ident: str) -> dict:
    """The split row a sample's prompt id (``train-LINE``, from ``prompts``) names."""
    line = int(ident.partition("-")[2])
    if not 1 <= line <= len(rows):
        raise SystemExit(f"{ident}: the split has {len(rows)} rows; give the split the prompts "
                         "were made from")
    return json.loads(rows[line - 1])


def usable_samples(paths: str, rows: list[str], fix_similarity: float) -> tuple[
        dict[str, list[str]], dict[str, int]]:
    """Per prompt id, the distinct kept answers in the verdict files (comma-separated) that can
    become rows: not the row's own answer (the row teaches that already) and, for a fix row,
    close to the row's fixed code (a fix must repair the given code, not swap in another
    program). Also counts of what was set aside, by reason."""
    from difflib import SequenceMatcher

    kept: dict[str, list[str]] = {}
    for path in paths.split(","):
        for line in Path(path).read_text().splitlines():
            v = json.loads(line)
            if _kept(v) and v["answer"].strip() and v["answer"] not in kept.get(v["id"], []):
                kept.setdefault(v["id"], []).append(v["answer"])
    usable, skipped = {}, {"own answer": 0, "fix unlike the row's": 0}
    for ident, answers in kept.items():
        row = _split_row(rows, ident)
        own = _code(row, None)
        fresh = [a for a in answers if _code(row, a) != own]
        skipped["own answer"] += len(answers) - len(fresh)
        if (row.get("meta") or {}).get("task", "").startswith("fix-"):
            close = [a for a in fresh if SequenceMatcher(
                None, _code(row, a), own, autojunk=False).ratio() >= fix_similarity]
            skipped["fix unlike the row's"] += len(fresh) - len(close)
            fresh = close
        usable[ident] = fresh
    return usable, skipped


def rows_command(args) -> None:
    """Training rows from kept samples: up to ``--per-item`` usable ones per prompt (see
    usable_samples), each the prompt's own row with the sample as its answer and
    ``meta.origin: self-sample``."""
    import random

    from csound_assistant.artifacts import atomic_write
    from csound_assistant.prompt_format import row_kind

    rows = Path(args.split).read_text().splitlines()
    usable, skipped = usable_samples(args.verdicts, rows, args.fix_similarity)
    rng, out = random.Random(0), []
    for ident, answers in sorted(usable.items()):
        row = _split_row(rows, ident)
        kind = row_kind(row)
        per_item = args.per_item_fim if kind == "fim" else args.per_item
        for answer in rng.sample(answers, min(per_item, len(answers))):
            new = json.loads(json.dumps(row))
            new["meta"] = {**(row.get("meta") or {}), "origin": "self-sample"}
            if kind == "fim":
                new["middle"] = answer
            elif kind == "chat":
                new["messages"][-1]["content"] = answer
            elif kind == "instruction":
                new["output"] = answer
            else:
                raise SystemExit(f"{ident}: cannot put a sample into a {kind} row")
            out.append(new)
    with atomic_write(args.out) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in out)
    print(f"{len(out)} rows from {len(usable)} prompts with a kept sample -> {args.out} "
          f"(kept samples set aside: {skipped})")


def _code(row: dict, answer: str | None) -> str:
    """The Csound of ``answer`` (or the row's own answer) as the sandbox judged it, stripped."""
    from csound_assistant.extract import extract_code
    from csound_assistant.prompt_format import to_messages

    if "middle" in row:
        return (row["middle"] if answer is None else answer).strip()
    return (extract_code(to_messages(row)[-1]["content"] if answer is None else answer)
            or "").strip()


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
    p = sub.add_parser("prompts", help="train-split rows as items to sample")
    p.add_argument("--split", required=True)
    p.add_argument("--kinds", required=True, help="comma-separated, e.g. write,opcode,chat")
    p.add_argument("--no-cuts", action="store_true", help="skip the extra FIM cuts' rows")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-budget", type=int, default=0,
                   help="cap each prompt's token budget (longer answers are dropped in training)")
    p.add_argument("--skip-kept", default=None,
                   help="verdict files of earlier rounds: skip prompts that already have "
                        "--per-item (FIM: --per-item-fim) usable kept answers (see rows)")
    p.add_argument("--per-item", type=int, default=2)
    p.add_argument("--per-item-fim", type=int, default=1)
    p.add_argument("--fix-similarity", type=float, default=0.8)
    p.add_argument("--out", required=True)
    p = sub.add_parser("sample", help="sampled answers from one adapter (needs a CUDA GPU)")
    p.add_argument("--work", required=True, help="holds base/")
    p.add_argument("--items", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--adapter", required=True,
                   help="NAME=DIR (transformers, merged) or NAME=FILE.gguf (llama.cpp; --work "
                   "and --batch unused)")
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--shard", default=None, help="K/N: every N-th item from the K-th")
    p.add_argument("--seconds", type=float, default=0,
                   help="start no batch after this many seconds (0: no limit)")
    p.add_argument("--started", type=float, default=time.time(), help=argparse.SUPPRESS)
    p = sub.add_parser("verdicts", help="judge sampled answers in the sandbox (needs Csound)")
    p.add_argument("answers", help="folder of NAME-K.json")
    p.add_argument("--items", required=True)
    p.add_argument("--out", required=True, help="a .jsonl file")
    p.add_argument("--workers", type=int, default=2)
    p = sub.add_parser("rows", help="training rows from the kept samples")
    p.add_argument("--verdicts", required=True, help="verdict files, comma-separated")
    p.add_argument("--split", required=True, help="the split the prompts came from")
    p.add_argument("--per-item", type=int, default=2)
    p.add_argument("--per-item-fim", type=int, default=1)
    p.add_argument("--fix-similarity", type=float, default=0.8,
                   help="a fix row's sample must be this close to the row's fixed code "
                        "(difflib ratio)")
    p.add_argument("--out", required=True)
    p = sub.add_parser("score", help="score the answers with the sandbox (needs Csound)")
    p.add_argument("answers", help="folder of <variant>.json")
    p.add_argument("--items", required=True)
    p.add_argument("--out", default=None)
    args = parser.parse_args()
    {"items": items_command, "train": train_command, "score": score_command,
     "prompts": prompts_command, "sample": sample_command, "verdicts": verdicts_command,
     "rows": rows_command}[args.command](args)


if __name__ == "__main__":
    main()
