"""Server settings: one dataclass of defaults; CLI options > environment > defaults.

Every field can be set from the environment as ``CSOUND_ASSISTANT_<FIELD>`` (upper case), e.g.
``CSOUND_ASSISTANT_API_KEY``; the ``serve`` command passes its options on top.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from csound_assistant.constants import DEFAULT_MODEL_NAME
from csound_assistant.errors import ConfigError

ENV_PREFIX = "CSOUND_ASSISTANT_"
DECODERS = ("plain", "csound")  # runtime/decoder.py


@dataclass
class Settings:
    model_path: Path | None = field(default=None, metadata={"help": "GGUF model file"})
    lora_path: Path | None = field(default=None, metadata={"help": "GGUF LoRA adapter"})
    model_name: str = field(default=DEFAULT_MODEL_NAME, metadata={"help": "name clients use"})
    prompt_format: str | None = field(default=None, metadata={
        "help": "project prompt format (chatml, llama2-codellama): its chat template and FIM "
                "tokens replace the GGUF's; required when the GGUF has no chat template"})
    host: str = field(default="127.0.0.1", metadata={"help": "bind address"})
    port: int = field(default=8080, metadata={"help": "TCP port"})
    api_key: str | None = field(default=None, metadata={"help": "require this key (Bearer)"})
    cors_origins: str | None = field(default=None, metadata={
        "help": "comma-separated web origins whose pages may call the API (browser editors, "
                "e.g. https://ide.example.org; vscode-webview://* for every origin of a "
                "scheme), or *; default none: pages of other origins are refused (403)"})
    allowed_hosts: str | None = field(default=None, metadata={
        "help": "comma-separated host names (beyond localhost, 127.0.0.1, [::1] and the bind "
                "address) requests may address in their Host header, *.example.org for its "
                "subdomains, or * for any; default none (guards against DNS rebinding)"})
    n_ctx: int = field(default=4096, metadata={"help": "context length in tokens"})
    n_threads: int | None = field(default=None, metadata={"help": "CPU threads (default: all)"})
    n_gpu_layers: int = field(default=0, metadata={"help": "layers offloaded to the GPU (-1 all)"})
    max_queue: int = field(default=16, metadata={"help": "requests waiting beyond the running one"})
    request_timeout: float = field(default=120.0,
                                   metadata={"help": "seconds per request, queue included"})
    max_tokens_limit: int = field(default=2048, metadata={"help": "largest max_tokens accepted"})
    default_max_tokens: int = field(default=256, metadata={"help": "max_tokens when not given"})
    max_body_bytes: int = field(default=2_000_000, metadata={"help": "request body limit (413)"})
    cache_slots: int = field(default=4, metadata={
        "help": "saved KV states for prompt-prefix reuse across files (0: only the last prompt)"})
    parallel: int = field(default=1, metadata={
        "help": "requests decoded together in one batch (1: one at a time)"})
    feedback_db: Path | None = field(default=None, metadata={"help": "record completions here"})
    check_workers: int = field(default=2, metadata={"help": "parallel Csound sandbox checks"})
    repair: int = field(default=0, metadata={
        "help": "rounds of sending a non-streamed chat answer whose Csound does not compile "
                "back to the model with Csound's error (0: off)"})
    verify: int = field(default=0, metadata={
        "help": "candidates made for a chat answer, the first whose Csound plays returned "
                "(0: off; runtime/verify.py)"})
    verify_seconds: float = field(default=60.0, metadata={
        "help": "seconds one verified request may take, generation and checks together"})
    decoder: str = field(default="csound", metadata={
        "help": "csound: only real opcodes (and calls that fit their synopses) can be sampled "
                "where Csound expects one (runtime/decoder.py); plain: the model's own choice"})
    opcode_reference: bool = field(default=True, metadata={
        "help": "add the manual's synopses of the opcodes a chat request names, for a model "
                "trained with them (its GGUF says so); false serves plain prompts"})

    def __post_init__(self):
        for name in ("model_path", "lora_path", "feedback_db"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))
        problems = []
        for name in ("port", "n_ctx", "max_queue", "max_tokens_limit", "default_max_tokens",
                     "max_body_bytes", "check_workers", "parallel"):
            if getattr(self, name) < (0 if name == "max_queue" else 1):
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.repair <= 5:
            problems.append(f"repair must be 0 to 5 rounds, got {self.repair}")
        if not 0 <= self.verify <= 8:
            problems.append(f"verify must be 0 to 8 candidates, got {self.verify}")
        if self.decoder not in DECODERS:
            problems.append(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.verify_seconds <= 0:
            problems.append(f"verify_seconds must be > 0, got {self.verify_seconds}")
        if self.cache_slots < 0:
            problems.append(f"cache_slots must be >= 0, got {self.cache_slots}")
        if self.request_timeout <= 0:
            problems.append(f"request_timeout must be > 0, got {self.request_timeout}")
        if self.default_max_tokens > self.max_tokens_limit:
            problems.append(f"default_max_tokens ({self.default_max_tokens}) exceeds "
                            f"max_tokens_limit ({self.max_tokens_limit})")
        for origin in self.allowed_origins():
            if origin.lower() == "null":
                problems.append("cors_origins: 'null' cannot be allowed: it is also the origin "
                                "of sandboxed iframes any web page can create")
            elif origin != "*" and not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s*]+|"
                                                    r"[a-zA-Z][a-zA-Z0-9+.-]*://\*", origin):
                problems.append(f"cors_origins: {origin!r} is not an origin (scheme://host[:port], "
                                "no path), scheme://* or *")
        for host in self.allowed_host_list():
            if host != "*" and not _is_host(host):
                problems.append(f"allowed_hosts: {host!r} is not a host name (no scheme, port "
                                "or path), *.domain or *")
        if problems:
            raise ConfigError("bad server settings: " + "; ".join(problems))

    def allowed_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in (self.cors_origins or "").split(",") if o.strip()]

    def allowed_host_list(self) -> list[str]:
        return [h.strip().strip("[]") if h.strip().startswith("[") else h.strip()
                for h in (self.allowed_hosts or "").split(",") if h.strip()]

    @classmethod
    def from_env(cls, environ=None, **overrides) -> Settings:
        """Defaults, replaced by ``CSOUND_ASSISTANT_*`` variables, replaced by ``overrides``
        (values of None in ``overrides`` mean "not given")."""
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return cls(**values)

    def public(self) -> dict:
        """Settings safe to show over HTTP (no key)."""
        out = dataclasses.asdict(self)
        out["api_key"] = bool(self.api_key)
        return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}


def _is_host(host: str) -> bool:
    """A host name, an IP address, or ``*.`` and a domain."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(re.fullmatch(r"(\*\.)?[a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*\.?", host))


def _parse(f: dataclasses.Field, raw: str):
    kind = str(f.type)
    if kind.startswith("bool"):
        if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"environment variable {ENV_PREFIX}{f.name.upper()}={raw!r} "
                              "is not true or false")
        return raw.lower() in ("1", "true", "yes")
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {ENV_PREFIX}{f.name.upper()}={raw!r} is not a number"
        ) from None
    return raw
