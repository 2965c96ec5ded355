"""The fused LoRA forward on QLoRA's 4-bit layers, as the recipe runs it on CUDA (bf16 autocast):
lora_kernel=auto picks it, and it gives peft's logits and gradients to bf16 rounding.

    pytest -m gpu tests/test_gpu_fused_lora.py     # on a CUDA machine with bitsandbytes
    bash bench/gpu_session.sh tests                # on the device machine (carried wheels)
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="session", autouse=True)
def llama_cpp_guarded():
    """Overrides conftest's: this test loads no GGUF, and a GPU image may lack llama.cpp."""


def logits_and_grads(model, ids):
    model.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.float().detach(), {n: p.grad.float().clone()
                                         for n, p in model.named_parameters() if p.requires_grad}


def test_auto_fuses_qlora_layers_and_matches_peft(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from csound_assistant.train.backend import choose_backend, load_model
    from csound_assistant.train.config import load_config
    from csound_assistant.train.fused_lora import apply_lora_kernel, lora_layers, unfuse_lora

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1,
    )).save_pretrained(tmp_path / "base")
    cfg = load_config("codellama-7b-qlora", ["liger=false", "packing=grouped",
                                             "progress=false"])
    backend = choose_backend(cfg)
    model = load_model(tmp_path / "base", cfg, backend)
    plain, other = lora_layers(model)
    assert len(plain) == 2 * 4 and not other  # q/k/v/o of 2 layers, all 4-bit
    assert {type(m).__name__ for n, m in model.named_modules() if n in plain} == {"Linear4bit"}
    assert apply_lora_kernel(model, cfg.lora_kernel, backend) == "fused"
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    model.train()
    ids = torch.randint(0, 512, (2, 64), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(0))
    fused_logits, fused_grads = logits_and_grads(model, ids)
    unfuse_lora(model)
    peft_logits, peft_grads = logits_and_grads(model, ids)
    with torch.no_grad(), model.disable_adapter(), torch.autocast("cuda", dtype=torch.bfloat16):
        base_logits = model(input_ids=ids).logits.float()
    # bf16: the two round the adapter's sum differently (a CPU run of the same shape: 2% of
    # the adapter's effect on the logits, gradients at cosine 0.9994); a 1.5x scale error
    # moves the logits by 64% of the effect and the gradients to cosine 0.74.
    effect = (peft_logits - base_logits).abs().max()
    assert (fused_logits - peft_logits).abs().max() <= 0.1 * effect
    assert set(fused_grads) == set(peft_grads) and len(peft_grads) == 2 * len(plain)
    for name, grad in peft_grads.items():
        got = fused_grads[name]
        cosine = torch.nn.functional.cosine_similarity(got.flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99 and got.norm() == pytest.approx(grad.norm().item(), rel=3e-2), name
