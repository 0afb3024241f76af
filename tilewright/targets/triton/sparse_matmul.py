"""Block-sparse matmul in Triton: ``y = x @ W^T + b`` with ``W`` in the BSR format of
:mod:`tilewright.sparsity.weights` (``values [nnzb, bk, bn]`` k-major blocks, CSR block rows).

One program computes a ``BLOCK_M x bn`` tile of ``y`` for one block row: it walks that row's
kept blocks (``row_ptr[r] .. row_ptr[r+1]``), loads the matching ``BLOCK_M x bk`` slice of ``x``
(masked at the edges of M and K) and the ``bk x bn`` block, and accumulates ``tl.dot`` in
float32; work is proportional to the kept blocks. The bias is added before the masked store.
On CPU tensors it runs in Triton's interpreter (tests, at tiny sizes); x is loaded and computed
in float32 (the interpreter mishandles bfloat16 dots), the result is cast back to x's dtype.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .jit import cdiv, triton_jit

__all__ = ["bsr_matmul"]

_kernel: Any = None


def _build() -> Any:
    import triton.language as tl

    @triton_jit
    def bsr_matmul_kernel(x_ptr, vals_ptr, cols_ptr, rowptr_ptr, bias_ptr, y_ptr, M, N, K, stride_xm, stride_xk,
                          stride_ym, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BN: tl.constexpr,
                          BK: tl.constexpr):
        pid_m = tl.program_id(0)
        br = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BN)
        offs_k = tl.arange(0, BK)
        start = tl.load(rowptr_ptr + br)
        end = tl.load(rowptr_ptr + br + 1)
        acc = tl.zeros((BLOCK_M, BN), dtype=tl.float32)
        for b in range(start, end):
            c0 = tl.load(cols_ptr + b) * BK
            ks = c0 + offs_k
            xt = tl.load(x_ptr + offs_m[:, None] * stride_xm + ks[None, :] * stride_xk,
                         mask=(offs_m[:, None] < M) & (ks[None, :] < K), other=0.0).to(tl.float32)
            wt = tl.load(vals_ptr + b * BK * BN + offs_k[:, None] * BN + offs_n[None, :])
            acc += tl.dot(xt, wt, input_precision="ieee")
        cols = br * BN + offs_n
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * stride_ym + cols[None, :], acc,
                 mask=(offs_m[:, None] < M) & (cols[None, :] < N))

    return bsr_matmul_kernel


def bsr_matmul(x: Tensor, values: Tensor, col_idx: Tensor, row_ptr: Tensor, bias: Tensor | None, n: int, k: int,
               block: tuple[int, int], block_m: int = 16) -> Tensor:
    """``x [..., K] @ W^T + bias`` with block-sparse ``W`` (blocks of at least 16 x 16 for ``tl.dot``)."""
    global _kernel
    bn, bk = block
    if bn < 16 or bk < 16:
        raise ValueError(f"the Triton block-sparse matmul needs blocks of at least 16x16 (tl.dot), got {bn}x{bk}")
    if _kernel is None:
        _kernel = _build()
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    dev = x.device
    y = torch.empty(m, n, dtype=torch.float32, device=dev)
    if m == 0 or n == 0:
        return y.reshape(*lead, n).to(x.dtype)
    vals = values.to(dev, torch.float32).contiguous()
    b = bias.to(dev, torch.float32).contiguous() if bias is not None else y  # dummy pointer when no bias
    grid = (cdiv(m, block_m), row_ptr.numel() - 1)
    _kernel[grid](x2, vals, col_idx.to(dev), row_ptr.to(dev), b, y, m, n, k, x2.stride(0), x2.stride(1), y.stride(0),
                  HAS_BIAS=bias is not None, BLOCK_M=block_m, BN=bn, BK=bk)
    return y.reshape(*lead, n).to(x.dtype)
