"""A cheaper LoRA forward for peft's Linear and bnb Linear4bit layers, the same function.

peft computes ``result = base(x).clone(); result = result + lora_B(lora_A(dropout(x))) * scaling``:
besides the two small products, three full passes over the (tokens x out_features) output (the
clone, the scaling, the add), in the forward and again in the checkpointed re-forward and the
backward. Here the scaling goes on the rank-r intermediate and the add into the second product's
epilogue (``addmm`` with beta 1): one pass instead of four. Dropout stays where peft puts it.

    from fused_lora import fuse_lora; fuse_lora(peft_model)     # bench/train_throughput.py
"""

from __future__ import annotations

import types


def _forward(self, x, *args, **kwargs):
    import torch

    result = self.base_layer(x, *args, **kwargs)
    if self.disable_adapters or self.merged:
        return result
    out_features = result.shape[-1]
    flat = result.reshape(-1, out_features)
    for name in self.active_adapters:
        if name not in self.lora_A:
            continue
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        h = self.lora_dropout[name](x).reshape(-1, a.shape[1])
        h = torch.nn.functional.linear(h, a) * self.scaling[name]
        flat = torch.addmm(flat, h, b.t())
    return flat.reshape(result.shape)


def fuse_lora(model) -> int:
    """Give every vanilla LoRA Linear / Linear4bit layer of ``model`` the fused forward;
    returns how many."""
    from peft.tuners.lora.layer import Linear

    classes = [Linear]
    try:
        from peft.tuners.lora.bnb import Linear4bit
        classes.append(Linear4bit)
    except ImportError:  # no bitsandbytes
        pass
    count = 0
    for module in model.modules():
        if isinstance(module, tuple(classes)) and not module.lora_variant:
            module.forward = types.MethodType(_forward, module)
            count += 1
    return count


def unfuse_lora(model) -> None:
    for module in model.modules():
        if "forward" in vars(module) and getattr(module.forward, "__func__", None) is _forward:
            del module.forward
