"""Tiny peft LoRA adapters for the convert stage's tests, laid out as `train` writes them."""

from __future__ import annotations

import json
from pathlib import Path

from csound_assistant.prompt_format import get_format
from csound_assistant.stage_records import Adapter

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out_dir: Path, *, r: int = 4, b_std: float = 0.02,
                 seed: int = 0, prompt_format: str = "chatml") -> Path:
    """A LoRA adapter on ``base_dir`` with non-zero A and B (so merging changes the logits).

    ``b_std`` sets the size of the update: small keeps the base model's behaviour (it still
    answers and stops), large makes the difference obvious.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0,
                        task_type="CAUSAL_LM", init_lora_weights=True)
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, b_std)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    fmt = get_format(prompt_format)
    (out_dir / "prompt_format.json").write_text(json.dumps(fmt.to_record(), indent=2))
    Adapter.write(out_dir, base_dir=base_dir, splits_dir=None, method="lora",
                  config={"lora_r": r, "lora_alpha": 2 * r, "target_modules": TARGETS},
                  prompt_format=prompt_format, metrics={})
    return out_dir
