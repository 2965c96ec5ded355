"""GGUF metadata keys are spelled once, in ``csound_assistant/constants.py``: each must be a key
gguf-py (the library llama.cpp's converters write GGUFs with) knows, or one of ours."""

from __future__ import annotations

import re

import gguf

from csound_assistant import constants

OURS = "csound_assistant."


def gguf_key_patterns() -> list[re.Pattern]:
    """Every key of ``gguf.Keys``; templated ones (``general.base_model.{id}.name``) match any
    index."""
    found, classes = [], [gguf.Keys]
    while classes:
        for value in vars(classes.pop()).values():
            if isinstance(value, type):
                classes.append(value)
            elif isinstance(value, str):
                found.append(re.compile(re.sub(r"\\\{\w+\\\}", r"\\w+", re.escape(value)) + "$"))
    return found


def test_every_gguf_key_is_spelled_as_gguf_py_spells_it():
    patterns = gguf_key_patterns()
    keys = {name: value for name, value in vars(constants).items()
            if name.startswith("GGUF_") and isinstance(value, str)}
    assert len(keys) > 20
    unknown = {name: value for name, value in keys.items() if not value.startswith(OURS)
               and not any(p.match(value) for p in patterns)}
    assert not unknown, f"not a gguf-py key (check gguf.Keys and fix constants.py): {unknown}"


def test_a_misspelled_key_is_caught():
    assert not any(p.match("tokenizer.ggml.eos_token") for p in gguf_key_patterns())
    assert any(p.match("general.base_model.0.name") for p in gguf_key_patterns())
