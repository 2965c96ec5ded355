"""A Continue ``config.yaml`` (schema v1) for the assistant: ``csound-assistant editor continue``.

Three model entries, because Continue sends different requests per role and provider:
- chat/edit/apply on the project's server: ``provider: openai``, ``apiBase`` ending in ``/v1``
  (Continue appends ``chat/completions`` to it);
- autocomplete on the project's server: a separate entry with
  ``useLegacyCompletionsEndpoint: true`` (``/v1/completions``) and ``promptTemplates.autocomplete``
  rendered from the prompt format's FIM tokens. Continue otherwise guesses a FIM template from the
  model name and sends chat text; and on a chat entry the legacy flag would make chat send only the
  last message to ``/v1/completions``, hence two entries;
- Ollama (``provider: ollama``, model ``csound-assistant``) for every role: Continue reads
  ``/api/show``, enables FIM when the template mentions ``.Suffix`` and sends ``suffix`` to
  ``/api/generate``; the Modelfile's TEMPLATE does the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from csound_assistant import __version__
from csound_assistant.artifacts import atomic_write
from csound_assistant.constants import DEFAULT_MODEL_NAME
from csound_assistant.errors import ArtifactError, ConfigError
from csound_assistant.prompt_format import PromptFormat, get_format

CONFIG_NAME = "config.yaml"
SCHEMA = "v1"
DEFAULT_SERVER_URL = "http://127.0.0.1:8080"
DEFAULT_OLLAMA_URL = "http://localhost:11434"
# Continue's Handlebars variables (triple braces: inserted verbatim, not HTML-escaped).
PREFIX_VAR = "{{{prefix}}}"
SUFFIX_VAR = "{{{suffix}}}"
ROLES = ("chat", "edit", "apply", "autocomplete", "embed", "rerank", "summarize")
TARGETS = ("server", "ollama")


def autocomplete_template(prompt_format: PromptFormat) -> str:
    """The FIM prompt as a Continue template: the server receives exactly the training text."""
    return prompt_format.fim_prompt(PREFIX_VAR, SUFFIX_VAR)


def render_autocomplete(template: str, prefix: str, suffix: str) -> str:
    """What Continue sends for ``template`` (triple-brace variables are inserted verbatim)."""
    return template.replace(PREFIX_VAR, prefix).replace(SUFFIX_VAR, suffix)


def api_base(server_url: str) -> str:
    """The OpenAI ``apiBase`` Continue needs: the server URL with ``/v1`` (FACTS.md)."""
    url = server_url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"server URL {server_url!r} must start with http:// or https://")
    return url if url.endswith("/v1") else url + "/v1"


def continue_config(*, server_url: str = DEFAULT_SERVER_URL,
                    ollama_model: str = DEFAULT_MODEL_NAME, prompt_format: PromptFormat | str,
                    model_name: str = DEFAULT_MODEL_NAME, api_key: str | None = None,
                    ollama_url: str = DEFAULT_OLLAMA_URL, targets=TARGETS,
                    context_length: int = 4096, chat_max_tokens: int = 1024,
                    autocomplete_max_tokens: int = 128, temperature: float = 0.2,
                    top_p: float = 0.95) -> dict:
    """The config as a dict (see the module docstring for why each entry is shaped so)."""
    fmt = get_format(prompt_format) if isinstance(prompt_format, str) else prompt_format
    unknown = set(targets) - set(TARGETS)
    if unknown or not targets:
        raise ConfigError(f"targets must be some of {', '.join(TARGETS)}; got {list(targets)}")
    from csound_assistant.modelfiles.render import stop_strings

    stops = stop_strings(fmt)
    chat_options = {"contextLength": context_length, "maxTokens": chat_max_tokens,
                    "temperature": temperature, "topP": top_p, "stop": stops}
    models = []
    if "server" in targets:
        base = {"provider": "openai", "model": model_name, "apiBase": api_base(server_url),
                "apiKey": api_key or "not-needed"}
        models.append({
            "name": f"{model_name} (server)", **base, "roles": ["chat", "edit", "apply"],
            "defaultCompletionOptions": dict(chat_options),
            "chatOptions": {"baseSystemMessage": fmt.system},
        })
        models.append({
            "name": f"{model_name} autocomplete (server)", **base, "roles": ["autocomplete"],
            "useLegacyCompletionsEndpoint": True,
            "promptTemplates": {"autocomplete": autocomplete_template(fmt)},
            "defaultCompletionOptions": {
                "contextLength": context_length, "maxTokens": autocomplete_max_tokens,
                "temperature": temperature, "stop": [fmt.fim_end, *stops]},
        })
    if "ollama" in targets:
        models.append({
            "name": f"{ollama_model} (Ollama)", "provider": "ollama", "model": ollama_model,
            "apiBase": ollama_url.rstrip("/"),
            "roles": ["chat", "edit", "apply", "autocomplete"],
            "defaultCompletionOptions": dict(chat_options),
        })
    for model in models:
        model["defaultCompletionOptions"]["stop"] = list(
            dict.fromkeys(model["defaultCompletionOptions"]["stop"]))
    return {"name": "csound-assistant", "version": __version__, "schema": SCHEMA,
            "models": models}


def validate_continue_config(config: dict) -> list[str]:
    """Problems that would make Continue reject or misuse the config (empty when fine)."""
    problems = []
    for key in ("name", "version", "schema"):
        if not config.get(key):
            problems.append(f"missing required top-level key {key!r}")
    if config.get("schema") != SCHEMA:
        problems.append(f"schema must be {SCHEMA!r}, got {config.get('schema')!r}")
    models = config.get("models") or []
    if not models:
        problems.append("no models")
    for i, model in enumerate(models):
        where = f"models[{i}] ({model.get('name', '?')})"
        for key in ("name", "provider", "model"):
            if not model.get(key):
                problems.append(f"{where}: missing required key {key!r}")
        bad = set(model.get("roles", [])) - set(ROLES)
        if bad:
            problems.append(f"{where}: unknown roles {sorted(bad)}")
        if model.get("provider") == "openai" and not str(model.get("apiBase", "")).endswith("/v1"):
            problems.append(f"{where}: an openai apiBase must end in /v1")
        if model.get("provider") == "openai" and "autocomplete" in model.get("roles", []):
            template = (model.get("promptTemplates") or {}).get("autocomplete", "")
            if PREFIX_VAR not in template or SUFFIX_VAR not in template:
                problems.append(f"{where}: autocomplete needs promptTemplates.autocomplete with "
                                f"{PREFIX_VAR} and {SUFFIX_VAR}")
            if not model.get("useLegacyCompletionsEndpoint"):
                problems.append(f"{where}: autocomplete needs useLegacyCompletionsEndpoint: true")
            if {"chat", "edit"} & set(model.get("roles", [])):
                problems.append(f"{where}: the legacy endpoint would break chat: split the entry")
    return problems


def write_continue_config(out_path: str | os.PathLike, *, server_url: str = DEFAULT_SERVER_URL,
                          ollama_model: str = DEFAULT_MODEL_NAME,
                          prompt_format: PromptFormat | str, force: bool = False,
                          **options) -> Path:
    """Write ``config.yaml`` atomically; refuse to replace an existing file unless ``force``.

    ``options`` go to ``continue_config`` (model_name, api_key, ollama_url, targets, ...).
    """
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / CONFIG_NAME
    if out_path.exists() and not force:
        raise ArtifactError(f"{out_path} already exists; pass --force to replace it")
    config = continue_config(server_url=server_url, ollama_model=ollama_model,
                             prompt_format=prompt_format, **options)
    problems = validate_continue_config(config)
    if problems:  # a bug here, not bad input: every field above is generated
        raise ConfigError("generated Continue config is invalid: " + "; ".join(problems))
    header = (f"# Continue config for csound-assistant (prompt format "
              f"{config_format_name(prompt_format)}).\n"
              "# Copy to ~/.continue/config.yaml, or merge its `models` into yours.\n"
              "# Start the server first:  csound-assistant serve MODEL.gguf\n")
    with atomic_write(out_path) as fh:
        fh.write(header)
        yaml.safe_dump(config, fh, sort_keys=False, allow_unicode=True, width=100)
    return out_path


def config_format_name(prompt_format: PromptFormat | str) -> str:
    return prompt_format if isinstance(prompt_format, str) else prompt_format.name
