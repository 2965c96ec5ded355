"""The fused LoRA forward (train/fused_lora.py) is peft's function: the same loss and gradients
on a tiny random Llama, with and without dropout; which layers it takes; the recipe's setting."""

from __future__ import annotations

import json

import pytest
import torch

from csound_assistant.errors import ConfigError
from csound_assistant.train.fused_lora import (
    apply_lora_kernel, choose_lora_kernel, fuse_lora, lora_layers, unfuse_lora,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_lora(dropout: float = 0.0, **lora_kw):
    """A random 2-layer Llama with LoRA on every projection; B is non-zero so the adapter
    changes the output (peft initialises it to 0)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=dropout, target_modules=TARGETS, **lora_kw))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    return model


def loss_and_grads(model, ids, seed=1):
    model.zero_grad()
    torch.manual_seed(seed)  # dropout draws the same masks in both runs
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.requires_grad}


@pytest.mark.parametrize("dropout,mode", [(0.0, "train"), (0.1, "eval"), (0.1, "train")])
def test_fused_forward_and_backward_equal_peft(dropout, mode):
    model = tiny_lora(dropout)
    getattr(model, mode)()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    peft_loss, peft_grads = loss_and_grads(model, ids)
    assert fuse_lora(model) == 2 * len(TARGETS)
    fused_loss, fused_grads = loss_and_grads(model, ids)
    assert fused_loss == pytest.approx(peft_loss, rel=1e-5)
    assert set(fused_grads) == set(peft_grads) and len(peft_grads) == 4 * len(TARGETS)
    for name, grad in peft_grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    # The adapter matters here (so equality is not two copies of the base model's loss).
    with model.disable_adapter(), torch.no_grad():
        base_loss = model(input_ids=ids, labels=ids).loss.item()
    assert abs(base_loss - peft_loss) > 1e-3
    # disabled adapters go through peft's own forward, and unfusing restores it
    unfuse_lora(model)
    assert not any("forward" in vars(m) for m in model.modules())
    assert loss_and_grads(model, ids)[0] == pytest.approx(peft_loss, rel=1e-6)


def test_fused_forward_matches_peft_for_a_bf16_base_with_an_fp32_adapter():
    """No autocast, mixed dtypes (the recipe's adapter is fp32 on a 16-bit base): peft casts x
    to the adapter's dtype and adds in fp32; the fused forward must do the same."""
    model = tiny_lora()
    for name, param in model.named_parameters():
        param.data = param.data.float() if "lora_" in name else param.data.bfloat16()
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        fuse_lora(model)
        got = model(input_ids=ids).logits
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)


def test_auto_fuses_plain_lora_on_cuda_only_and_fused_refuses_other_layers():
    plain = tiny_lora()
    assert choose_lora_kernel("auto", plain, "cuda") == "fused"
    assert choose_lora_kernel("auto", plain, "cpu") == "peft"
    assert choose_lora_kernel("auto", plain, "cuda", sharded=True) == "peft"  # not measured
    assert choose_lora_kernel("peft", plain, "cuda") == "peft"
    assert choose_lora_kernel("fused", plain, "cpu") == "fused"
    dora = tiny_lora(use_dora=True)
    assert lora_layers(dora) == ([], lora_layers(plain)[0])
    assert choose_lora_kernel("auto", dora, "cuda") == "peft"
    with pytest.raises(ConfigError, match="14 LoRA layers are not plain.*lora_kernel: peft"):
        choose_lora_kernel("fused", dora, "cuda")


def test_apply_lora_kernel_follows_the_backend():
    from csound_assistant.train.backend import Backend

    cpu = Backend("cpu", "lora", "float32", "grouped", False, False, "test")
    model = tiny_lora()
    assert apply_lora_kernel(model, "auto", cpu) == "peft"
    assert not any("forward" in vars(m) for m in model.modules())
    assert apply_lora_kernel(model, "fused", cpu) == "fused"
    assert sum("forward" in vars(m) for m in model.modules()) == 2 * len(TARGETS)


def test_the_recipe_trains_the_same_adapter_with_either_kernel(tiny_model_dir, tmp_path):
    """Two steps of the real recipe on CPU: lora_kernel=fused gives peft's losses and adapter."""
    from safetensors.torch import load_file

    from csound_assistant.train.config import load_config
    from csound_assistant.train.recipe import train
    from train_helpers import make_work

    adapters, metrics = {}, {}
    for kernel in ("peft", "fused"):
        work = make_work(tmp_path / kernel, tiny_model_dir)
        cfg = load_config(None, ["max_length=256", "batch_tokens=512", "max_batch_rows=4",
                                 "lora_dropout=0.1", "progress=false", "max_steps=2",
                                 "save_every=0", "warmup_steps=1", f"lora_kernel={kernel}"])
        out = train(cfg, work, log=lambda *a, **k: None)
        adapters[kernel] = load_file(out / "adapter_model.safetensors")
        metrics[kernel] = json.loads((out / "metrics.json").read_text())
    assert metrics["fused"]["lora_kernel"] == "fused" and metrics["peft"]["lora_kernel"] == "peft"
    for a, b in zip(metrics["peft"]["train_loss"], metrics["fused"]["train_loss"], strict=True):
        assert b[1] == pytest.approx(a[1], rel=1e-5)
    assert metrics["fused"]["val_loss_end"] == pytest.approx(metrics["peft"]["val_loss_end"],
                                                             rel=1e-5)
    for name, weight in adapters["peft"].items():
        torch.testing.assert_close(adapters["fused"][name], weight, rtol=1e-4, atol=1e-6,
                                   msg=name)
