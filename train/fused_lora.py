"""LoRA's forward in fewer passes over the output: the recipe's ``lora_kernel`` setting.

peft adds an adapter as ``result = base(x); result = result + lora_B(lora_A(dropout(x))) *
scaling``: besides the two rank-r products, two full passes over the (tokens x out_features)
output (the scaling and the add), in the forward, the checkpointed re-forward and the backward.
Here the scaling goes on the rank-r intermediate and the add into the second product's epilogue
(``addmm`` with beta 1). Dropout is peft's own module, drawn in the same order, so the function
is peft's (tests/test_fused_lora.py). CodeLlama-7B QLoRA at dropout 0: 1.10x the tokens/s
(bench/NOTES.md, "Fused LoRA").

    kernel = apply_lora_kernel(model, cfg.lora_kernel, backend)     # train/recipe.py
"""

from __future__ import annotations

import types

from csound_assistant.errors import ConfigError


def _forward(self, x, *args, **kwargs):
    import torch
    from torch.nn.functional import linear

    if self.disable_adapters or self.merged or "adapter_names" in kwargs:
        return type(self).forward(self, x, *args, **kwargs)  # peft's own handles these
    result = self.base_layer(x, *args, **kwargs)
    autocast = torch.is_autocast_enabled(x.device.type)  # then addmm casts its operands
    flat = result.reshape(-1, result.shape[-1])
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        h = self.lora_dropout[name](x if autocast else x.to(a.dtype))
        h = linear(h.reshape(-1, a.shape[1]), a) * self.scaling[name]
        if autocast or h.dtype == flat.dtype:
            flat = torch.addmm(flat, h, b.t())
        else:  # e.g. a bf16 base with an fp32 adapter, no autocast: peft's promotion
            flat = (flat + linear(h, b)).to(flat.dtype)
    return flat.reshape(result.shape)


def _fusable_classes() -> tuple:
    from peft.tuners.lora.layer import Linear

    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # no bitsandbytes
        return (Linear,)
    return (Linear, Linear4bit)


def lora_layers(model) -> tuple[list[str], list[str]]:
    """The names of ``model``'s LoRA layers: (plain Linear/Linear4bit LoRA, any other kind:
    DoRA and other variants, a LoRA bias, embeddings, convolutions)."""
    from peft.tuners.lora.layer import LoraLayer

    classes = _fusable_classes()
    plain, other = [], []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        vanilla = (type(module) in classes and not module.lora_variant
                   and not any(module.lora_bias.values()))
        (plain if vanilla else other).append(name)
    return plain, other


def choose_lora_kernel(setting: str, model, device: str, sharded: bool = False) -> str:
    """``fused`` or ``peft`` for ``setting`` (auto, peft, fused); auto fuses on CUDA, where
    it is measured, unless a layer is not plain LoRA or FSDP shards the model (not measured)."""
    plain, other = lora_layers(model)
    if setting == "fused" and other:
        raise ConfigError(
            f"lora_kernel=fused: {len(other)} LoRA layers are not plain Linear/Linear4bit LoRA "
            f"(first: {other[0]}); set lora_kernel: peft or auto")
    if setting == "auto":
        return "fused" if device == "cuda" and not sharded and plain and not other else "peft"
    return setting


def apply_lora_kernel(model, setting: str, backend) -> str:
    """Give ``model``'s LoRA layers the kernel ``setting`` asks for on ``backend``; returns
    the one used."""
    kernel = choose_lora_kernel(setting, model, backend.device, sharded=bool(backend.fsdp))
    if kernel == "fused":
        fuse_lora(model)
    return kernel


def fuse_lora(model) -> int:
    """Give every plain LoRA Linear / Linear4bit layer of ``model`` the fused forward;
    returns how many."""
    plain, _ = lora_layers(model)
    modules = dict(model.named_modules())
    for name in plain:
        modules[name].forward = types.MethodType(_forward, modules[name])
    return len(plain)


def unfuse_lora(model) -> None:
    """Back to peft's own forward everywhere."""
    for module in model.modules():
        if getattr(vars(module).get("forward"), "__func__", None) is _forward:
            del module.forward
