"""Training that outgrows one card: FSDP2 (PyTorch's ``fully_shard``) through accelerate.

The recipe shards when ``accelerate launch`` runs it with an FSDP config (``distributed_type:
FSDP``, ``fsdp_version: 2``; the layouts ship in ``train/configs/accelerate/``). accelerate
launches the processes and passes the layout; the recipe calls ``fully_shard`` itself, since
accelerate's own FSDP preparation runs on GPUs only and the same code must run on CPUs too:

    accelerate launch --config_file train/configs/accelerate/fsdp2-2gpu.yaml \
        -m csound_assistant.cli train run -c codellama-34b-qlora-fsdp --run big

Each decoder layer is its own FSDP unit: a rank keeps 1/N of every weight (the NF4 base in its
bf16 storage words, LoRA's fp32 weights, their gradients and AdamW's states) and gathers one
layer at a time for its forward and backward. With ``fsdp_offload_params`` the shards live in
CPU memory and the optimizer steps there, so even one GPU holds one layer at a time.
"""

from __future__ import annotations

import contextlib
import os

from csound_assistant.errors import ConfigError


def fsdp_layout() -> dict | None:
    """What ``accelerate launch`` asked for (the environment it derives from its config file),
    or None when it did not ask to shard. FSDP1 is refused: its flat parameters cannot hold
    bitsandbytes' 4-bit weights beside LoRA's fp32 ones."""
    env = os.environ
    if env.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    version = env.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(f"accelerate's config asks for FSDP version {version}; this recipe "
                          "shards with FSDP2: set `fsdp_version: 2` under fsdp_config (see "
                          "train/configs/accelerate/fsdp2-2gpu.yaml)")
    if env.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
        raise ConfigError(f"accelerate's config sets mixed_precision="
                          f"{env['ACCELERATE_MIXED_PRECISION']}; set `mixed_precision: 'no'`: "
                          "the recipe runs its own bf16 autocast over fp32 LoRA weights")
    layer = env.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    return {"offload": env.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true",
            "layer_classes": [c.strip() for c in layer.split(",") if c.strip()],
            "reshard_after_forward":
                env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true"}


def shard(model, layout: dict):
    """``fully_shard`` each decoder layer, then the root (embeddings, final norm, head): a rank
    keeps 1/N of every parameter and gathers one unit at a time. The 4-bit weights shard because
    they are stored in bf16 words (``bnb_4bit_quant_storage``); bitsandbytes finds their
    quantization state on the module after each gather. Call before building the optimizer:
    the sharded parameters are new objects."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    classes = layout["layer_classes"] or [_decoder_layer_class(model)]
    units = [m for m in model.modules() if type(m).__name__ in classes]
    if not units:
        raise ConfigError(f"fsdp_transformer_layer_cls_to_wrap {classes}: no such module in "
                          f"{type(model).__name__}; name its decoder layer class "
                          f"({_decoder_layer_class(model)})")
    kwargs = {"offload_policy": CPUOffloadPolicy() if layout["offload"] else OffloadPolicy()}
    for unit in units:
        fully_shard(unit, reshard_after_forward=layout["reshard_after_forward"], **kwargs)
    fully_shard(model, **kwargs)
    return model


def _decoder_layer_class(model) -> str:
    names = getattr(model, "_no_split_modules", None) or ["LlamaDecoderLayer"]
    return names[0]


def gradient_sync(model, sync: bool):
    """The counterpart of DDP's ``no_sync``: skip the reduce-scatter of micro-batches that are
    not a step's last."""
    model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def full_adapter_state(model) -> dict:
    """Every rank gathers the LoRA weights whole (a collective: call it on all ranks)."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, value in model.state_dict().items():
        if "lora_" in name:
            value = value.full_tensor() if isinstance(value, DTensor) else value
            state[name] = value.detach().cpu()
    return state


def local_fraction(model) -> float:
    """The share of the trainable parameters' elements this rank holds (1/N when sharded)."""
    from torch.distributed.tensor import DTensor

    mine = whole = 0
    for param in model.parameters():
        if param.requires_grad:
            whole += param.numel()
            mine += param.to_local().numel() if isinstance(param, DTensor) else param.numel()
    return mine / whole
