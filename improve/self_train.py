"""``csound-assistant improve self-train``: rounds of sample -> judge -> keep -> train.

    <run>/base, <run>/splits, an adapter to start from (the starter, <run>/adapter, a folder,
    or round 0: one trained from the bare base)
      -> round-NN/model/        the adapter the round continues, exported to GGUF
      -> round-NN/requests.json train-split requests (no validation or test one) and natural
                                describe-the-sound requests
      -> round-NN/answers.jsonl sampled answers (the runtime's batched path)
      -> round-NN/verdicts.jsonl the sandbox's verdicts
      -> round-NN/rows.jsonl    kept answers and fix pairs, as training rows
      -> round-NN/splits/       those rows (and a share of earlier rounds'), the run's validation
      -> round-NN/adapter/      the adapter continued on them (train.recipe, init_adapter)
      -> round-NN/record.json   what it kept, the verdicts, the adapter it continued, hashes

A round with a record is done; a killed round resumes where its files stop (answers and
verdicts are appended as they are made, training resumes from its checkpoints).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections import Counter
from pathlib import Path

from csound_assistant.artifacts import (
    atomic_write, is_complete, read_record, sha256_file, write_json, write_record,
)
from csound_assistant.errors import ConfigError
from csound_assistant.train.starter import portable, portable_path

from .config import SelfTrainConfig

FOLDER = "improve"


def round_dir(root: Path, n: int) -> Path:
    return root / FOLDER / f"round-{n:02d}"


def start_adapter(cfg: SelfTrainConfig, root: Path) -> Path | None:
    """The adapter round 1 continues; None when round 0 trains one from the bare base."""
    from csound_assistant.train.starter import resolve

    if not cfg.start_adapter:
        return None
    return resolve(str(root / "adapter") if cfg.start_adapter == "run" else cfg.start_adapter)


def self_train(cfg: SelfTrainConfig, root: Path, *, log=print, progress: bool = True) -> Path:
    """Run (or resume) every round in ``root`` (holding base/ and splits/); returns the last
    round's adapter."""
    for part in ("base", "splits/train.jsonl", "splits/validation.jsonl"):
        if not (root / part).exists():
            raise ConfigError(f"self-train: {root / part} is missing; run `csound-assistant "
                              "pipeline` (or base import, data build and data split) first")
    adapter = start_adapter(cfg, root)
    if adapter is None:
        adapter = _round_zero(cfg, root, log)
    history: list[dict] = []
    for n in range(1, cfg.rounds + 1):
        folder = round_dir(root, n)
        if (folder / "record.json").is_file():
            record = read_record(folder)
            if record["continued"]["sha256"] != _weights_sha(adapter):
                raise ConfigError(f"{folder} continued another adapter than {adapter}; remove "
                                  f"{root / FOLDER} to start the rounds again")
            log(f"round {n}: done ({record['rows']['trained']} rows trained), skipped")
        else:
            record = _round(cfg, root, n, adapter, log, progress)
        history.append(record)
        adapter = folder / "adapter" if record["trained"] else adapter
    summary = {"rounds": [_summary_line(r) for r in history],
               "adapter": portable_path(str(adapter.resolve())),
               "adapter_sha256": _weights_sha(adapter), "config": portable(cfg.to_dict())}
    write_json(root / FOLDER / "record.json", summary)
    if cfg.make_starter:
        from csound_assistant.train.starter import make_starter

        splits = read_record(adapter).get("splits_dir")  # the rows it was last trained on
        if not splits:
            raise ConfigError(f"make_starter: {adapter} is no adapter trained here (no round "
                              "trained one); nothing to make a starter of")
        splits = Path(splits)
        make_starter(adapter, splits, root / FOLDER / "starter",
                     {"self_training": summary["rounds"]}, force=True)
        log(f"self-train: starter {root / FOLDER / 'starter'}")
    return adapter


def _weights_sha(adapter: Path) -> str:
    return sha256_file(adapter / "adapter_model.safetensors")


def _summary_line(record: dict) -> dict:
    return {"round": record["round"], "kept": record["rows"], "trained": record["trained"],
            "verdicts": {k: v["kept"] for k, v in record["verdicts"]["kinds"].items()}}


def _round_zero(cfg: SelfTrainConfig, root: Path, log) -> Path:
    """The adapter from the bare base (the shipped starter's GPU run), in round-00."""
    from csound_assistant.train.config import load_config
    from csound_assistant.train.recipe import train

    folder = round_dir(root, 0)
    if is_complete(folder / "adapter"):
        log(f"round 0: {folder / 'adapter'} done, skipped")
        return folder / "adapter"
    train_cfg = load_config(cfg.base_train_config, {**cfg.base_train_overrides,
                                                    "init_adapter": ""})
    resume = any((folder / "train-checkpoints").glob("checkpoint-*"))
    return train(train_cfg, folder, resume=resume, force=True, base_dir=root / "base",
                 splits_dir=root / "splits", log=log)


def _round(cfg: SelfTrainConfig, root: Path, n: int, adapter: Path, log, progress) -> dict:
    from csound_assistant.eval.tasks import Item

    from .rows import judge_all, make_rows, verdict_counts
    from .sampling import sample

    folder = round_dir(root, n)
    folder.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    start = time.monotonic()
    gguf, lora = (_base_gguf(cfg, root, adapter, log), _lora_gguf(root, folder, adapter, log)) \
        if cfg.sample_lora else (_export(cfg, root, folder, adapter, log), None)
    seconds["export"] = round(time.monotonic() - start, 1)

    # --- requests: the train split's (minus what earlier rounds already kept) and natural ones
    requests_path = folder / "requests.json"
    if not requests_path.is_file():
        requests, counts = _requests(cfg, root, n)
        write_json(requests_path, {"counts": counts, "requests": [
            {**vars(item), "budget": budget} for item, budget in requests]})
    saved = json.loads(requests_path.read_text())
    requests = [(Item(**{k: v for k, v in r.items() if k != "budget"}), r["budget"])
                for r in saved["requests"]]
    log(f"round {n}: {len(requests)} requests {saved['counts']}")

    start = time.monotonic()
    answers = sample(gguf, requests, folder / "answers.jsonl", samples=cfg.samples,
                     temperature=cfg.temperature, seed=cfg.seed + 1000 * n,
                     parallel=cfg.parallel, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads,
                     n_gpu_layers=cfg.n_gpu_layers, lora=lora, progress=progress)
    seconds["sample"] = round(time.monotonic() - start, 1)
    start = time.monotonic()
    items = {item.id: item for item, _ in requests}
    verdicts = judge_all(items, answers, folder / "verdicts.jsonl", workers=cfg.judge_workers,
                         progress=progress)
    seconds["judge"] = round(time.monotonic() - start, 1)
    counts = verdict_counts(verdicts)

    split_rows = (root / "splits" / "train.jsonl").read_text().splitlines()
    rows, row_counts = make_rows(items, verdicts, split_rows, per_prompt=cfg.per_prompt,
                                 per_prompt_fim=cfg.per_prompt_fim,
                                 fix_similarity=cfg.fix_similarity, fix_pairs=cfg.fix_pairs,
                                 seed=cfg.seed + n, have=_earlier_rows_per_request(root, n))
    with atomic_write(folder / "rows.jsonl") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    trained = _train_rows(cfg, root, n, rows)
    log(f"round {n}: {len(answers)} answers, {row_counts.get('kept', 0)} kept, "
        f"{row_counts.get('fix pairs', 0)} fix pairs; training on {len(trained)} rows")

    new_adapter = None
    if trained:
        start = time.monotonic()
        new_adapter = _train(cfg, root, folder, adapter, trained, log)
        seconds["train"] = round(time.monotonic() - start, 1)
    else:
        log(f"round {n}: no row kept; the adapter stays {adapter}")
    shutil.rmtree(folder / "merged", ignore_errors=True)
    files = ["requests.json", "answers.jsonl", "verdicts.jsonl", "rows.jsonl"]
    if trained:
        files.append("splits/train.jsonl")
    return write_record(
        folder, "self-train-round", round=n,
        continued={"adapter": portable_path(str(adapter.resolve())),
                   "sha256": _weights_sha(adapter)},
        adapter=({"path": portable_path(str(new_adapter.resolve())),
                  "sha256": _weights_sha(new_adapter)} if new_adapter else None),
        trained=bool(new_adapter), requests=saved["counts"], verdicts=counts,
        rows={**row_counts, "new": len(rows), "trained": len(trained)},
        gguf={"file": gguf.name, "sha256": sha256_file(gguf),
              **({"lora_sha256": sha256_file(lora)} if lora else {})},
        hashes={name: sha256_file(folder / name) for name in files},
        run_splits={name: sha256_file(root / "splits" / f"{name}.jsonl")
                    for name in ("train", "validation")},
        seconds=seconds, config=portable(cfg.to_dict()))


def _export(cfg: SelfTrainConfig, root: Path, folder: Path, adapter: Path, log) -> Path:
    """The GGUF of ``adapter`` the round samples (``quant_type``), reused when it is there.
    Exported as F16 and quantized here: the export's quantization gate, which renders held-out
    text through both files, has nothing to decide for a model that is only sampled."""
    from csound_assistant.constants import DEFAULT_MODEL_NAME
    from csound_assistant.convert.export import export
    from csound_assistant.convert.quantize import quantize

    out = folder / "model"
    gguf = out / f"{DEFAULT_MODEL_NAME}.{cfg.quant_type}.gguf"
    if is_complete(out) and gguf.is_file() and \
            read_record(out).get("adapter_sha256") == _weights_sha(adapter):
        return gguf
    export(adapter, out, quant_types=(), gate=False, lora=False, imatrix=False, force=True,
           merged_dir=folder / "merged", splits_dir=root / "splits", base_dir=root / "base",
           log=log)
    if cfg.quant_type != "F16":
        log(f"quantize: {cfg.quant_type}")
        quantize(out / f"{DEFAULT_MODEL_NAME}.F16.gguf", gguf, cfg.quant_type)
    record = json.loads((out / "record.json").read_text())
    write_json(out / "record.json", {**record, "adapter_sha256": _weights_sha(adapter)})
    return gguf


def _base_gguf(cfg: SelfTrainConfig, root: Path, adapter: Path, log) -> Path:
    """The base in GGUF (``quant_type``) with the adapters' prompt format, made once a run."""
    from csound_assistant.constants import DEFAULT_MODEL_NAME
    from csound_assistant.convert.export import provenance
    from csound_assistant.convert.gguf_convert import convert
    from csound_assistant.convert.merge import resolve_adapter
    from csound_assistant.convert.quantize import quantize

    out = root / FOLDER / "base-gguf"
    gguf = out / f"{DEFAULT_MODEL_NAME}-base.{cfg.quant_type}.gguf"
    if is_complete(out) and gguf.is_file():
        return gguf
    info = resolve_adapter(adapter, root / "base")
    out.mkdir(parents=True, exist_ok=True)
    f16 = out / f"{DEFAULT_MODEL_NAME}-base.F16.gguf"
    convert(root / "base", f16, prompt_format=info.prompt_format,
            metadata=provenance(info, DEFAULT_MODEL_NAME), log=log)
    if cfg.quant_type != "F16":
        quantize(f16, gguf, cfg.quant_type)
        f16.unlink()
    write_record(out, "self-train-base-gguf", prompt_format=info.prompt_format.to_record(),
                 base=portable_path(str((root / "base").resolve())))
    return gguf


def _lora_gguf(root: Path, folder: Path, adapter: Path, log) -> Path:
    """``adapter`` as a GGUF LoRA for the base GGUF, reused when it is there."""
    from csound_assistant.constants import DEFAULT_MODEL_NAME
    from csound_assistant.convert.export import provenance
    from csound_assistant.convert.gguf_convert import convert_lora
    from csound_assistant.convert.merge import resolve_adapter

    path = folder / "model" / f"{_weights_sha(adapter)[:12]}.lora.gguf"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        info = resolve_adapter(adapter, root / "base")
        convert_lora(adapter, root / "base", path,
                     metadata=provenance(info, DEFAULT_MODEL_NAME), log=log)
    return path


def _requests(cfg: SelfTrainConfig, root: Path, n: int) -> tuple[list, dict]:
    from . import requests as req

    splits = root / "splits"
    keys, held_opcodes = req.held_out(splits)
    have = _earlier_rows_per_request(root, n)
    train = [(item, budget) for item, budget in req.train_requests(
        splits, cfg.kinds, cfg.max_new_tokens, cfg.max_budget)
        if have[item.id] < (cfg.per_prompt_fim if item.is_fim else cfg.per_prompt)]
    random.Random(cfg.seed + n).shuffle(train)
    if cfg.prompts_per_round:
        train = train[:cfg.prompts_per_round]
    natural = []
    if cfg.natural_per_round:
        opcodes = req.train_opcodes(splits) - held_opcodes
        natural = req.natural_requests(req.manual_pages(), opcodes, cfg.natural_per_round,
                                       cfg.seed + n, cfg.max_budget)
    items, refused = req.refuse_held_out([i for i, _ in train + natural], keys)
    budgets = {i.id: b for i, b in train + natural}
    counts = {"train": len(train), "natural": len(natural), "refused_held_out": len(refused)}
    return [(i, budgets[i.id]) for i in items], counts


def _earlier_rows_per_request(root: Path, n: int) -> Counter:
    have = Counter()
    for k in range(1, n):
        for row in _read_rows(round_dir(root, k) / "rows.jsonl"):
            if (row["meta"] or {}).get("task") != "fix-self":
                have[row["meta"]["request"]] += 1
    return have


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_rows(cfg: SelfTrainConfig, root: Path, n: int, rows: list[dict]) -> list[dict]:
    """This round's rows plus ``earlier_share`` of the earlier rounds', each content once."""
    from csound_assistant.row_identity import unique_rows

    earlier = [r for k in range(1, n) for r in _read_rows(round_dir(root, k) / "rows.jsonl")]
    rng = random.Random(cfg.seed + n)
    drawn = rng.sample(earlier, round(len(earlier) * cfg.earlier_share))
    return unique_rows(rows + drawn)[0] if rows else []


def _train(cfg: SelfTrainConfig, root: Path, folder: Path, adapter: Path, rows: list[dict],
           log) -> Path:
    from csound_assistant.train.config import load_config
    from csound_assistant.train.recipe import train

    splits = folder / "splits"
    splits.mkdir(exist_ok=True)
    with atomic_write(splits / "train.jsonl") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    shutil.copyfile(root / "splits" / "validation.jsonl", splits / "validation.jsonl")
    if is_complete(folder / "adapter") and \
            read_record(folder / "adapter").get("splits", {}).get("train") == \
            sha256_file(splits / "train.jsonl"):
        return folder / "adapter"  # trained before a kill that came before the record
    train_cfg = load_config(cfg.train_config, {**cfg.train_overrides,
                                               "init_adapter": str(adapter.resolve()),
                                               "seed": cfg.seed})
    resume = any((folder / "train-checkpoints").glob("checkpoint-*"))
    return train(train_cfg, folder, resume=resume, force=True, base_dir=root / "base",
                 splits_dir=splits, log=log)
