"""The pipeline's settings: ``csound-assistant pipeline [CONFIG]`` reads one YAML file into
``PipelineConfig`` (shipped ones live in ``csound_assistant/pipelines/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .export_settings import EXPORT_DEFAULTS

PIPELINE_CONFIGS = Path(__file__).parent / "pipelines"


@dataclass
class PipelineConfig:
    """Settings per stage. Defaults are the embedded default: SmolLM2-135M on 2 CPU cores."""

    run: str = "default"
    base: str | None = None  # GGUF file or HF folder; None = the embedded SmolLM2 GGUF
    base_dtype: str = "float32"
    # Comment-stripped answers: ~40% fewer tokens for the same Csound (data/csdcode.tidy_csd).
    data: dict = field(default_factory=lambda: {"limit": None, "strip_comments": True})
    split: dict = field(default_factory=lambda: {"seed": 0, "ratios": [0.9, 0.05, 0.05]})
    # Sized for 15 minutes on 2 cores: ~1 min base, ~4-5 min data, ~4 min training (a
    # 3.5-minute budget plus its evaluations), ~1.5 min export, ~2.5 min eval. The training
    # continues the starter adapter (train/starter): from the bare base, 4.5 minutes never
    # taught the model to write Csound that compiles (pipelines/smollm2-scratch.yaml).
    train: dict = field(default_factory=lambda: {
        "config": "cpu-smollm2-starter", "overrides": {"time_budget_minutes": 3.5}})
    # The export stage's settings are `csound-assistant export`'s defaults (export_settings.py).
    export: dict = field(default_factory=lambda: {
        "quant_types": list(EXPORT_DEFAULTS.quant_types), "gate": EXPORT_DEFAULTS.gate,
        "gate_tokens": EXPORT_DEFAULTS.gate_tokens})
    package: dict = field(default_factory=lambda: {"name": "csound-assistant"})
    # Greedy and without a repeat penalty: SmolLM2 spells numbers digit by digit, and Ollama's
    # default penalty (1.1) turned "sr = 44100" into "sr = 440" and worse (eval/README.md).
    eval: dict = field(default_factory=lambda: {"limit": 8, "max_new_tokens": 256})
    launcher: list[str] = field(default_factory=list)  # e.g. ["accelerate", "launch", ...]

    @classmethod
    def load(cls, path: str | Path | None) -> "PipelineConfig":
        import yaml

        from .errors import ConfigError

        if path is None:
            return cls()
        path = Path(path)
        if not path.exists() and (PIPELINE_CONFIGS / path.name).exists():
            path = PIPELINE_CONFIGS / path.name
        if not path.is_file():
            shipped = ", ".join(sorted(p.name for p in PIPELINE_CONFIGS.glob("*.yaml")))
            raise ConfigError(f"pipeline config not found: {path} (shipped: {shipped})")
        raw = yaml.safe_load(path.read_text()) or {}
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"{path}: unknown key(s) {', '.join(unknown)}; "
                f"known: {', '.join(cls.__dataclass_fields__)}"
            )
        return cls(**raw)
