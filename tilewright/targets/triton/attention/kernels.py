"""Triton flash-attention kernels: forward, backward (dK/dV and dQ), split-K decode and combine.

Semantics shared by every kernel (q: [B, Hq, M, D], k/v: [B, Hkv, N, D], Hq = GROUP * Hkv)::

    s[i, j]  = scale * q[i] . k[j] + bias[i, j]                  (bias optional, additive)
    valid    = mask[i, j] and (j <= i + CAUSAL_OFFSET if causal) and j < N
    p        = softmax over valid j of s (masked positions excluded; a row with no valid
               position gives output 0 and lse = -inf, like FlashAttention / SDPA's safe softmax)
    out      = dropout(p) @ v

Bias and mask are read through their own strides, so broadcast dimensions have stride 0 and
are never materialised. Query head ``h`` reads key/value head ``h // GROUP`` (grouped-query
attention without copying K/V). Causal blocks wholly above the diagonal are never visited. Each
key (or query) loop runs in stages with uniform bodies, so Triton's pipeliner can stage the
loads: whole blocks below the causal diagonal and inside the sequence need no mask at all (and
no head-dim mask when BLOCK_D == D, ``EVEN_D``); only the diagonal and the tail blocks build
masks. A boolean mask is applied as data in every tile (no data-dependent branch in the loop:
block-sparse skipping belongs to the block-sparse kernels). Scores run in the log2 domain
(``exp2``) with a float32 accumulator; ``UPCAST`` computes the dots in float32 (used for
bfloat16 under the interpreter, whose bf16 ``tl.dot`` is wrong).

All pointer arithmetic is plain (no block pointers) so the same source runs on Triton 3.6
and 3.9, compiled or interpreted.
"""
from __future__ import annotations

import triton.language as tl

from ..jit import triton_jit

LOG2E = 1.4426950408889634


@triton_jit
def _score_tile(q, k_t, offs_m, offs_n, M, N, qk_scale, causal_offset,
                BIAS, sbm, sbn, MASK, smm, smn,
                HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
                DOT_PREC: tl.constexpr, MASKED: tl.constexpr):
    """Scores of one [BLOCK_M, BLOCK_N] tile in the log2 domain, -inf where not valid.

    ``MASKED`` is False for tiles wholly inside the keys and below the causal diagonal: then no
    bounds or causal mask is built (only a boolean mask or bias, which are data, are read).
    """
    s = tl.dot(q, k_t, input_precision=DOT_PREC) * qk_scale
    if HAS_BIAS:
        bias = tl.load(BIAS + offs_m[:, None] * sbm + offs_n[None, :] * sbn,
                       mask=(offs_m[:, None] < M) & (offs_n[None, :] < N), other=0.0)
        s = s + bias.to(tl.float32) * 1.4426950408889634
    if MASKED:
        valid = (offs_n[None, :] < N) & (offs_m[:, None] >= 0)
        if IS_CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
        s = tl.where(valid, s, float("-inf"))
    if HAS_MASK:
        mk = tl.load(MASK + offs_m[:, None] * smm + offs_n[None, :] * smn,
                     mask=(offs_m[:, None] < M) & (offs_n[None, :] < N), other=0)
        s = tl.where(mk != 0, s, float("-inf"))
    return s


@triton_jit
def _load_rows(ptrs, offs, LIMIT, d_ok, MASKED: tl.constexpr, EVEN_D: tl.constexpr):
    """A [rows, BLOCK_D] tile: bounds-checked rows only when ``MASKED``, the head dim only when
    BLOCK_D != D (the common head dims load without any mask)."""
    if MASKED:
        x = tl.load(ptrs, mask=(offs[:, None] < LIMIT) & d_ok[None, :], other=0.0)
    elif EVEN_D:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=d_ok[None, :], other=0.0)
    return x


@triton_jit
def _load_cols(ptrs, offs, LIMIT, d_ok, MASKED: tl.constexpr, EVEN_D: tl.constexpr):
    """A [BLOCK_D, cols] (transposed) tile, masked like :func:`_load_rows`."""
    if MASKED:
        x = tl.load(ptrs, mask=(offs[None, :] < LIMIT) & d_ok[:, None], other=0.0)
    elif EVEN_D:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=d_ok[:, None], other=0.0)
    return x


@triton_jit
def _dropout_keep(seed, pid_bh, offs_m, offs_n, M, N, dropout_p):
    """Keep-mask of dropout for one tile, a pure function of (seed, batch*head, row, column)."""
    # NOTE: every kernel draws through this one function, so forward and backward see the same
    # stream; int64 so that batch*heads*M*N past 2**31 never repeats a draw (below it, Philox's
    # high offset word is 0 and the stream equals the int32 one)
    rng_offs = (pid_bh.to(tl.int64) * M + offs_m[:, None]) * N + offs_n[None, :]
    return tl.rand(seed, rng_offs) >= dropout_p


@triton_jit
def _dropout_seed(SEED, HAS_DROPOUT: tl.constexpr):
    """The dropout seed (read once per program; 0, never used, without dropout)."""
    seed = 0
    if HAS_DROPOUT:
        seed = tl.load(SEED)
    return seed


@triton_jit
def _batch_head(pid_bh, HEADS):
    """(batch, head) of a flattened batch * head index."""
    # NOTE: int64 batch/head indices: b * stride_b can pass 2**31 for long KV caches.
    return (pid_bh // HEADS).to(tl.int64), (pid_bh % HEADS).to(tl.int64)


@triton_jit
def _block_prologue(HEADS, D, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program ids of a (row block, batch * head) grid.

    Returns (block id, batch * head id, batch, head, the block's BLOCK row offsets, the
    head-dim offsets, the head-dim mask).
    """
    pid = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b, h = _batch_head(pid_bh, HEADS)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    return pid, pid_bh, b, h, offs, offs_d, offs_d < D


@triton_jit
def _causal_key_end(N, pid_m, causal_offset, BLOCK_M: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """End of the keys query block ``pid_m`` visits: with a causal mask, key blocks wholly above
    the diagonal are never visited."""
    hi = N
    if IS_CAUSAL:
        hi = tl.minimum(N, (pid_m + 1) * BLOCK_M + causal_offset)
    return hi


@triton_jit
def _unmasked_key_end(N, pid_m, causal_offset, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      IS_CAUSAL: tl.constexpr):
    """End of the key blocks query block ``pid_m`` reads without any mask: whole blocks inside
    the keys and, when causal, at or below the first row's diagonal (the rest is the masked
    diagonal / tail stage)."""
    end = (N // BLOCK_N) * BLOCK_N
    if IS_CAUSAL:
        first = tl.maximum(pid_m * BLOCK_M + causal_offset + 1, 0)
        end = tl.minimum(end, (first // BLOCK_N) * BLOCK_N)
    return end


@triton_jit
def _softmax_step(s, m_i, l_i):
    """Online softmax over one key block of log2-domain scores ``s``: (p, alpha, new max, new sum).

    ``p`` is relative to the new running max and ``alpha`` rescales what was accumulated; rows
    with no valid score so far keep max -inf without producing NaN.
    """
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)


@triton_jit
def _softmax_finish(acc, m_i, l_i):
    """(normalised output, natural-log lse) of the online softmax; an empty row gives 0 and -inf."""
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) / 1.4426950408889634)
    return out, lse


@triton_jit
def _row_stats(LSE, DELTA, pid_bh, offs_m, M):
    """The backward's per-row terms: the forward's lse in the log2 domain (+inf for an empty row,
    so its p is 0) and delta."""
    lse = tl.load(LSE + pid_bh * M + offs_m, mask=offs_m < M, other=0.0)
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634
    delta = tl.load(DELTA + pid_bh * M + offs_m, mask=offs_m < M, other=0.0)
    return lse, delta


@triton_jit
def _fwd_range(acc, m_i, l_i, q, K_base, V_base, BIAS_base, MASK_base, lo, hi,
               offs_m, offs_n0, offs_d, d_ok, M, N, skn, skd, svn, svd, sbm, sbn, smm, smn,
               qk_scale, causal_offset, seed, pid_bh, dropout_p,
               HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
               HAS_DROPOUT: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
               MASKED: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """The forward's online softmax over key blocks [lo, hi) (masks only when ``MASKED``)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k_t = _load_cols(K_base + offs_n[None, :] * skn + offs_d[:, None] * skd, offs_n, N, d_ok, MASKED, EVEN_D)
        if UPCAST:
            k_t = k_t.to(tl.float32)
        s = _score_tile(q, k_t, offs_m, offs_n, M, N, qk_scale, causal_offset,
                        BIAS_base, sbm, sbn, MASK_base, smm, smn,
                        HAS_BIAS, HAS_MASK, IS_CAUSAL, DOT_PREC, MASKED)
        p, alpha, m_new, l_i = _softmax_step(s, m_i, l_i)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, pid_bh, offs_m, offs_n, M, N, dropout_p)
            p = tl.where(keep, p / (1.0 - dropout_p), 0.0)
        v = _load_rows(V_base + offs_n[:, None] * svn + offs_d[None, :] * svd, offs_n, N, d_ok, MASKED, EVEN_D)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    return acc, m_i, l_i


@triton_jit
def attn_fwd_kernel(
    Q, K, V, BIAS, MASK, SEED, OUT, LSE,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    sbb, sbh, sbm, sbn, smb, smh, smm, smn, sob, soh, som, sod,
    H, M, N, D, GROUP, scale, dropout_p, causal_offset,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
):
    """Flash-attention forward: one program per (query block, batch*head); writes out and lse."""
    # -- program ids -> (batch, head, kv head, rows)
    pid_m, pid_bh, b, h, offs_m, offs_d, d_ok = _block_prologue(H, D, BLOCK_M, BLOCK_D)
    hk = h // GROUP
    offs_n0 = tl.arange(0, BLOCK_N)
    # -- pointers
    q_ptrs = Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd
    K_base = K + b * skb + hk * skh
    V_base = V + b * svb + hk * svh
    BIAS_base = BIAS + b * sbb + h * sbh
    MASK_base = MASK + b * smb + h * smh
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < M) & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    qk_scale = scale * 1.4426950408889634
    seed = _dropout_seed(SEED, HAS_DROPOUT)
    # -- online softmax over key blocks
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    hi = _causal_key_end(N, pid_m, causal_offset, BLOCK_M, IS_CAUSAL)
    mid = _unmasked_key_end(N, pid_m, causal_offset, BLOCK_M, BLOCK_N, IS_CAUSAL)
    # NOTE: two loops with uniform bodies (no branch inside) so the compiler can pipeline K/V
    # loads: whole key blocks below the diagonal without masks, then the diagonal and the tail.
    acc, m_i, l_i = _fwd_range(acc, m_i, l_i, q, K_base, V_base, BIAS_base, MASK_base, 0, mid,
                               offs_m, offs_n0, offs_d, d_ok, M, N, skn, skd, svn, svd, sbm, sbn, smm, smn,
                               qk_scale, causal_offset, seed, pid_bh, dropout_p,
                               HAS_BIAS, HAS_MASK, IS_CAUSAL, HAS_DROPOUT, UPCAST, DOT_PREC, False, EVEN_D,
                               BLOCK_N)
    acc, m_i, l_i = _fwd_range(acc, m_i, l_i, q, K_base, V_base, BIAS_base, MASK_base, mid, hi,
                               offs_m, offs_n0, offs_d, d_ok, M, N, skn, skd, svn, svd, sbm, sbn, smm, smn,
                               qk_scale, causal_offset, seed, pid_bh, dropout_p,
                               HAS_BIAS, HAS_MASK, IS_CAUSAL, HAS_DROPOUT, UPCAST, DOT_PREC, True, EVEN_D,
                               BLOCK_N)
    # -- normalise, store out and natural-log lse
    out, lse = _softmax_finish(acc, m_i, l_i)
    o_ptrs = OUT + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=(offs_m[:, None] < M) & d_ok[None, :])
    tl.store(LSE + pid_bh * M + offs_m, lse, mask=offs_m < M)


@triton_jit
def attn_bwd_preprocess_kernel(OUT, DO, DELTA, sob, soh, som, sod, sdb, sdh, sdm, sdd, H, M, D,
                               BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta[b, h, m] = sum_d out * dout (the row term of the softmax gradient)."""
    _, pid_bh, b, h, offs_m, offs_d, _ = _block_prologue(H, D, BLOCK_M, BLOCK_D)
    ok = (offs_m[:, None] < M) & (offs_d[None, :] < D)
    o = tl.load(OUT + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, mask=ok, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdm + offs_d[None, :] * sdd, mask=ok, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * M + offs_m, delta, mask=offs_m < M)


@triton_jit
def _dkdv_range(dk, dv, k_t, v_t, Q_base, DO_base, BIAS_base, MASK_base, LSE, DELTA, pid_bh, lo, hi,
                offs_n, offs_m0, offs_d, d_ok, M, N, sqm, sqd, sdm, sdd, sbm, sbn, smm, smn,
                qk_scale, causal_offset, seed, dropout_p,
                HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
                HAS_DROPOUT: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
                MASKED: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """dK and dV contributions of query blocks [lo, hi) (masks only when ``MASKED``).

    Keys past N need no mask here: they only feed dK/dV rows that are never stored.
    """
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q = _load_rows(Q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd, offs_m, M, d_ok, MASKED, EVEN_D)
        do = _load_rows(DO_base + offs_m[:, None] * sdm + offs_d[None, :] * sdd, offs_m, M, d_ok, MASKED, EVEN_D)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse, delta = _row_stats(LSE, DELTA, pid_bh, offs_m, M)
        s = _score_tile(q, k_t, offs_m, offs_n, M, N, qk_scale, causal_offset,
                        BIAS_base, sbm, sbn, MASK_base, smm, smn,
                        HAS_BIAS, HAS_MASK, IS_CAUSAL, DOT_PREC, MASKED)
        p = tl.math.exp2(s - lse[:, None])
        dp = tl.dot(do, v_t, input_precision=DOT_PREC)
        pd = p
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, pid_bh, offs_m, offs_n, M, N, dropout_p)
            pd = tl.where(keep, p / (1.0 - dropout_p), 0.0)
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        dv += tl.dot(tl.trans(pd.to(do.dtype)), do, input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PREC)
    return dk, dv


@triton_jit
def _dq_range(dq, q, do, lse, delta, K_base, V_base, BIAS_base, MASK_base, DS, pid_bh, lo, hi,
              offs_m, offs_n0, offs_d, d_ok, M, N, skn, skd, svn, svd, sbm, sbn, smm, smn,
              qk_scale, causal_offset, seed, dropout_p,
              HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
              HAS_DROPOUT: tl.constexpr, UPCAST: tl.constexpr, STORE_DS: tl.constexpr, DOT_PREC: tl.constexpr,
              MASKED: tl.constexpr, EVEN_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ contributions of key blocks [lo, hi) (masks only when ``MASKED``)."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        k_t = _load_cols(K_base + offs_n[None, :] * skn + offs_d[:, None] * skd, offs_n, N, d_ok, MASKED, EVEN_D)
        v_t = _load_cols(V_base + offs_n[None, :] * svn + offs_d[:, None] * svd, offs_n, N, d_ok, MASKED, EVEN_D)
        if UPCAST:
            k_t = k_t.to(tl.float32)
            v_t = v_t.to(tl.float32)
        s = _score_tile(q, k_t, offs_m, offs_n, M, N, qk_scale, causal_offset,
                        BIAS_base, sbm, sbn, MASK_base, smm, smn,
                        HAS_BIAS, HAS_MASK, IS_CAUSAL, DOT_PREC, MASKED)
        p = tl.math.exp2(s - lse[:, None])
        dp = tl.dot(do, v_t, input_precision=DOT_PREC)
        if HAS_DROPOUT:
            keep = _dropout_keep(seed, pid_bh, offs_m, offs_n, M, N, dropout_p)
            dp = tl.where(keep, dp / (1.0 - dropout_p), 0.0)
        ds = p * (dp - delta[:, None])
        if STORE_DS:
            tl.store(DS + pid_bh.to(tl.int64) * M * N + offs_m[:, None] * N + offs_n[None, :], ds,
                     mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
        dq += tl.dot(ds.to(k_t.dtype), tl.trans(k_t), input_precision=DOT_PREC)
    return dq


@triton_jit
def attn_bwd_dkdv_kernel(
    Q, K, V, BIAS, MASK, SEED, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    sbb, sbh, sbm, sbn, smb, smh, smm, smn, sdb, sdh, sdm, sdd,
    sdkb, sdkh, sdkn, sdkd, sdvb, sdvh, sdvn, sdvd,
    H, HKV, M, N, D, GROUP, scale, dropout_p, causal_offset,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
):
    """dK and dV for one key block of one kv head, summed over the GROUP query heads sharing it."""
    pid_n, _, b, hk, offs_n, offs_d, d_ok = _block_prologue(HKV, D, BLOCK_N, BLOCK_D)
    offs_m0 = tl.arange(0, BLOCK_M)
    kv_ok = (offs_n[:, None] < N) & d_ok[None, :]
    k = tl.load(K + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=kv_ok, other=0.0)
    v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=kv_ok, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    k_t = tl.trans(k)
    v_t = tl.trans(v)
    qk_scale = scale * 1.4426950408889634
    seed = _dropout_seed(SEED, HAS_DROPOUT)
    dk = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
    dv = tl.full([BLOCK_N, BLOCK_D], 0.0, tl.float32)
    # query rows: [lo, diag) see part of this key block (causal diagonal, masked), [diag, full)
    # see all of it (no mask), [max(diag, full), M) is the row tail (masked)
    lo = 0
    diag = 0
    if IS_CAUSAL:
        lo = tl.maximum(pid_n * BLOCK_N - causal_offset, 0)
        lo = (lo // BLOCK_M) * BLOCK_M
        diag = tl.maximum(pid_n * BLOCK_N + BLOCK_N - 1 - causal_offset, 0)
        diag = tl.minimum(((diag + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, M)
    full = (M // BLOCK_M) * BLOCK_M
    for g in range(0, GROUP):
        h = hk * GROUP + g
        pid_bh = b * H + h
        Q_base = Q + b * sqb + h * sqh
        DO_base = DO + b * sdb + h * sdh
        BIAS_base = BIAS + b * sbb + h * sbh
        MASK_base = MASK + b * smb + h * smh
        dk, dv = _dkdv_range(dk, dv, k_t, v_t, Q_base, DO_base, BIAS_base, MASK_base, LSE, DELTA, pid_bh, lo, diag,
                             offs_n, offs_m0, offs_d, d_ok, M, N, sqm, sqd, sdm, sdd, sbm, sbn, smm, smn,
                             qk_scale, causal_offset, seed, dropout_p, HAS_BIAS, HAS_MASK, IS_CAUSAL,
                             HAS_DROPOUT, UPCAST, DOT_PREC, True, EVEN_D, BLOCK_M)
        dk, dv = _dkdv_range(dk, dv, k_t, v_t, Q_base, DO_base, BIAS_base, MASK_base, LSE, DELTA, pid_bh, diag, full,
                             offs_n, offs_m0, offs_d, d_ok, M, N, sqm, sqd, sdm, sdd, sbm, sbn, smm, smn,
                             qk_scale, causal_offset, seed, dropout_p, HAS_BIAS, HAS_MASK, IS_CAUSAL,
                             HAS_DROPOUT, UPCAST, DOT_PREC, False, EVEN_D, BLOCK_M)
        dk, dv = _dkdv_range(dk, dv, k_t, v_t, Q_base, DO_base, BIAS_base, MASK_base, LSE, DELTA, pid_bh,
                             tl.maximum(diag, full), M,
                             offs_n, offs_m0, offs_d, d_ok, M, N, sqm, sqd, sdm, sdd, sbm, sbn, smm, smn,
                             qk_scale, causal_offset, seed, dropout_p, HAS_BIAS, HAS_MASK, IS_CAUSAL,
                             HAS_DROPOUT, UPCAST, DOT_PREC, True, EVEN_D, BLOCK_M)
    dk = dk * scale
    tl.store(DK + b * sdkb + hk * sdkh + offs_n[:, None] * sdkn + offs_d[None, :] * sdkd,
             dk.to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + b * sdvb + hk * sdvh + offs_n[:, None] * sdvn + offs_d[None, :] * sdvd,
             dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton_jit
def attn_bwd_dq_kernel(
    Q, K, V, BIAS, MASK, SEED, DO, LSE, DELTA, DQ, DS,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    sbb, sbh, sbm, sbn, smb, smh, smm, smn, sdb, sdh, sdm, sdd,
    sdqb, sdqh, sdqm, sdqd,
    H, M, N, D, GROUP, scale, dropout_p, causal_offset,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_DROPOUT: tl.constexpr, UPCAST: tl.constexpr, STORE_DS: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, EVEN_D: tl.constexpr,
):
    """dQ for one query block; optionally stores dS (= d bias) into a [B, H, M, N] buffer."""
    pid_m, pid_bh, b, h, offs_m, offs_d, d_ok = _block_prologue(H, D, BLOCK_M, BLOCK_D)
    hk = h // GROUP
    offs_n0 = tl.arange(0, BLOCK_N)
    q_ok = (offs_m[:, None] < M) & d_ok[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=q_ok, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + offs_m[:, None] * sdm + offs_d[None, :] * sdd, mask=q_ok, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse, delta = _row_stats(LSE, DELTA, pid_bh, offs_m, M)
    K_base = K + b * skb + hk * skh
    V_base = V + b * svb + hk * svh
    BIAS_base = BIAS + b * sbb + h * sbh
    MASK_base = MASK + b * smb + h * smh
    qk_scale = scale * 1.4426950408889634
    seed = _dropout_seed(SEED, HAS_DROPOUT)
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    hi = _causal_key_end(N, pid_m, causal_offset, BLOCK_M, IS_CAUSAL)
    mid = _unmasked_key_end(N, pid_m, causal_offset, BLOCK_M, BLOCK_N, IS_CAUSAL)
    dq = _dq_range(dq, q, do, lse, delta, K_base, V_base, BIAS_base, MASK_base, DS, pid_bh, 0, mid,
                   offs_m, offs_n0, offs_d, d_ok, M, N, skn, skd, svn, svd, sbm, sbn, smm, smn,
                   qk_scale, causal_offset, seed, dropout_p, HAS_BIAS, HAS_MASK, IS_CAUSAL, HAS_DROPOUT,
                   UPCAST, STORE_DS, DOT_PREC, False, EVEN_D, BLOCK_N)
    dq = _dq_range(dq, q, do, lse, delta, K_base, V_base, BIAS_base, MASK_base, DS, pid_bh, mid, hi,
                   offs_m, offs_n0, offs_d, d_ok, M, N, skn, skd, svn, svd, sbm, sbn, smm, smn,
                   qk_scale, causal_offset, seed, dropout_p, HAS_BIAS, HAS_MASK, IS_CAUSAL, HAS_DROPOUT,
                   UPCAST, STORE_DS, DOT_PREC, True, EVEN_D, BLOCK_N)
    dq = dq * scale
    tl.store(DQ + b * sdqb + h * sdqh + offs_m[:, None] * sdqm + offs_d[None, :] * sdqd,
             dq.to(DQ.dtype.element_ty), mask=q_ok)


@triton_jit
def attn_decode_split_kernel(
    Q, K, V, BIAS, MASK, OPART, LPART,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
    sbb, sbh, sbm, sbn, smb, smh, smm, smn,
    H, HKV, M, N, D, GROUP, scale, causal_offset, chunk, NUM_SPLITS,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Decode: one program per (key split, batch*kv head, row block) over ``chunk`` keys.

    Rows pack the GROUP query heads that share a kv head (row r -> head r // M, query r % M),
    so a 1-token query still fills a dot tile and K/V are read once per group. Writes the
    split's normalised partial output and its lse to OPART [B, H, M, S, D] / LPART [B, H, M, S].
    """
    pid_s = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    pid_r = tl.program_id(2)
    b, hk = _batch_head(pid_bhk, HKV)
    offs_r = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = offs_r < GROUP * M
    g = offs_r // M
    offs_m = offs_r % M
    h = hk * GROUP + g
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    q = tl.load(Q + b * sqb + h[:, None] * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=r_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    lo = pid_s * chunk
    hi = tl.minimum(lo + chunk, N)
    if IS_CAUSAL:
        hi = tl.minimum(hi, M - 1 + causal_offset + 1)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        kv_ok = n_ok[None, :] & d_ok[:, None]
        k_t = tl.load(K + b * skb + hk * skh + offs_n[None, :] * skn + offs_d[:, None] * skd, mask=kv_ok, other=0.0)
        if UPCAST:
            k_t = k_t.to(tl.float32)
        s = tl.dot(q, k_t, input_precision=DOT_PREC) * qk_scale
        valid = n_ok[None, :] & r_ok[:, None]
        if IS_CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
        tile_ok = r_ok[:, None] & n_ok[None, :]
        if HAS_MASK:
            mk = tl.load(MASK + b * smb + h[:, None] * smh + offs_m[:, None] * smm + offs_n[None, :] * smn,
                         mask=tile_ok, other=0)
            valid = valid & (mk != 0)
        if HAS_BIAS:
            bias = tl.load(BIAS + b * sbb + h[:, None] * sbh + offs_m[:, None] * sbm + offs_n[None, :] * sbn,
                           mask=tile_ok, other=0.0)
            s = s + bias.to(tl.float32) * 1.4426950408889634
        s = tl.where(valid, s, float("-inf"))
        p, alpha, m_new, l_i = _softmax_step(s, m_i, l_i)
        v = tl.load(V + b * svb + hk * svh + offs_n[:, None] * svn + offs_d[None, :] * svd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    out, lse = _softmax_finish(acc, m_i, l_i)
    row = (b * H + h) * M + offs_m
    tl.store(OPART + (row[:, None] * NUM_SPLITS + pid_s) * D + offs_d[None, :], out,
             mask=r_ok[:, None] & d_ok[None, :])
    tl.store(LPART + row * NUM_SPLITS + pid_s, lse, mask=r_ok)


@triton_jit
def attn_decode_combine_kernel(OPART, LPART, OUT, LSE, sob, soh, som, sod, H, M, D, NUM_SPLITS,
                               BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Combine the split partial softmaxes of one query row: lse = logsumexp, out = weighted sum."""
    row = tl.program_id(0)
    bh = row // M
    m = row % M
    b, h = _batch_head(bh, H)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_ok = offs_s < NUM_SPLITS
    lse_s = tl.load(LPART + row * NUM_SPLITS + offs_s, mask=s_ok, other=float("-inf"))
    m_max = tl.max(lse_s, 0)
    m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
    w = tl.exp(lse_s - m_safe)
    total = tl.sum(w, 0)
    o_s = tl.load(OPART + (row * NUM_SPLITS + offs_s[:, None]) * D + offs_d[None, :],
                  mask=s_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    denom = tl.where(total == 0.0, 1.0, total)
    out = tl.sum(o_s * w[:, None], 0) / denom
    lse = tl.where(total == 0.0, float("-inf"), m_safe + tl.log(denom))
    tl.store(OUT + b * sob + h * soh + m * som + offs_d * sod, out.to(OUT.dtype.element_ty), mask=offs_d < D)
    tl.store(LSE + row, lse)
