"""Which hardware and which method: QLoRA on CUDA, LoRA on CPU or Apple mps.

``choose_backend`` decides once, up front, and says why in one line; ``load_model`` loads the
base for that backend and wraps it with a fresh LoRA adapter.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from csound_assistant.errors import ConfigError

from .config import TrainConfig


@dataclass
class Backend:
    device: str  # "cuda", "cpu" or "mps" (the local CUDA device index is set separately)
    method: str  # "qlora" or "lora"
    dtype: str  # compute dtype: "bfloat16", "float16" or "float32"
    packing: str  # "packed" or "grouped"
    gradient_checkpointing: bool
    liger: bool
    reason: str
    local_rank: int = 0  # this process's GPU on its host
    world_size: int = 1
    rank: int = 0  # this process among all hosts' (what picks its share of the batches)
    fsdp: dict | None = None  # the FSDP2 layout (train/sharding.py) when sharded, not DDP

    @property
    def offload(self) -> bool:  # shards and the optimizer step live in CPU memory
        return bool(self.fsdp and self.fsdp["offload"])

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.local_rank}" if self.device == "cuda" else self.device

    def describe(self) -> str:
        layout = ("FSDP2" + (", parameters offloaded to CPU" if self.offload else "")
                  if self.fsdp else "DDP")
        where = self.device + (f" x{self.world_size} ({layout})"
                               if self.world_size > 1 or self.fsdp else "")
        extras = [f"{self.packing} batches"]
        if self.gradient_checkpointing:
            extras.append("gradient checkpointing")
        if self.liger:
            extras.append("Liger kernels")
        method = ("QLoRA (4-bit NF4 base, double quantization)" if self.method == "qlora"
                  else "LoRA")
        return f"{method} on {where}, {self.dtype} compute, {', '.join(extras)}: {self.reason}"


def _flag(value: str, default: bool) -> bool:
    return default if value == "auto" else value == "true"


def choose_backend(cfg: TrainConfig) -> Backend:
    import torch

    from .attention import varlen_available

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    device = cfg.device
    if device == "auto":
        device = "cuda" if cuda else "mps" if mps else "cpu"
    if device == "cuda" and not cuda:
        raise ConfigError("device=cuda, but torch sees no CUDA GPU "
                          f"(torch {torch.__version__}); use device=auto or cpu")
    if device == "mps" and not mps:
        raise ConfigError("device=mps, but this torch has no usable Apple mps backend")

    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    method = cfg.method
    if method == "auto":
        method = "qlora" if device == "cuda" and has_bnb else "lora"
    if method == "qlora" and device != "cuda":
        raise ConfigError(f"method=qlora needs a CUDA GPU (bitsandbytes 4-bit); this is {device}. "
                          "Use method=lora or auto")
    if method == "qlora" and not has_bnb:
        raise ConfigError("method=qlora needs bitsandbytes: pip install bitsandbytes==0.50.2")

    if device == "cuda":
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        if method == "qlora":
            reason = f"CUDA GPU {torch.cuda.get_device_name()} and bitsandbytes found"
        else:
            reason = ("CUDA GPU without bitsandbytes, so a 16-bit base" if not has_bnb
                      else "method=lora asked for")
        if dtype == "float16":
            reason += " (no bf16 on this GPU: fp16 compute, fp32 adapter, loss scaling)"
    else:
        dtype = "float32"  # bf16 matmuls are slow or missing on most CPUs and on mps
        reason = (f"{'no CUDA GPU' if not cuda else 'device=' + device}: LoRA on a full-"
                  "precision base (QLoRA's 4-bit kernels are CUDA-only)")

    no_varlen = varlen_available()
    packing = cfg.packing
    if packing == "auto":
        packing = "packed" if no_varlen is None else "grouped"
        if no_varlen:
            reason += f"; length-grouped batches ({no_varlen} for padding-free packing)"
    elif packing == "packed" and no_varlen and device == "cuda":
        raise ConfigError(f"packing=packed needs the varlen attention kernel: {no_varlen}")

    has_liger = importlib.util.find_spec("liger_kernel") is not None
    liger = _flag(cfg.liger, device == "cuda" and has_liger)
    if liger and (device != "cuda" or not has_liger):
        raise ConfigError("liger=true needs CUDA and liger-kernel "
                          "(pip install liger-kernel==0.8.5)")
    from .sharding import fsdp_layout

    layout = fsdp_layout()
    if layout and (cfg.save_every or cfg.init_adapter):
        raise ConfigError("under FSDP the recipe writes no checkpoints and starts no adapter "
                          "from a saved one: set save_every=0 and init_adapter='' (or launch "
                          "with a DDP config)")
    return Backend(
        device=device, method=method, dtype=dtype, packing=packing,
        gradient_checkpointing=_flag(cfg.gradient_checkpointing, device == "cuda"),
        liger=liger, reason=reason,
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        rank=int(os.environ.get("RANK", 0)),
        fsdp=layout,
    )


def load_model(base_dir, cfg: TrainConfig, backend: Backend, init_adapter=None):
    """The base model for ``backend``, wrapped with a new LoRA adapter (peft), or with
    ``init_adapter``'s weights (a starter.InitAdapter) to continue training it."""
    import torch
    from transformers import AutoModelForCausalLM

    from . import attention

    dtype = getattr(torch, backend.dtype)
    kwargs = {"dtype": dtype}
    if backend.packing == "packed" and backend.device == "cuda":
        kwargs["attn_implementation"] = attention.register()
    else:
        kwargs["attn_implementation"] = "sdpa"
    if backend.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype,
        )
    if backend.device == "cuda":
        kwargs["device_map"] = {"": backend.local_rank}
    if backend.liger:
        from liger_kernel.transformers import _apply_liger_kernel

        _apply_liger_kernel(_model_type(base_dir), rope=True, rms_norm=True, swiglu=True,
                            fused_linear_cross_entropy=True, cross_entropy=False)
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    if backend.device != "cuda":
        model.to(backend.torch_device)
    return adapt(model, cfg, backend, init_adapter)


def adapt(model, cfg: TrainConfig, backend: Backend, init_adapter=None):
    """Freeze the loaded base, turn on gradient checkpointing if asked, and wrap it with LoRA
    (fp32 adapter weights)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    model.config.use_cache = False
    for param in model.parameters():
        param.requires_grad_(False)
    if backend.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    targets = cfg.target_modules
    n_layers = model.config.num_hidden_layers
    if cfg.lora_layers > n_layers:
        raise ConfigError(f"lora_layers={cfg.lora_layers}, but the model has only {n_layers} "
                          "layers")
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        layers_to_transform=(list(range(n_layers - cfg.lora_layers, n_layers))
                             if cfg.lora_layers else None),
        bias="none", task_type="CAUSAL_LM",
    )
    try:
        model = (PeftModel.from_pretrained(model, init_adapter.dir, is_trainable=True)
                 if init_adapter else get_peft_model(model, lora))
    except ValueError as exc:
        raise ConfigError(f"target_modules {targets}: {exc}") from None
    # The adapter trains in fp32 (its optimizer states too), whatever the base's dtype.
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return model


def _model_type(base_dir) -> str:
    import json
    from pathlib import Path

    return json.loads((Path(base_dir) / "config.json").read_text())["model_type"]
