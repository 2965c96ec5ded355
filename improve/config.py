"""The self-training config: one dataclass of defaults, optionally a YAML file, then overrides.

Precedence is ``--set key=value`` > YAML > defaults; an unknown key is an error. The training
of each round is a train-stage config (``train_config``) plus ``train_overrides``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from csound_assistant.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
QUANT_TYPES = ("F16", "Q8_0", "Q4_K_M")


def _f(default, help: str):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class SelfTrainConfig:
    # --- where it starts ----------------------------------------------------------------------
    start_adapter: str = _f("starter", "the adapter round 1 samples and continues: 'starter' "
                            "(train/starter), a folder, 'run' (<run>/adapter), or '' to train "
                            "one from the bare base first with base_train_config (round 0)")
    base_train_config: str = _f("gpu-smollm2-lora", "train config of round 0 (from the bare "
                                "base), used only when start_adapter is ''")
    base_train_overrides: dict = _f({}, "overrides of base_train_config, e.g. {seed: 0}")
    # --- rounds -------------------------------------------------------------------------------
    rounds: int = _f(1, "rounds of sample -> judge -> keep -> train")
    seed: int = _f(0, "seed of prompt order, natural requests, sampling and row choice")
    kinds: list = _f(["write", "chat", "opcode", "orchestra", "fim-line", "fim-expression"],
                     "train-split task kinds to sample (meta.task; FIM rows without fim:)")
    prompts_per_round: int = _f(0, "train-split prompts sampled a round at most (0 = all that "
                                "still lack rows)")
    natural_per_round: int = _f(200, "generated describe-the-sound requests a round, from the "
                                "manual's opcode pages of opcodes only the train split uses")
    samples: int = _f(4, "sampled answers per prompt")
    temperature: float = _f(0.8, "sampling temperature")
    max_new_tokens: int = _f(256, "token budget floor (raised to fit a train row's answer)")
    max_budget: int = _f(768, "token budget cap: longer answers are dropped in training anyway")
    # --- keeping ------------------------------------------------------------------------------
    per_prompt: int = _f(2, "kept answers that become rows per prompt (chat)")
    per_prompt_fim: int = _f(1, "kept answers that become rows per FIM prompt")
    fix_pairs: bool = _f(True, "a failed answer that does not compile and the kept answer "
                         "closest to it become a fix-the-bug row (the request --verify repairs "
                         "with)")
    fix_similarity: float = _f(0.8, "a fix row's kept answer must be this close (difflib) to "
                               "the row's own fixed code")
    earlier_share: float = _f(0.5, "share of the earlier rounds' rows trained again with a "
                              "round's new rows (round three of the shipped starter: 0.5)")
    # --- sampling through the runtime --------------------------------------------------------
    quant_type: str = _f("Q8_0", "GGUF the rounds sample from (what the main job serves)")
    sample_lora: bool = _f(False, "sample from the base's GGUF (converted once) with each "
                           "round's adapter as a GGUF LoRA (`serve --lora`) instead of a "
                           "merged export a round: much less converting, slightly other logits")
    parallel: int = _f(8, "sequences decoded together in one llama.cpp batch")
    n_ctx: int = _f(2048, "context per sequence")
    n_threads: int = _f(0, "CPU threads for llama.cpp (0 = its default)")
    n_gpu_layers: int = _f(0, "layers offloaded to the GPU (-1 = all): the same code path")
    judge_workers: int = _f(2, "sandbox renders at once")
    # --- training -----------------------------------------------------------------------------
    train_config: str = _f("cpu-smollm2-starter", "train config of each round")
    train_overrides: dict = _f({"tasks": [], "max_steps": 0, "epochs": 1.0,
                                "time_budget_minutes": 0, "max_length": 1024,
                                "learning_rate": 1e-4},
                               "overrides of train_config (init_adapter is set per round)")
    make_starter: bool = _f(False, "write <run>/improve/starter from the last round "
                            "(`train make-starter`)")

    def __post_init__(self):
        problems = []
        if self.rounds < 0 or self.samples < 1 or self.parallel < 1 or self.judge_workers < 1:
            problems.append("rounds >= 0, samples, parallel and judge_workers >= 1")
        if self.quant_type not in QUANT_TYPES:
            problems.append(f"quant_type={self.quant_type!r}: one of {', '.join(QUANT_TYPES)}")
        if not 0 <= self.earlier_share <= 1:
            problems.append(f"earlier_share={self.earlier_share}: a share from 0 to 1")
        if self.temperature <= 0:
            problems.append("temperature must be > 0: greedy answers repeat each other")
        if problems:
            raise ConfigError("bad self-training config:\n  " + "\n  ".join(problems))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _coerce(name: str, value, where: str):
    kind = typing.get_type_hints(SelfTrainConfig)[name]
    if kind is list and isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if kind is dict and isinstance(value, str):
        value = yaml.safe_load(value) or {}
    if kind in (list, dict):
        if not isinstance(value, kind):
            raise ConfigError(f"{where}: {name} must be a {kind.__name__}, got {value!r}")
        return value
    if kind is bool and isinstance(value, str):
        value = value.lower() in ("true", "1", "yes")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is str and value is None:
        value = ""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {name} must be {kind.__name__}, got {value!r}")
    return value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None
                ) -> SelfTrainConfig:
    """Defaults < YAML ``path`` (a file or a shipped config's name) < ``overrides``
    (``["key=value", ...]``), read as the train config is."""
    from csound_assistant.train.config import read_values, resolve_config_path

    if path is not None:
        path = resolve_config_path(path, CONFIG_DIR, "self-training config")
    known = {f.name for f in dataclasses.fields(SelfTrainConfig)}
    return SelfTrainConfig(**read_values(path, overrides, known, _coerce))
