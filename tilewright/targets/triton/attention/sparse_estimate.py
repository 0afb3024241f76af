"""XAttention's block scores as one Triton kernel (the Triton target's estimator).

Same definition as the CPU kernel and the torch reference
(:func:`tilewright.sparsity.attention.estimate.xattention_scores_reference`): reduced scores
``sum_s q[a*S + S-1-s] . k[c*S + s] * scale / S`` (S strided loads of q and k per tile, one dot
each), a softmax per reduced row over its visible reduced keys (two passes: running max and sum,
then probabilities), probabilities summed per [query block, key block] and averaged over the
block's rows. One program per (BLOCK_R reduced rows, batch * head); a program owns whole rows of
the output, so no atomics.
"""
from __future__ import annotations

import torch
import triton.language as tl

from ..jit import cdiv, triton_jit
from . import kernels as K
from .launch import _dot_precision, _upcast, head_block


@triton_jit
def _reduced_tile(Q, K_, b, h, hk, offs_a, c0, sqb, sqh, sqm, sqd, skb, skh, skn, skd, M, N, D, MR, NR,
                  scale_s, causal_offset, IS_CAUSAL: tl.constexpr, S: tl.constexpr, UPCAST: tl.constexpr,
                  DOT_PREC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    """Scaled reduced scores of rows ``offs_a`` and reduced keys c0.. (-inf where not visible).

    One dynamic loop over (stride step, BLOCK_K-wide slice of the head dim), so Triton pipelines
    its loads and each dot's operands stay small (an unrolled loop over S kept every step's tiles
    live: 255 registers and 280 B spilled for fp16 D=64 on sm_90, 393 KiB of shared memory for
    bf16 D=128 at stride 16)."""
    offs_c = c0 + tl.arange(0, BLOCK_C)
    ND: tl.constexpr = BLOCK_D // BLOCK_K
    t = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    for it in range(S * ND):
        s = it // ND
        offs_d = (it % ND) * BLOCK_K + tl.arange(0, BLOCK_K)
        d_ok = offs_d < D
        qi = offs_a * S + (S - 1 - s)
        kj = offs_c * S + s
        qt = tl.load(Q + b * sqb + h * sqh + qi[:, None] * sqm + offs_d[None, :] * sqd,
                     mask=(qi[:, None] < M) & d_ok[None, :], other=0.0)
        kt = tl.load(K_ + b * skb + hk * skh + kj[None, :] * skn + offs_d[:, None] * skd,
                     mask=(kj[None, :] < N) & d_ok[:, None], other=0.0)
        if UPCAST:
            qt = qt.to(tl.float32)
            kt = kt.to(tl.float32)
        t = tl.dot(qt, kt, t, input_precision=DOT_PREC)
    t = t * scale_s
    valid = (offs_c[None, :] < NR) & (offs_a[:, None] < MR)
    if IS_CAUSAL:
        valid = valid & (offs_c[None, :] * S <= offs_a[:, None] * S + S - 1 + causal_offset)
    return tl.where(valid, t, float("-inf"))


@triton_jit
def xattn_scores_kernel(Q, K_, OUT, sqb, sqh, sqm, sqd, skb, skh, skn, skd,
                        H, M, N, D, GROUP, MR, NR, NMB, NKB, scale_s, causal_offset,
                        IS_CAUSAL: tl.constexpr, S: tl.constexpr, RB: tl.constexpr, UPCAST: tl.constexpr,
                        DOT_PREC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                        BLOCK_K: tl.constexpr):
    """Block scores of BLOCK_R // RB query blocks of one (batch, head): OUT [B*H, NMB, NKB] (zeroed)."""
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = K._batch_head(pid_bh, H)
    hk = h // GROUP
    offs_a = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    hi = NR
    if IS_CAUSAL:
        hi = tl.minimum(NR, tl.maximum(0, (pid * BLOCK_R + BLOCK_R) * S - 1 + causal_offset) // S + 1)
    m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, hi, BLOCK_C):
        t = _reduced_tile(Q, K_, b, h, hk, offs_a, c0, sqb, sqh, sqm, sqd, skb, skh, skn, skd, M, N, D, MR, NR,
                          scale_s, causal_offset, IS_CAUSAL, S, UPCAST, DOT_PREC, BLOCK_R, BLOCK_C,
                          BLOCK_D, BLOCK_K)
        m_new = tl.maximum(m_i, tl.max(t, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(t - m_safe[:, None]), 1)
        m_i = m_new
    row_ok = (offs_a < MR) & (l_i > 0.0)
    m_safe = tl.where(row_ok, m_i, 0.0)
    inv_l = tl.where(row_ok, 1.0 / tl.where(row_ok, l_i, 1.0), 0.0)
    QB: tl.constexpr = BLOCK_R // RB
    KBT: tl.constexpr = BLOCK_C // RB
    counted = tl.sum(tl.reshape(row_ok.to(tl.float32), [QB, RB]), 1)
    norm = tl.where(counted > 0.0, 1.0 / tl.where(counted > 0.0, counted, 1.0), 0.0)
    offs_qb = pid * QB + tl.arange(0, QB)
    for c0 in range(0, hi, BLOCK_C):
        t = _reduced_tile(Q, K_, b, h, hk, offs_a, c0, sqb, sqh, sqm, sqd, skb, skh, skn, skd, M, N, D, MR, NR,
                          scale_s, causal_offset, IS_CAUSAL, S, UPCAST, DOT_PREC, BLOCK_R, BLOCK_C,
                          BLOCK_D, BLOCK_K)
        p = tl.exp(t - m_safe[:, None]) * inv_l[:, None]
        blk = tl.sum(tl.sum(tl.reshape(p, [QB, RB, KBT, RB]), 3), 1) * norm[:, None]
        offs_kb = c0 // RB + tl.arange(0, KBT)
        tl.store(OUT + (pid_bh * NMB + offs_qb[:, None]) * NKB + offs_kb[None, :], blk,
                 mask=(offs_qb[:, None] < NMB) & (offs_kb[None, :] < NKB))


def slice_width(dtype: torch.dtype, block_d: int) -> int:
    """The head-dim slice each dot of the scoring loop reads: 64 for half precision, 32 for
    float32 (its FMA or TF32 dot replicates operands along the reduction: D=64 in one dot
    spilled 16 B on sm_90, D=128 64 B), never wider than the padded head dim."""
    return min(block_d, 32 if dtype == torch.float32 else 64)


def triton_xattention_scores(q: torch.Tensor, k: torch.Tensor, block: int, stride: int, scale: float | None = None,
                             causal: bool = False, causal_offset: int = 0) -> torch.Tensor:
    """XAttention's block scores [B, H, nmb, nkb] float32 from the Triton kernel."""
    B, H, M, D = (int(x) for x in q.shape)
    HKV, N = int(k.shape[1]), int(k.shape[2])
    S = int(stride)
    scale = float(D ** -0.5 if scale is None else scale)
    mr, nr, rb = cdiv(M, S), cdiv(N, S), block // S
    nmb, nkb = cdiv(M, block), cdiv(N, block)
    out = torch.zeros((B, H, nmb, nkb), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out
    block_r, block_d = max(16, rb), head_block(D)
    block_c = max(32, rb)
    grid = (cdiv(mr, block_r), B * H)
    xattn_scores_kernel[grid](q, k, out, *q.stride(), *k.stride(), H, M, N, D, H // HKV, mr, nr, nmb, nkb,
                              scale / S, int(causal_offset), IS_CAUSAL=bool(causal), S=S, RB=rb, UPCAST=_upcast(q),
                              DOT_PREC=_dot_precision(q), BLOCK_R=block_r,
                              BLOCK_C=block_c, BLOCK_D=block_d, BLOCK_K=slice_width(q.dtype, block_d))
    return out
