"""bench/soup.py: the mean of several LoRA adapters, as one exact LoRA."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from convert_helpers import make_adapter

ROOT = Path(__file__).resolve().parents[1]


def _soup_module():
    spec = importlib.util.spec_from_file_location("soup", ROOT / "bench" / "soup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _merged(base: Path, adapter: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload().state_dict()


def test_soup_is_the_mean_of_the_merged_models(tiny_model_dir, tmp_path):
    soup = _soup_module()
    a = make_adapter(tiny_model_dir, tmp_path / "a", r=4, seed=1)
    b = make_adapter(tiny_model_dir, tmp_path / "b", r=8, seed=2)  # other ranks average too
    info = soup.soup(tmp_path / "s", [a, b])
    assert info["rank"] == 12
    config = json.loads((tmp_path / "s" / "adapter_config.json").read_text())
    assert config["r"] == 12 and config["lora_alpha"] == 12
    ma, mb, ms = (_merged(tiny_model_dir, d) for d in (a, b, tmp_path / "s"))
    changed = 0
    for name, weight in ms.items():
        mean = (ma[name] + mb[name]) / 2
        assert (weight - mean).abs().max() < 1e-5, name
        changed += bool((ma[name] - mb[name]).abs().max() > 1e-4)
    assert changed > 0  # the two adapters really differ, so the mean tests something
    assert (tmp_path / "s" / "prompt_format.json").read_text() == \
        (a / "prompt_format.json").read_text()


def test_soup_refuses_adapters_that_cannot_be_averaged(tiny_model_dir, tmp_path):
    soup = _soup_module()
    a = make_adapter(tiny_model_dir, tmp_path / "a", seed=1)
    b = make_adapter(tiny_model_dir, tmp_path / "b", seed=2, prompt_format="llama2-codellama")
    with pytest.raises(SystemExit, match="prompt format"):
        soup.soup(tmp_path / "s", [a, b])
    assert not (tmp_path / "s").exists()
