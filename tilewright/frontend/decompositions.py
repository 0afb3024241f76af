"""The decomposition table handed to AOTAutograd.

Core ATen plus the composite ops we want as pointwise/reduction primitives (layer norm,
softmax, their backwards, activation backwards), and our own sum-based ``var``/``var_mean``
so every normalisation reduces to sums the fusion pass can merge into one kernel. Ops that
later passes want whole (convolution, scaled-dot-product attention, mm/bmm/addmm) are kept.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch._decomp import core_aten_decompositions, get_decompositions

aten = torch.ops.aten

_EXTRA = [
    aten.native_layer_norm, aten.native_layer_norm_backward, aten._softmax, aten._log_softmax,
    aten._softmax_backward_data, aten._log_softmax_backward_data, aten.gelu_backward,
    aten.tanh_backward, aten.sigmoid_backward, aten.silu, aten.silu_backward, aten.threshold_backward,
    aten.native_batch_norm_backward, aten.hardtanh_backward, aten.leaky_relu_backward, aten.rsub,
    aten.addcmul, aten.addcdiv, aten.mse_loss, aten.mse_loss_backward, aten.nll_loss_forward,
    aten.nll_loss_backward, aten.linalg_vector_norm, aten._to_copy, aten.elu, aten.elu_backward,
    aten.softplus, aten.softplus_backward, aten.mish, aten.hardswish, aten.hardsigmoid,
    aten.logit, aten.lerp, aten.std, aten.std_mean, aten.rms_norm, aten.layer_norm, aten.group_norm,
    aten.native_group_norm, aten.native_group_norm_backward, aten.native_batch_norm,
    aten._native_batch_norm_legit_functional, aten._native_batch_norm_legit,
    aten._native_batch_norm_legit_no_training, aten.addmv, aten.baddbmm, aten.full_like, aten.zeros_like,
    aten.ones_like, aten.new_zeros, aten.new_ones, aten.new_full, aten.round.decimals,
]

#: ops kept whole even if a table above would decompose them
_KEEP = {aten.convolution.default, aten.convolution_backward.default,
         aten._scaled_dot_product_flash_attention_for_cpu.default,
         aten._scaled_dot_product_efficient_attention.default,
         aten._scaled_dot_product_flash_attention.default,
         aten.scaled_dot_product_attention.default, aten.addmm.default, aten.mm.default,
         aten.bmm.default, aten._to_copy.default, aten.embedding.default}


def _reduce_dims(x: torch.Tensor, dim: Any) -> list[int]:
    if dim is None:
        return list(range(x.dim()))
    if isinstance(dim, int):
        return [dim]
    return list(dim) if len(dim) else list(range(x.dim()))


def _var_mean(x: torch.Tensor, dim: Any = None, *, correction: Any = None, keepdim: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-pass variance from sums: ``sum((x - mean)**2) / (n - correction)``."""
    dims = _reduce_dims(x, dim)
    n = 1
    for d in dims:
        n *= x.shape[d]
    corr = 1 if correction is None else correction
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = aten.sum.dim_IntList(xf, dims, True) / n
    centered = xf - mean
    var = aten.sum.dim_IntList(centered * centered, dims, keepdim) / max(n - corr, 0)
    if not keepdim:
        mean = aten.squeeze.dims(mean, dims)
    return var.to(x.dtype), mean.to(x.dtype)


def _var(x: torch.Tensor, dim: Any = None, *, correction: Any = None, keepdim: bool = False) -> torch.Tensor:
    return _var_mean(x, dim, correction=correction, keepdim=keepdim)[0]


def _full_like(x: torch.Tensor, fill_value: Any, *, dtype: Any = None, layout: Any = None, device: Any = None,
               pin_memory: Any = None, memory_format: Any = None) -> torch.Tensor:
    """``full_like`` as a ``full`` generator the fusion pass can inline (layout: contiguous)."""
    return aten.full.default(list(x.shape), fill_value, dtype=dtype or x.dtype, device=device or x.device)


def _native_dropout(x: torch.Tensor, p: float, train: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dropout as seed + index-based keep-mask, so the mask is computed inside fused kernels."""
    from ..ops import random as tw_random

    if not train or p == 0.0:
        return x.clone(), torch.ones_like(x, dtype=torch.bool)
    if p >= 1.0:
        return torch.zeros_like(x), torch.zeros_like(x, dtype=torch.bool)
    seed = torch.ops.tilewright.seed(tw_random.next_site(), x.device)
    keep = torch.ops.tilewright.dropout_mask(x, seed, float(p))
    return x * keep * (1.0 / (1.0 - p)), keep


@functools.lru_cache(maxsize=1)
def decomposition_table() -> dict[Any, Callable[..., Any]]:
    """The table of decompositions tilewright's AOTAutograd capture uses."""
    table = dict(core_aten_decompositions())
    table.update(get_decompositions(_EXTRA))
    for op in _KEEP:
        table.pop(op, None)
    table[aten.var_mean.correction] = _var_mean
    table[aten.var.correction] = _var
    table[aten.full_like.default] = _full_like
    table[aten.native_dropout.default] = _native_dropout
    return table
