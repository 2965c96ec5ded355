"""The one training config: a dataclass of defaults, optionally a YAML file, then CLI overrides.

Precedence is CLI (``--set key=value``) > YAML > defaults; an unknown key is an error, and every
value is checked against the field's type before anything is loaded.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from csound_assistant.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
METHODS = ("auto", "qlora", "lora")
DEVICES = ("auto", "cuda", "cpu", "mps")
PACKING = ("auto", "packed", "grouped")
SCHEDULES = ("cosine", "linear", "constant")
LORA_KERNELS = ("auto", "peft", "fused")

# Fields that may change between a run and its --resume (they do not change what is learned).
RESUME_MUTABLE = ("eval_every", "save_every", "log_every", "keep_checkpoints", "eval_batches",
                  "progress", "lora_kernel")


def _f(default, help: str, **kw):
    mutable = isinstance(default, (list, dict))
    kw.setdefault("default_factory" if mutable else "default",
                  (lambda d=default: type(d)(d)) if mutable else default)
    return field(metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    # --- what to train ------------------------------------------------------------------------
    method: str = _f("auto", "qlora (CUDA, 4-bit NF4), lora, or auto: qlora on CUDA, else lora")
    device: str = _f("auto", "cuda, cpu, mps or auto (cuda > mps > cpu)")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = _f(0.05, "dropout on the LoRA input")
    target_modules: list = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                               "down_proj"], "module names to adapt, or ['all-linear']")
    lora_layers: int = _f(0, "adapt only the last N decoder layers (0 = all): the backward pass "
                          "then stops at layer L-N, which saves compute on CPU")
    init_adapter: str = _f("", "continue training this LoRA adapter (a folder, or 'starter': the "
                           "GPU-trained one shipped in train/starter) instead of a new one; its "
                           "rank, targets and layers replace lora_*; '' = a new adapter")
    # --- data ---------------------------------------------------------------------------------
    tasks: list = _f([], "train and validate only on rows whose meta.task is listed (e.g. "
                     "[write, opcode, chat, orchestra]); empty = every row")
    task_weights: dict = _f({}, "train-split copies per row of a task, e.g. {patch: 3}; 1 when "
                            "not listed, 0 drops the task from training (validation is kept "
                            "as it is). In a run shorter than an epoch this is the task mix")
    opcode_reference: bool = _f(False, "add the manual's synopsis of each opcode a request "
                                "names under it (csound_assistant.opcode_reference); the "
                                "exported model asks eval and the server to do the same")
    fim_reference: bool = _f(False, "put the manual's synopses of the opcodes on the cursor's "
                             "line before each FIM prefix, as Csound comments; the exported "
                             "model asks eval and the server to do the same")
    lookup_share: float = _f(1.0, "with opcode_reference or fim_reference: the share of rows "
                             "encoded with the manual lookups (a fixed draw by row text), the "
                             "rest without, so the model also answers well where no lookup is "
                             "added (Ollama, Continue, llama.cpp's server); 1.0 = every row")
    max_length: int = _f(1024, "longest row in tokens; longer rows are dropped (and counted), "
                         "never truncated, so every kept answer ends with its stop token")
    batch_tokens: int = _f(4096, "tokens per micro-batch (real tokens when packed; rows x "
                           "longest row when grouped)")
    max_batch_rows: int = _f(64, "rows per micro-batch at most")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    packing: str = _f("auto", "packed: padding-free, one row of documents with their own "
                      "position ids and no cross-document attention (needs a varlen kernel: "
                      "CUDA); grouped: length-grouped padded batches; auto picks")
    # --- optimisation -------------------------------------------------------------------------
    learning_rate: float = _f(2e-4, "peak learning rate (AdamW)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    schedule: str = _f("cosine", "cosine, linear or constant decay after warm-up")
    warmup_steps: int = _f(10, "linear warm-up steps")
    max_steps: int = _f(0, "optimizer steps; 0 = run `epochs` epochs")
    time_budget_minutes: float = _f(0.0, "if > 0, fewer steps when the measured speed of the "
                                    "first steps says max_steps would not fit this many minutes "
                                    "(the schedule is re-fitted; for slow, shared CPUs)")
    epochs: float = _f(1.0, "epochs over the train split when max_steps is 0")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 = off)")
    gradient_checkpointing: str = _f("auto", "true, false or auto (on for CUDA, off on CPU)")
    lora_kernel: str = _f("auto", "LoRA layers' forward: fused (the scale on the rank-r "
                          "product, the add in the second product's epilogue; the same "
                          "function, 1.10x tokens/s at 7B without dropout), peft (peft's "
                          "own), or auto: fused on CUDA when every LoRA layer is a plain "
                          "Linear/Linear4bit one and FSDP does not shard the model, else peft")
    liger: str = _f("auto", "Liger kernels (fused RMSNorm/RoPE/SwiGLU/linear-cross-entropy): "
                    "true, false or auto (on when CUDA and liger-kernel are there)")
    seed: int = _f(0, "seed for LoRA init, data order and dropout")
    # --- bookkeeping --------------------------------------------------------------------------
    eval_every: int = _f(50, "validation loss every N steps (0 = only at start and end)")
    eval_batches: int = _f(0, "validation micro-batches per evaluation (0 = the whole split)")
    save_every: int = _f(50, "checkpoint every N steps (0 = never)")
    keep_checkpoints: int = _f(2, "checkpoints kept (oldest removed)")
    log_every: int = _f(5, "log train loss every N steps")
    progress: bool = _f(True, "show a progress bar")
    torch_threads: int = _f(0, "CPU threads for torch (0 = torch's default)")

    def __post_init__(self):
        problems = []
        for name, choices in (("method", METHODS), ("device", DEVICES), ("packing", PACKING),
                              ("schedule", SCHEDULES), ("lora_kernel", LORA_KERNELS)):
            if getattr(self, name) not in choices:
                problems.append(f"{name}={getattr(self, name)!r}: "
                                f"choose one of {', '.join(choices)}")
        for name in ("gradient_checkpointing", "liger"):
            value = str(getattr(self, name)).lower()
            if value not in ("auto", "true", "false"):
                problems.append(f"{name}={value!r}: choose true, false or auto")
            setattr(self, name, value)
        for name in ("lora_r", "lora_alpha", "max_length", "batch_tokens", "grad_accum",
                     "max_batch_rows"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.batch_tokens < self.max_length:
            problems.append(f"batch_tokens={self.batch_tokens} is below max_length="
                            f"{self.max_length}: a longest row would not fit a micro-batch")
        if self.lora_layers < 0 or self.time_budget_minutes < 0:
            problems.append("lora_layers and time_budget_minutes must be >= 0")
        if self.max_steps <= 0 and self.epochs <= 0:
            problems.append("set max_steps > 0 or epochs > 0")
        if not 0.0 <= self.lookup_share <= 1.0:
            problems.append(f"lookup_share={self.lookup_share} must be between 0 and 1")
        if not self.target_modules:
            problems.append("target_modules is empty")
        if problems:
            raise ConfigError("bad training config:\n  " + "\n  ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}


def _coerce(name: str, value, where: str):
    """Check or convert ``value`` to the type of field ``name`` (strings come from the CLI)."""
    kind = typing.get_type_hints(TrainConfig)[name]
    if kind is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {name} must be a list, got {value!r}")
        return value
    if kind is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value.values()):
            raise ConfigError(f"{where}: {name} must map task names to whole numbers >= 0, "
                              f"e.g. {{patch: 3}}; got {value!r}")
        return {str(k): v for k, v in value.items()}
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name} must be true or false, got {value!r}")
        return value
    if kind is str:
        return str(value).lower() if isinstance(value, bool) else str(value)
    bad = ConfigError(f"{where}: {name} must be {kind.__name__}, got {value!r}")
    if isinstance(value, bool) or (kind is int and isinstance(value, float)
                                   and not value.is_integer()):
        raise bad
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise bad from None


def resolve_config_path(name_or_path: str | Path, config_dir: Path = CONFIG_DIR,
                        what: str = "config") -> Path:
    """A YAML path, or the name of a config shipped in ``config_dir`` (``cpu-smollm2``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = config_dir / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in config_dir.glob("*.yaml")))
    raise ConfigError(f"{what} {name_or_path!r} is neither a file nor a shipped config ({names})")


def read_values(path: Path | None, overrides: list[str] | dict | None, known: set[str],
                coerce) -> dict:
    """The values of a YAML file ``path`` then ``overrides`` (``["key=value", ...]`` or a
    dict), each checked by ``coerce(key, value, where)``; every unknown key and bad override
    is reported at once. Shared by the train and self-training configs."""
    values: dict = {}
    problems = []
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, "
                              f"got {type(loaded).__name__}")
        for key, value in loaded.items():
            if key not in known:
                problems.append(f"{path}: unknown key {key!r}")
            else:
                values[key] = coerce(key, value, str(path))
    if isinstance(overrides, dict):
        overrides = [f"{k}={v}" if not isinstance(v, list) else (k, v)
                     for k, v in overrides.items()]
    for item in overrides or []:
        if isinstance(item, tuple):
            key, value = item
        else:
            if "=" not in item:
                problems.append(f"override {item!r}: write key=value")
                continue
            key, value = item.split("=", 1)
            key = key.strip().replace("-", "_")
            value = yaml.safe_load(value) if value.strip() else value
        if key not in known:
            problems.append(f"override: unknown key {key!r}")
        else:
            values[key] = coerce(key, value, "override")
    if problems:
        raise ConfigError("\n".join(problems) + f"\nknown keys: {', '.join(sorted(known))}")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None
                ) -> TrainConfig:
    """Defaults < YAML file ``path`` < ``overrides`` (``["key=value", ...]`` or a dict)."""
    path = resolve_config_path(path) if path is not None else None
    return TrainConfig(**read_values(path, overrides, set(field_help()), _coerce))


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
