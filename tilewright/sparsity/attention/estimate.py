"""Dynamic block selection from the inputs themselves: XAttention and MInference's vertical-slash.

* :func:`xattention_scores` / :func:`xattention_select` (XAttention): each [block x block] tile
  is scored by the sums of its strided antidiagonals (stride S: a reduced GEMM costing 1/S of the
  dense products), softmaxed per reduced query row and summed per block; each query block then
  keeps its highest-scoring key blocks until their cumulative score reaches ``threshold`` (the
  diagonal block and the first block always kept). The scores come from a fused C++ kernel on CPU
  tensors (:mod:`tilewright.targets.cpu.sparse_attention`, selection in C++ too), a Triton kernel
  on CUDA ones (:mod:`tilewright.targets.triton.attention.sparse_estimate`), or torch ops.
* :func:`minference_estimate` (MInference): the attention of the last ``last_q`` queries over
  every key (a [last_q x N] product, softmaxed) is summed per key block (vertical) and per
  diagonal band (slash); the ``vertical`` best key blocks and ``slash`` best bands are kept for
  every query block (block 0 and band 0 always).
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor

from .index import BlockIndex, check_block, vertical_slash, visible_blocks

log = logging.getLogger(__name__)


def _check_stride(block: int, stride: int) -> None:
    if stride < 1 or block % stride:
        raise ValueError(f"XAttention stride {stride} must divide the block size {block} (e.g. 4, 8 or 16)")


def xattention_scores_reference(q: Tensor, k: Tensor, block: int, stride: int, scale: float | None = None,
                                causal: bool = False, causal_offset: int = 0) -> Tensor:
    """float32 [B, H, nmb, nkb] block scores with torch ops (the kernels' reference)."""
    B, H, M, D = q.shape
    HKV, N = k.shape[1], k.shape[2]
    S = stride
    scale = D ** -0.5 if scale is None else scale
    Mr, Nr = -(-M // S), -(-N // S)
    rb, nmb, nkb = block // S, -(-M // block), -(-N // block)
    qp = torch.nn.functional.pad(q.float(), (0, 0, 0, Mr * S - M))
    kp = torch.nn.functional.pad(k.float(), (0, 0, 0, Nr * S - N))
    qr = qp.reshape(B, H, Mr, S, D).flip(3).reshape(B, H, Mr, S * D)
    kr = kp.reshape(B, HKV, Nr, S * D).repeat_interleave(H // HKV, dim=1)
    t = torch.matmul(qr, kr.transpose(-1, -2)) * (scale / S)
    a = torch.arange(Mr)[:, None]
    c = torch.arange(Nr)[None, :]
    valid = (c * S <= a * S + S - 1 + causal_offset) if causal else torch.ones((Mr, Nr), dtype=torch.bool)
    t = t.masked_fill(~valid, float("-inf"))
    row_ok = valid.any(1)
    p = torch.softmax(t, -1).nan_to_num(0.0) * row_ok[:, None]
    p = torch.nn.functional.pad(p, (0, nkb * rb - Nr, 0, nmb * rb - Mr))
    sums = p.reshape(B, H, nmb, rb, nkb, rb).sum(dim=(3, 5))
    counted = torch.nn.functional.pad(row_ok.float(), (0, nmb * rb - Mr)).reshape(nmb, rb).sum(1)
    return sums / counted.clamp(min=1.0)[:, None]


def _cpu_kernels_usable(q: Tensor) -> bool:
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.bfloat16) or q.shape[-1] > 256:
        return False
    from ...targets.cpu.toolchain import NoCompilerError, find_compiler

    try:
        find_compiler()
    except NoCompilerError:
        return False
    return True


def xattention_scores(q: Tensor, k: Tensor, block: int, stride: int, scale: float | None = None,
                      causal: bool = False, causal_offset: int = 0, backend: str = "auto") -> Tensor:
    """XAttention's block scores [B, H, nmb, nkb] (float32; each row sums to 1 over visible blocks).

    ``backend``: ``cpu`` (the fused C++ kernel), ``triton`` (the Triton kernel), ``torch`` or ``auto``
    (C++ for CPU tensors, Triton for CUDA ones).
    """
    block = check_block(block)
    _check_stride(block, stride)
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} not a multiple of key heads {k.shape[1]}")
    if backend == "triton" or (backend == "auto" and q.device.type == "cuda"):
        from ...targets.triton.attention.sparse_estimate import triton_xattention_scores

        return triton_xattention_scores(q, k, block, stride, scale, causal, causal_offset)
    use_cpu = backend == "cpu" or (backend == "auto" and _cpu_kernels_usable(q))
    if use_cpu:
        from ...targets.cpu.sparse_attention import cpu_xattention_scores

        return cpu_xattention_scores(q, k, block, stride, scale, causal, causal_offset)
    return xattention_scores_reference(q, k, block, stride, scale, causal, causal_offset)


def _forced_blocks(m: int, n: int, block: int, causal_offset: int) -> Tensor:
    """bool [nmb, nkb]: block 0 and the block(s) the diagonal i + causal_offset crosses."""
    nmb, nkb = -(-m // block), -(-n // block)
    i0 = torch.arange(nmb) * block
    iend = torch.clamp(i0 + block, max=m) - 1
    kb = torch.arange(nkb)[None, :]
    lo = torch.div((i0 + causal_offset).clamp(0, n - 1), block, rounding_mode="floor")
    hi = torch.div((iend + causal_offset).clamp(0, n - 1), block, rounding_mode="floor")
    forced = (kb >= lo[:, None]) & (kb <= hi[:, None])
    forced[:, 0] = True
    return forced


def select_blocks(scores: Tensor, threshold: float, m: int, n: int, block: int, causal: bool = False,
                  causal_offset: int = 0) -> BlockIndex:
    """Keep, per query block, the fewest highest-scoring visible key blocks whose scores sum to at
    least ``threshold`` of the row's total (plus block 0 and the diagonal)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"XAttention threshold {threshold} must be in (0, 1]")
    vis = visible_blocks(m, n, block, causal, causal_offset)
    s = scores.float().cpu().masked_fill(~vis, 0.0).clamp(min=0.0)
    ordered, order = torch.sort(s, dim=-1, descending=True, stable=True)
    before = ordered.cumsum(-1) - ordered
    total = s.sum(-1, keepdim=True)
    keep_sorted = before < threshold * total
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    keep |= _forced_blocks(m, n, block, causal_offset)
    return BlockIndex.from_mask(keep & vis, m, n, block, causal, causal_offset)


def xattention_select(q: Tensor, k: Tensor, threshold: float = 0.9, block: int = 64, stride: int = 8,
                      scale: float | None = None, causal: bool = False, causal_offset: int = 0,
                      backend: str = "auto") -> BlockIndex:
    """XAttention's dynamic block index for ``q`` [B, H, M, D], ``k`` [B, Hkv, N, D]."""
    scores = xattention_scores(q, k, block, stride, scale, causal, causal_offset, backend)
    m, n = int(q.shape[2]), int(k.shape[2])
    if backend == "cpu" or (backend == "auto" and _cpu_kernels_usable(q)):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"XAttention threshold {threshold} must be in (0, 1]")
        from ...targets.cpu.sparse_attention import cpu_select_blocks

        return cpu_select_blocks(scores, threshold, m, n, block, int(q.shape[-1]), causal, causal_offset)
    return select_blocks(scores, threshold, m, n, block, causal, causal_offset)


def minference_estimate(q: Tensor, k: Tensor, last_q: int = 64, vertical: int = 4, slash: int = 4,
                        block: int = 64, scale: float | None = None, causal: bool = True,
                        causal_offset: int = 0, backend: str = "auto") -> BlockIndex:
    """MInference's vertical-slash index estimated from the last ``last_q`` queries (see the module doc).

    ``backend`` ``cpu`` (or ``auto`` on CPU tensors): the sums and the index in C++; else torch ops.
    """
    block = check_block(block)
    B, H, M, D = (int(x) for x in q.shape)
    HKV, N = int(k.shape[1]), int(k.shape[2])
    if H % HKV:
        raise ValueError(f"query heads {H} not a multiple of key heads {HKV}")
    last = max(1, min(int(last_q), M))
    scale = D ** -0.5 if scale is None else scale
    nkb = -(-N // block)
    if backend == "cpu" or (backend == "auto" and _cpu_kernels_usable(q)):
        from ...targets.cpu.sparse_attention import (
            cpu_minference_stats,
            cpu_vertical_slash,
        )

        vert, sl, lo = cpu_minference_stats(q, k, last, block, scale, causal, causal_offset)
        vsel, ssel = _top_vertical_slash(vert, sl, lo, vertical, slash)
        return cpu_vertical_slash(B, H, M, N, block, vsel, ssel, causal, causal_offset)
    group = H // HKV
    ql = q[:, :, M - last:].float().reshape(B, HKV, group * last, D)  # grouped heads share their K
    s = torch.matmul(ql, k.float().transpose(-1, -2)).reshape(B, H, last, N) * scale
    rows = torch.arange(M - last, M)[:, None]
    offs = rows + causal_offset - torch.arange(N)[None, :]            # o = i + offset - j
    if causal:
        s = s.masked_fill(offs < 0, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    vert = torch.nn.functional.pad(p.sum(2), (0, nkb * block - N)).reshape(B, H, nkb, block).sum(-1)
    band = torch.div(offs, block, rounding_mode="floor")               # slash band of each (row, key)
    lo = int(band.min())
    nbands = int(band.max()) - lo + 1
    sl = torch.zeros((B, H, nbands), dtype=torch.float32)
    sl.scatter_add_(2, (band - lo).reshape(1, 1, -1).expand(B, H, -1), p.reshape(B, H, -1))
    vsel, ssel = _top_vertical_slash(vert, sl, lo, vertical, slash)
    return vertical_slash(B, H, M, N, block, vsel, ssel, causal, causal_offset)


def _top_vertical_slash(vert: Tensor, sl: Tensor, lo: int, vertical: int, slash: int) -> tuple[Tensor, Tensor]:
    """The ``vertical`` best key blocks and ``slash`` best bands (block 0 and band 0 always)."""
    nkb, nbands = int(vert.shape[-1]), int(sl.shape[-1])
    nv, ns = min(max(1, vertical), nkb), min(max(1, slash), nbands)
    vert = vert.clone()
    sl = sl.clone()
    vert[..., 0] = float("inf")                                        # block 0 (sinks) always
    if 0 <= -lo < nbands:
        sl[..., -lo] = float("inf")                                    # band 0 (local) always
    return vert.topk(nv, -1).indices, sl.topk(ns, -1).indices + lo
