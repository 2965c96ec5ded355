"""The training recipe, top to bottom: ``csound-assistant train run`` calls ``train``.

    base/ + splits/  ->  tokenize (answers-only labels, stop token checked)
                     ->  QLoRA on CUDA / LoRA on CPU or mps (backend.py says which and why)
                     ->  steps of packed or length-grouped micro-batches, validation loss,
                         checkpoints (--resume), progress bar with tokens/s and ETA
                     ->  adapter/ (peft adapter, tokenizer, prompt_format.json, config,
                         metrics, loss curve, versions, base identity)

Runs unchanged under ``accelerate launch``/``torchrun``: DDP over the visible GPUs, or FSDP2
(parameters sharded over them, train/sharding.py) when accelerate's config says FSDP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path

from csound_assistant.artifacts import (
    read_record, sha256_file, stage_output, work_dir as default_work_dir, write_json,
)
from csound_assistant.errors import ArtifactError
from csound_assistant.opcode_reference import Lookups
from csound_assistant.prompt_format import get_format
from csound_assistant.row_identity import unique_rows
from csound_assistant.stage_records import Adapter

from . import checkpoint, sharding, starter
from .backend import choose_backend, load_model
from .batching import (
    BatchPlan, collate_grouped, collate_packed, real_tokens, total_steps, trained_tokens,
)
from .config import TrainConfig, dump_config
from .encode import IGNORE, encode_split, read_split, select_tasks, special_ids, weight_tasks
from .fused_lora import apply_lora_kernel
from .report import plot_loss_curve

CHECKPOINTS = "train-checkpoints"


def train(cfg: TrainConfig, work_dir: str | os.PathLike | None = None, *, resume: bool = False,
          force: bool = False, base_dir=None, splits_dir=None, out_dir=None, log=print) -> Path:
    """Fine-tune ``<work>/base`` on ``<work>/splits``; returns the published ``<work>/adapter``."""
    import torch

    work = Path(work_dir) if work_dir is not None else default_work_dir()
    base_dir = Path(base_dir or work / "base")
    splits_dir = Path(splits_dir or work / "splits")
    out_dir = Path(out_dir or work / "adapter")
    ckpt_root = out_dir.parent / CHECKPOINTS
    if out_dir.exists() and not force:
        raise ArtifactError(f"{out_dir} already exists; pass --force to train a new one")
    if resume and checkpoint.latest(ckpt_root) is None:
        raise ArtifactError(f"--resume: no checkpoint in {ckpt_root} to resume from")

    # --- 1. hardware and method ------------------------------------------------------------
    backend = choose_backend(cfg)
    dist = _init_distributed(backend)
    main = backend.rank == 0
    say = log if main else (lambda *a, **k: None)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    say(f"train: {backend.describe()}")

    # --- 2. prompt format, tokenizer, data -------------------------------------------------
    from transformers import AutoTokenizer

    base_record = read_record(base_dir)
    fmt = get_format(base_record["prompt_format"])
    init = None
    if cfg.init_adapter:
        init = starter.load(cfg.init_adapter)
        cfg = starter.check(init, cfg, base_dir, splits_dir, say)
        say(f"train: continuing {init.dir} (sha256 {init.sha256[:12]})")
    lookups = Lookups.load(cfg.opcode_reference, cfg.fim_reference)
    if lookups.reference:
        fmt = dataclasses.replace(fmt, opcode_reference=lookups.chat, fim_reference=lookups.fim)
        say(f"train: manual synopses ({lookups.describe()['opcodes']} opcodes) in "
            f"{' and '.join(lookups.names)} prompts")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    ids = special_ids(tokenizer, fmt)
    tokenizer.pad_token = fmt.pad  # an existing unused token, never EOS: the vocabulary is fixed
    splits = {}
    for name in ("train", "validation"):
        rows = select_tasks(read_split(splits_dir / f"{name}.jsonl"), cfg.tasks,
                            str(splits_dir / f"{name}.jsonl"))
        if name == "train":
            rows, repeated = unique_rows(rows)  # before task weights, which repeat on purpose
            if repeated:
                say(f"train: {repeated} train rows repeat another's content; each trains once")
            rows = weight_tasks(rows, cfg.task_weights)
            fresh = starter.unseen_rows(init, rows) if init else set()
        splits[name] = encode_split(tokenizer, fmt, rows, cfg.max_length, ids, name, lookups,
                                    cfg.lookup_share)
        s = splits[name]
        say(f"train: {name}: {len(s.examples)} rows, {s.tokens} tokens {s.kinds}"
            + (f", {s.dropped_too_long} dropped as longer than {cfg.max_length}"
               if s.dropped_too_long else ""))
    packed = backend.packing == "packed"
    first = frozenset(k for k, e in enumerate(splits["train"].examples) if e.row in fresh)
    if first:
        say(f"train: {len(first)} train rows are new to {init.dir.name} (not in its row "
            "list, e.g. feedback corrections): each epoch starts with them")
    train_plan = BatchPlan(splits["train"].examples, packed, cfg.batch_tokens,
                           cfg.max_batch_rows, cfg.seed, first=first)
    val_plan = BatchPlan(splits["validation"].examples, packed, cfg.batch_tokens,
                         cfg.max_batch_rows, cfg.seed, shuffle=False)
    steps = cfg.max_steps or total_steps(train_plan, cfg.epochs, cfg.grad_accum,
                                         backend.world_size)
    epochs = steps * cfg.grad_accum * backend.world_size / train_plan.micro_batches_per_epoch()
    say(f"train: {steps} steps of {cfg.grad_accum} x {backend.world_size} micro-batches "
        f"(~{epochs:.2f} epochs)")

    # --- 3. model, optimizer, schedule -----------------------------------------------------
    model = load_model(base_dir, cfg, backend, init)
    lora_kernel = apply_lora_kernel(model, cfg.lora_kernel, backend)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    say(f"train: {n_trainable:,} trainable parameters ({100 * n_trainable / n_total:.2f}%), "
        f"{lora_kernel} LoRA forward")
    if backend.fsdp:  # the optimizer gets each rank's shards of the LoRA weights
        model = sharding.shard(model, backend.fsdp)
        trainable = [p for p in model.parameters() if p.requires_grad]
        say(f"train: FSDP2 over {backend.world_size} process(es): this rank holds "
            f"{100 * sharding.local_fraction(model):.0f}% of the trainable parameters")
    fused = backend.device == "cuda" and not backend.offload  # offloaded: steps on the CPU
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  **({"fused": True} if fused else {}))
    plan = {"steps": steps}  # the schedule reads this; a time budget may shorten it
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, plan))
    fp16 = backend.device == "cuda" and backend.dtype == "float16"
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    state = {"config": cfg.to_dict(), "train_loss": [], "val_loss": [], "tokens": 0,
             "seconds": 0.0}
    start = 0
    if resume:
        path = checkpoint.latest(ckpt_root)
        saved = json.loads((path / "state.json").read_text())
        checkpoint.check_compatible(saved["config"], cfg, path)
        state = checkpoint.load(path, model, optimizer, scheduler, scaler)
        start = state["step"]
        steps = plan["steps"] = state.get("planned_steps", steps)
        say(f"train: resumed from {path} at step {start}/{steps}")
    elif ckpt_root.exists() and main:
        import shutil

        shutil.rmtree(ckpt_root)  # a fresh run does not mix with an old run's checkpoints
    wrapped = model
    if dist and not backend.fsdp:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(
            model, device_ids=[backend.local_rank] if backend.device == "cuda" else None)
    device = torch.device(backend.torch_device)
    autocast = (torch.autocast("cuda", dtype=getattr(torch, backend.dtype))
                if backend.device == "cuda" else contextlib.nullcontext())
    collate = collate_packed if packed else (lambda b: collate_grouped(b, ids["pad"]))
    if backend.liger:  # Liger's fused linear + cross-entropy never builds the logits at all
        def forward_loss(module, batch, num_items):
            return module(**batch, num_items_in_batch=num_items, skip_logits=True).loss
    else:
        forward_loss = _trained_positions_loss

    def evaluate() -> float:
        """Mean token loss over the validation split (or its first eval_batches)."""
        model.eval()
        n = val_plan.micro_batches_per_epoch()
        n = min(n, cfg.eval_batches) if cfg.eval_batches else n
        total = torch.zeros(2, device=device, dtype=torch.float64)
        with torch.no_grad(), autocast:
            # every rank runs as many forwards (FSDP gathers weights in each); surplus ones
            # repeat the last batch and count for nothing
            for first in range(0, n, backend.world_size):
                i = first + backend.rank
                batch = val_plan.micro_batch(min(i, n - 1))
                loss = forward_loss(model, _to(collate(batch), device), 1)
                if i < n:
                    total += torch.tensor([loss.item(), trained_tokens(batch)], device=device,
                                          dtype=torch.float64)
        if dist:
            torch.distributed.all_reduce(total)
        model.train()
        return (total[0] / total[1]).item()

    # --- 4. the loop -----------------------------------------------------------------------
    eval_seconds = time.perf_counter()
    if start == 0:
        state["val_loss"].append([0, evaluate()])
        say(f"train: validation loss before training {state['val_loss'][-1][1]:.4f}")
    eval_seconds = time.perf_counter() - eval_seconds
    budget_left = cfg.time_budget_minutes * 60 - eval_seconds  # the final evaluation too
    model.train()
    bar = _progress(cfg.progress and main, steps, start)
    t0, tokens0, paused = time.perf_counter(), 0, 0.0  # paused: evaluation and checkpoints
    if backend.device == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step = start
    saves: list[float] = []  # seconds per checkpoint save so far
    while step < steps:
        micro = train_plan.step(step, cfg.grad_accum, backend.world_size)
        label_total = sum(trained_tokens(b) for b in micro)  # the whole step, all ranks
        mine = micro[backend.rank::backend.world_size]
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        for i, batch in enumerate(mine):
            sync = i == len(mine) - 1
            with _gradient_sync(wrapped, backend, dist, sync):
                with autocast:
                    step_loss = forward_loss(wrapped, _to(collate(batch), device), label_total)
                # DDP and FSDP average gradients over ranks; the loss is normalised over all
                loss = step_loss * backend.world_size
                (scaler.scale(loss) if scaler else loss).backward()
            loss_sum += step_loss.detach().double()
        tokens0 += sum(real_tokens(b) for b in micro)  # every rank's real (non-pad) tokens
        if scaler:
            scaler.unscale_(optimizer)
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if dist:
            torch.distributed.all_reduce(loss_sum)
        done = step = step + 1
        tok_s = tokens0 / (time.perf_counter() - t0 - paused)
        # Fit the step count to the time budget after 3 steps, and again after 12 when the
        # speed is better known; evaluations and checkpoints still to come are reserved for.
        if cfg.time_budget_minutes and done in (start + min(3, steps - start), start + 12):
            steps = _fit_budget(steps, done, start, time.perf_counter() - t0 - paused,
                                budget_left - paused, dist, device, say,
                                pauses=lambda n: _pauses(cfg, done, n, eval_seconds, saves))
            plan["steps"] = state["planned_steps"] = bar.total = steps
        if done % cfg.log_every == 0 or done == steps or done == start + 1:
            state["train_loss"].append([done, loss_sum.item(), scheduler.get_last_lr()[0]])
        pause = time.perf_counter()
        if (cfg.eval_every and done % cfg.eval_every == 0) or done == steps:
            state["val_loss"].append([done, evaluate()])
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum.item():.3f}", val=f"{state['val_loss'][-1][1]:.3f}",
                        tok_s=f"{tok_s:,.0f}")
        if cfg.save_every and done % cfg.save_every == 0 and done < steps and main:
            run_state = {**state, "tokens": state["tokens"] + tokens0,
                         "seconds": state["seconds"] + time.perf_counter() - t0}
            saved = time.perf_counter()
            checkpoint.save(ckpt_root, done, model, optimizer, scheduler, scaler, run_state,
                            cfg.keep_checkpoints)
            saves.append(time.perf_counter() - saved)
        paused += time.perf_counter() - pause
    bar.close()
    elapsed = time.perf_counter() - t0
    state["tokens"] += tokens0
    state["seconds"] += elapsed
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if backend.device == "cuda" else None

    # --- 5. publish the adapter ------------------------------------------------------------
    epochs = steps * cfg.grad_accum * backend.world_size / train_plan.micro_batches_per_epoch()
    metrics = {
        "steps": steps, "epochs": round(epochs, 3),
        "val_loss_start": state["val_loss"][0][1], "val_loss_end": state["val_loss"][-1][1],
        "train_loss_end": state["train_loss"][-1][1] if state["train_loss"] else None,
        "train_rows": len(splits["train"].examples),
        "validation_rows": len(splits["validation"].examples),
        "dropped_too_long": {k: s.dropped_too_long for k, s in splits.items()},
        "tokens_seen": state["tokens"], "train_seconds": round(state["seconds"], 1),
        "tokens_per_second": round(tokens0 / max(elapsed - paused, 1e-9), 1),
        "world_size": backend.world_size, "cpu_seconds": round(time.process_time(), 1),
        "peak_gpu_gib": round(peak, 2) if peak is not None else None,
        "trainable_parameters": n_trainable, "lora_kernel": lora_kernel,
        "resumed_from_step": start or None,
        "train_loss": state["train_loss"], "val_loss": state["val_loss"],
    }
    say(f"train: validation loss {metrics['val_loss_start']:.4f} -> "
        f"{metrics['val_loss_end']:.4f}; {metrics['tokens_per_second']:,.0f} tokens/s")
    # sharded: every rank gathers the adapter whole (a collective), the first one writes it
    adapter_state = sharding.full_adapter_state(model) if backend.fsdp else None
    if main:
        with stage_output(out_dir, force=force) as tmp:
            model.save_pretrained(tmp, state_dict=adapter_state)
            tokenizer.save_pretrained(tmp)
            write_json(tmp / "prompt_format.json", fmt.to_record())
            (tmp / "train_config.yaml").write_text(dump_config(cfg))
            write_json(tmp / "metrics.json", metrics)
            plot_loss_curve(state["train_loss"], state["val_loss"], tmp / "loss_curve.png")
            Adapter.write(
                tmp, base_dir=base_dir, base=_base_identity(base_dir), splits_dir=splits_dir,
                splits={n: sha256_file(splits_dir / f"{n}.jsonl") for n in splits},
                prompt_format=fmt.name, backend=backend.describe(), method=backend.method,
                config=cfg.to_dict(), metrics={k: v for k, v in metrics.items()
                                               if k not in ("train_loss", "val_loss")},
                pad_token=fmt.pad, pad_token_id=ids["pad"], eos_token_id=ids["eos"],
                opcode_reference=lookups.describe(),
                init_adapter=init.describe() if init else None,
            )
        import shutil

        shutil.rmtree(ckpt_root, ignore_errors=True)
        say(f"train: wrote {out_dir}")
    if dist:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return out_dir


def _trained_positions_loss(model, batch: dict, num_items) -> "torch.Tensor":
    """Summed next-token loss over trained labels / ``num_items``, as transformers computes it,
    but with the vocabulary projection only at positions whose next token is trained: prompts
    (most of a FIM row) cost no lm_head, forward or backward. SmolLM2's 49k x 576 head is a
    fifth of its compute per token."""
    import torch
    import torch.nn.functional as F

    labels = batch.pop("labels")[:, 1:]  # position t predicts token t + 1
    keep = (labels != IGNORE).any(0).nonzero().squeeze(1)
    logits = model(**batch, logits_to_keep=keep).logits
    target = labels[:, keep]
    loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), ignore_index=IGNORE,
                           reduction="sum")
    return loss / (num_items.to(loss.device) if torch.is_tensor(num_items) else num_items)


def _pauses(cfg: TrainConfig, done: int, steps: int, eval_seconds: float,
            saves: list[float]) -> float:
    """Seconds of evaluation and checkpointing still to come before step ``steps`` ends (the
    final evaluation is reserved for separately)."""
    def due(every: int) -> int:  # multiples of ``every`` strictly between done and steps
        return (steps - 1) // every - done // every if every and steps > done + 1 else 0

    per_save = max(saves) if saves else 1.0
    return due(cfg.eval_every) * eval_seconds + due(cfg.save_every) * per_save


def _fit_budget(steps, done, start, seconds, budget, dist, device, say,
                pauses=lambda n: 0.0) -> int:
    """Fewer steps if the speed so far says ``steps`` (and the pauses they bring, a function
    of the step count) would overrun ``budget`` seconds."""
    import torch

    per_step = torch.tensor(seconds / (done - start), device=device)
    if dist:  # every rank must agree on the step count
        torch.distributed.all_reduce(per_step, op=torch.distributed.ReduceOp.MAX)
    fits = steps
    for _ in range(3):  # the pauses depend on the count they help to fix
        left = budget - seconds - pauses(fits)
        fits = min(steps, done + int(max(0.0, left) / per_step.item()))
    if fits < steps:
        say(f"train: {per_step.item():.1f} s/step: {steps} steps would overrun the time "
            f"budget, training {max(fits, done)} (the schedule is re-fitted)")
        return max(fits, done)
    return steps


def _lr_lambda(cfg: TrainConfig, plan: dict):
    def factor(step: int) -> float:
        steps = plan["steps"]
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)
        progress = (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps)
        if cfg.schedule == "cosine":
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if cfg.schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0
    return factor


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}


def _init_distributed(backend) -> bool:
    if backend.world_size <= 1 and not backend.fsdp:
        return False
    import torch

    if backend.device == "cuda":
        torch.cuda.set_device(backend.local_rank)
    group = "gloo"
    if backend.device == "cuda":  # offloaded shards are gathered on the CPU side too
        group = "cuda:nccl,cpu:gloo" if backend.offload else "nccl"
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500"),
                       ("RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(key, value)  # one process, launched without a launcher's env
    torch.distributed.init_process_group(group)
    return True


def _gradient_sync(wrapped, backend, dist: bool, sync: bool):
    """Reduce gradients only at a step's last micro-batch (DDP's no_sync, FSDP2's flag)."""
    if backend.fsdp:
        return sharding.gradient_sync(wrapped, sync)
    return wrapped.no_sync() if dist and not sync else contextlib.nullcontext()


def _progress(enabled: bool, total: int, initial: int):
    import sys

    from tqdm.auto import tqdm

    # in a log file (the pipeline's), one line every 30 s instead of a redraw per step
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", desc="train",
                dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)


def _base_identity(base_dir: Path) -> dict:
    record = read_record(base_dir)
    files = record.get("files") or {p.name: sha256_file(p) for p in sorted(base_dir.iterdir())
                                    if p.is_file() and p.name != "record.json"}
    return {"path": str(base_dir.resolve()), "source": record.get("source"), "files": files,
            "prompt_format": record.get("prompt_format")}
