"""Padding-free attention: PyTorch's varlen flash-attention kernel as a transformers attention.

``torch.nn.attention.varlen.varlen_attn`` (CUDA) takes all documents of a packed row as one
(tokens, heads, dim) tensor plus cumulative boundaries, and attends causally inside each
document only. Registered under the name ``varlen``; the collator passes the boundaries as
``cu_seq_lens_q``/``max_length_q`` (the keyword names transformers' flash-attention uses), which
the model forwards to every attention layer. No mask is built for a packed row; a padded
batch (no boundaries given) falls back to SDPA with transformers' usual mask.
"""

from __future__ import annotations

import inspect

NAME = "varlen"


def varlen_available() -> str | None:
    """None when the kernel can be used, else why not."""
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        return "the flash-attention kernel needs compute capability 8.0 or newer"
    return None


def register() -> str:
    import torch
    from torch.nn.attention.varlen import varlen_attn
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    native_gqa = "enable_gqa" in params

    def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                         **kwargs):
        if "cu_seq_lens_q" not in kwargs:  # an ordinary (padded) batch
            return sdpa_attention_forward(module, query, key, value, attention_mask,
                                          dropout=dropout, scaling=scaling, **kwargs)
        if query.shape[0] != 1:
            raise RuntimeError("varlen attention takes one packed row of documents")
        # (1, heads, tokens, dim) -> (tokens, heads, dim)
        q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
        extra = dict(causal)
        if q.shape[1] != k.shape[1]:
            if native_gqa:
                extra["enable_gqa"] = True
            else:
                repeat = q.shape[1] // k.shape[1]
                k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        cu, longest = kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"])
        out = varlen_attn(q, k, v, cu, cu, longest, longest,
                          scale=scaling, **extra)
        return out.unsqueeze(0), None  # (1, tokens, heads, dim), as transformers expects

    AttentionInterface.register(NAME, varlen_attention)
    def mask(*args, **kwargs):
        return None if kwargs.get("attention_mask") is None else sdpa_mask(*args, **kwargs)

    AttentionMaskInterface.register(NAME, mask)
    return NAME
