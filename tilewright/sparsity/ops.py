"""Custom ops the weight rewrites put in compiled graphs: ``tilewright::bsr_linear``,
``tilewright::nm_linear`` and ``tilewright::bsr_conv2d``.

They take the compressed weight as tensors (made at compile time from the layer's parameter,
see :mod:`tilewright.sparsity.apply`) and run the sparse kernels: the native C++ ones on CPU
(:mod:`tilewright.targets.cpu.sparse_gemm`), the Triton block-sparse matmul on CUDA. Where no
kernel can run (no C++ compiler; 2:4 on CUDA) they compute the same function with torch ops over
the dense weight with pruned entries zero, and say so once in the log. Inference only: the ops
have no autograd formula, and the rewrite is applied only to graphs compiled with grad off.
"""
from __future__ import annotations

import itertools
import logging

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["REFERENCES", "bsr_conv2d", "bsr_dense", "bsr_linear", "nm_dense",
           "nm_linear", "packed_weight", "release_tensors", "store_tensor"]

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


#: compressed weights of compiled graphs, by handle (see :func:`store_tensor`)
_STORE: dict[int, Tensor] = {}
_handles = itertools.count()


def store_tensor(tensor: Tensor) -> int:
    """Keep ``tensor`` (a compressed weight made at compile time) and return its handle.

    Compiled graphs reach it through ``tilewright::packed_weight(weight, handle)`` rather than as a
    graph-module buffer: the graph stays free of real-tensor constants, so later passes that
    re-trace it under fake tensors (the attention rewrite) and AOTAutograd take it as it is.
    """
    handle = next(_handles)
    _STORE[handle] = tensor
    return handle


def release_tensors(handles: list[int]) -> None:
    """Forget stored tensors (called when their graph module is collected)."""
    for h in handles:
        _STORE.pop(h, None)


@torch.library.custom_op("tilewright::packed_weight", mutates_args=())
def packed_weight(weight: Tensor, handle: int) -> Tensor:
    """The compressed tensor stored under ``handle`` for the parameter ``weight`` (read only)."""
    try:
        return _STORE[handle]
    except KeyError:
        raise RuntimeError(f"compressed weight {handle} is gone (its compiled graph was released)") from None


@packed_weight.register_fake
def _packed_weight_fake(weight: Tensor, handle: int) -> Tensor:
    t = _STORE[handle]
    return weight.new_empty(t.shape, dtype=t.dtype)


def bsr_dense(values: Tensor, col_idx: Tensor, row_ptr: Tensor, n: int, k: int, bn: int, bk: int) -> Tensor:
    """The dense float32 ``[n, k]`` weight of a BSR weight (pruned blocks zero)."""
    nbr, nbc = -(-n // bn), -(-k // bk)
    dense = torch.zeros(nbr, nbc, bk, bn, dtype=torch.float32, device=values.device)
    rows = torch.repeat_interleave(torch.arange(nbr, device=values.device), (row_ptr[1:] - row_ptr[:-1]).long())
    dense[rows, col_idx.long()] = values.float()
    return dense.permute(0, 3, 1, 2).reshape(nbr * bn, nbc * bk)[:n, :k]


def nm_dense(values: Tensor, meta: Tensor, n: int, k: int) -> Tensor:
    """The dense float32 ``[n, k]`` weight of a 2:4 weight (pruned entries zero)."""
    g = meta.shape[1]
    pos = torch.stack([meta & 3, (meta >> 2) & 3], dim=-1).long()
    dense = torch.zeros(n, g, 4, dtype=torch.float32, device=values.device)
    dense.scatter_(-1, pos, values.float().reshape(n, g, 2))
    return dense.reshape(n, g * 4)[:, :k]


def _native_cpu() -> bool:
    from tilewright.targets.cpu.sparse_gemm import native_available

    problem = native_available()
    if problem is not None:
        _warn_once("native", f"sparse weights run as dense torch ops over the pruned weight: {problem}")
    return problem is None


def _bsr_linear_impl(x: Tensor, values: Tensor, col_idx: Tensor, row_ptr: Tensor, bias: Tensor | None,
                     out_features: int, block_n: int, block_k: int) -> Tensor:
    k = x.shape[-1]
    if x.device.type == "cpu" and _native_cpu():
        from tilewright.targets.cpu.sparse_gemm import bsr_linear as cpu_bsr

        return cpu_bsr(x, values, col_idx, row_ptr, bias, out_features, k, (block_n, block_k))
    if x.device.type == "cuda" and block_n >= 16 and block_k >= 16:
        from tilewright.targets.triton.sparse_matmul import bsr_matmul

        return bsr_matmul(x, values, col_idx, row_ptr, bias, out_features, k, (block_n, block_k))
    w = bsr_dense(values, col_idx, row_ptr, out_features, k, block_n, block_k).to(x.device)
    return F.linear(x.float(), w, None if bias is None else bias.float()).to(x.dtype)


@torch.library.custom_op("tilewright::bsr_linear", mutates_args=())
def bsr_linear(x: Tensor, values: Tensor, col_idx: Tensor, row_ptr: Tensor, bias: Tensor | None,
               out_features: int, block_n: int, block_k: int) -> Tensor:
    """``x @ W^T + bias`` with ``W`` block-sparse (``values [nnzb, block_k, block_n]`` float32, CSR blocks)."""
    return _bsr_linear_impl(x, values, col_idx, row_ptr, bias, out_features, block_n, block_k)


@bsr_linear.register_fake
def _bsr_linear_fake(x: Tensor, values: Tensor, col_idx: Tensor, row_ptr: Tensor, bias: Tensor | None,
                     out_features: int, block_n: int, block_k: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("tilewright::nm_linear", mutates_args=())
def nm_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    """``x @ W^T + bias`` with ``W`` in 2:4 form (``values [N, G*2]`` float32, ``meta [N, G]`` uint8)."""
    k = x.shape[-1]
    if x.device.type == "cpu" and _native_cpu():
        from tilewright.targets.cpu.sparse_gemm import nm_linear as cpu_nm

        return cpu_nm(x, values, meta, bias, out_features, k)
    if x.device.type == "cuda":
        _warn_once("nm-cuda", "2:4 weights on CUDA run as a dense matmul over the pruned weight (no 2:4 Triton kernel)")
    w = nm_dense(values, meta, out_features, k).to(x.device)
    return F.linear(x.float(), w, None if bias is None else bias.float()).to(x.dtype)


@nm_linear.register_fake
def _nm_linear_fake(x: Tensor, values: Tensor, meta: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


def _conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@torch.library.custom_op("tilewright::bsr_conv2d", mutates_args=())
def bsr_conv2d(x: Tensor, values: Tensor, col_idx: Tensor, row_ptr: Tensor, bias: Tensor | None,
               out_channels: int, block_n: int, block_k: int, kernel: list[int], stride: list[int],
               padding: list[int], dilation: list[int]) -> Tensor:
    """``conv2d(x, W, bias)`` (groups 1) with ``W`` block-sparse over its ``[Cout, Cin*kh*kw]`` im2col matrix.

    A 1x1 stride-1 unpadded convolution is a GEMM over the channels-last pixels; other kernels
    unfold ``x`` (im2col) first.
    """
    nb, _, h, w = x.shape
    kh, kw = kernel
    ho = _conv_out(h, kh, stride[0], padding[0], dilation[0])
    wo = _conv_out(w, kw, stride[1], padding[1], dilation[1])
    if kh == kw == 1 and tuple(stride) == (1, 1) and tuple(padding) == (0, 0):
        cols = x.permute(0, 2, 3, 1)  # [N, H, W, Cin]
    else:
        cols = F.unfold(x, (kh, kw), dilation=tuple(dilation), padding=tuple(padding), stride=tuple(stride))
        cols = cols.transpose(1, 2)  # [N, L, Cin*kh*kw]
    y = _bsr_linear_impl(cols, values, col_idx, row_ptr, bias, out_channels, block_n, block_k)
    return y.reshape(nb, ho, wo, out_channels).permute(0, 3, 1, 2).contiguous()


@bsr_conv2d.register_fake
def _bsr_conv2d_fake(x: Tensor, values: Tensor, col_idx: Tensor, row_ptr: Tensor, bias: Tensor | None,
                     out_channels: int, block_n: int, block_k: int, kernel: list[int], stride: list[int],
                     padding: list[int], dilation: list[int]) -> Tensor:
    ho = _conv_out(x.shape[2], kernel[0], stride[0], padding[0], dilation[0])
    wo = _conv_out(x.shape[3], kernel[1], stride[1], padding[1], dilation[1])
    return x.new_empty((x.shape[0], out_channels, ho, wo))


def bsr_linear_reference(x: Tensor, values: Tensor, col_idx: Tensor, row_ptr: Tensor, bias: Tensor | None,
                         out_features: int, block_n: int, block_k: int) -> Tensor:
    """``tilewright::bsr_linear`` with torch ops over the dense pruned weight (float32 compute)."""
    w = bsr_dense(values, col_idx, row_ptr, out_features, x.shape[-1], block_n, block_k).to(x.device)
    return F.linear(x.float(), w, None if bias is None else bias.float()).to(x.dtype)


def nm_linear_reference(x: Tensor, values: Tensor, meta: Tensor, bias: Tensor | None, out_features: int) -> Tensor:
    """``tilewright::nm_linear`` with torch ops over the dense pruned weight (float32 compute)."""
    w = nm_dense(values, meta, out_features, x.shape[-1]).to(x.device)
    return F.linear(x.float(), w, None if bias is None else bias.float()).to(x.dtype)


def bsr_conv2d_reference(x: Tensor, values: Tensor, col_idx: Tensor, row_ptr: Tensor, bias: Tensor | None,
                         out_channels: int, block_n: int, block_k: int, kernel: list[int], stride: list[int],
                         padding: list[int], dilation: list[int]) -> Tensor:
    """``tilewright::bsr_conv2d`` as ``F.conv2d`` over the dense pruned weight (float32 compute)."""
    cin = x.shape[1]
    w = bsr_dense(values, col_idx, row_ptr, out_channels, cin * kernel[0] * kernel[1], block_n, block_k)
    w = w.reshape(out_channels, cin, kernel[0], kernel[1]).to(x.device)
    return F.conv2d(x.float(), w, None if bias is None else bias.float(), tuple(stride), tuple(padding),
                    tuple(dilation)).to(x.dtype)


#: op name (``tilewright.<name>``) -> its reference
REFERENCES = {"tilewright.packed_weight": lambda weight, handle: _STORE[handle],
              "tilewright.bsr_linear": bsr_linear_reference, "tilewright.nm_linear": nm_linear_reference,
              "tilewright.bsr_conv2d": bsr_conv2d_reference}
