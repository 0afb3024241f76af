"""The CPU target's fused attention backward (recompute-based, FlashAttention-2 style).

``delta = rowsum(dout * out)`` is one torch reduction; the library's ``tw_attn_bwd`` then packs
K and V once, computes dK/dV in parallel over key blocks (each block accumulating over every
query head of its kv group: no copies for grouped-query attention, no races) and dQ in parallel
over query blocks, recomputing the probabilities from the saved log-sum-exp.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...ops.attention import reduce_to_shape
from .attention import (
    _config,
    _int64s,
    attention_library,
    check_call,
    dropout_seed,
    flags,
    prepared_bias,
    strides4,
    variant_of,
)


def cpu_attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           out: torch.Tensor, lse: torch.Tensor, bias: torch.Tensor | None = None,
                           mask: torch.Tensor | None = None, scale: float | None = None, causal: bool = False,
                           causal_offset: int = 0, bias_grad: bool = False,
                           config: Mapping[str, Any] | None = None, dropout_p: float = 0.0,
                           seed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients (dq, dk, dv, dbias-or-None) of :func:`~.attention.cpu_attention_forward`.

    ``dbias`` (when ``bias_grad``) is dS summed over the dims where ``bias`` broadcasts; it needs
    a [B, Hq, M, N] float32 buffer, the only case where scores reach memory.
    """
    check_call(q, k, v, bias, mask, dropout_p)
    seed_value = dropout_seed(dropout_p, seed)
    original_bias = bias
    bias = prepared_bias(bias)
    B, H, M, D = (int(x) for x in q.shape)
    HKV, N = int(k.shape[1]), int(k.shape[2])
    cfg = _config(config, D, True, B * HKV)
    scale = float(D ** -0.5 if scale is None else scale)
    if dout.dtype != q.dtype:
        dout = dout.to(q.dtype)
    lib = attention_library(variant_of(q, bias))
    dq = torch.empty((B, H, M, D), dtype=q.dtype)
    dk = torch.empty((B, HKV, N, D), dtype=k.dtype)
    dv = torch.empty((B, HKV, N, D), dtype=v.dtype)
    wants_db = bias_grad and original_bias is not None
    ds = torch.zeros((B, H, M, N), dtype=torch.float32) if wants_db else None
    if q.numel() == 0 or k.numel() == 0:
        dq.zero_(), dk.zero_(), dv.zero_()
    else:
        delta = (dout.float() * out.float()).sum(-1).contiguous()
        lse = lse.float().contiguous()
        full = (B, H, M, N)
        mask_arg = mask.view(torch.uint8) if mask is not None else None
        dims = _int64s([B, H, HKV, M, N, causal_offset, cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["threads"],
                        cfg["FUSED_DQ"], seed_value, flags(causal, bias, mask)])
        strides = _int64s([*q.stride(), *k.stride(), *v.stride(), *strides4(bias, full), *strides4(mask, full),
                           *dout.stride(), *dq.stride(), *dk.stride(), *dv.stride()])
        lib.tw_attn_bwd(dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(),
                        0 if bias is None else bias.data_ptr(), 0 if mask_arg is None else mask_arg.data_ptr(),
                        lse.data_ptr(), delta.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
                        0 if ds is None else ds.data_ptr(), dims, strides, scale,
                        float(dropout_p))
    dbias = None
    if wants_db:
        assert ds is not None and original_bias is not None
        dbias = reduce_to_shape(ds, original_bias.shape).to(original_bias.dtype)
    return dq, dk, dv, dbias
