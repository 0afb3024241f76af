"""Triton kernels for the ``tilewright::flash_attention`` ops when they run outside a compiled plan.

The ops (:mod:`tilewright.ops.attention`) compute a torch reference by default. Importing this
module registers the Triton launchers for CUDA tensors and, in interpreter mode, CPU tensors
(a graph that runs its FX code eagerly, such as a whole-graph fallback, then still runs the
same kernels a compiled plan would).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ....ops.attention import attention_reference, backward_outputs, _reference_backward
from ..jit import can_run_kernels
from .launch import flash_attention_backward, flash_attention_forward


@torch.library.register_kernel("tilewright::flash_attention", ("cuda", "cpu"))
def _forward(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
             seed: Optional[Tensor], scale: float, causal: bool, causal_offset: int,
             dropout_p: float) -> tuple[Tensor, Tensor]:
    if can_run_kernels(q.device):
        return flash_attention_forward(q, k, v, bias=bias, mask=mask, scale=scale, causal=causal,
                                       causal_offset=causal_offset, dropout_p=dropout_p, seed=seed)
    out, lse = attention_reference(q, k, v, bias, mask, scale, causal, causal_offset, dropout_p, seed)
    return out.contiguous(), lse.contiguous()


@torch.library.register_kernel("tilewright::flash_attention_backward", ("cuda", "cpu"))
def _backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
              seed: Optional[Tensor], out: Tensor, lse: Tensor, scale: float, causal: bool, causal_offset: int,
              dropout_p: float, bias_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    bias_grad = bias_grad and bias is not None
    if can_run_kernels(q.device):
        dq, dk, dv, db = flash_attention_backward(dout, q, k, v, out, lse, bias=bias, mask=mask, scale=scale,
                                                  causal=causal, causal_offset=causal_offset,
                                                  dropout_p=dropout_p, seed=seed, bias_grad=bias_grad)
    else:
        dq, dk, dv, db = _reference_backward(dout, q, k, v, bias, mask, seed, scale, causal, causal_offset,
                                             dropout_p, bias_grad)
    return backward_outputs(q, dq, dk, dv, db)  # type: ignore[return-value]
