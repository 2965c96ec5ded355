"""What every model under evaluation answers with (``Generation``), and the prompt format a GGUF
is asked in: shared by ``models.py`` (llama-cpp-python, OpenAI servers) and ``runtime_model.py``
(the server's own path), so that the runtime-backed model need not import ``models.py``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from csound_assistant.constants import GGUF_GENERAL_NAME
from csound_assistant.prompt_format import PromptFormat, format_for_model, get_format
from csound_assistant.stage_records import recorded_format_name


@dataclass
class Generation:
    text: str
    latency: float  # seconds for the whole answer
    tokens: int  # generated tokens (0 when the server does not say)
    prompt_tokens: int = 0
    verified: str | None = None  # RuntimeModel with --verify: how the answer was chosen
    first_text: str | None = None  # ... and the first candidate, what an unverified server says
    repairs: int = 0


def format_for_gguf(path: Path, metadata: dict) -> PromptFormat:
    """The prompt format named by the stage folder holding the GGUF (an export or package),
    else the default for the model's name."""
    name = recorded_format_name(path.parent)
    if name:
        return get_format(name)
    return format_for_model(f"{metadata.get(GGUF_GENERAL_NAME, '')} {path.name}")
