"""C++ text of the CPU block-sparse attention library (forward) and its XAttention estimator.

The library is the dense attention library of :mod:`.attention_source` (same variant: head dim,
dtype) plus two entry points that reuse its packing, micro-kernels and online softmax:

* ``tw_bsattn_fwd``: flash-attention forward that visits only the key blocks a CSR block index
  keeps for each (batch, head, query block): ``rowptr`` [B*H*nmb + 1] (int64) and ``cols``
  (int32, ascending key-block ids). Query and key blocks are both ``block`` long. OpenMP over
  (batch, head, query block) with dynamic scheduling (rows keep different numbers of blocks); each
  thread packs a key block's K and V into float32 tiles the first time it meets it for a
  (batch, kv head), so dropped blocks are never read and grouped-query heads share the packing
  without copies. Causal limits and the end of the keys are applied inside the kept blocks
  exactly as in the dense kernel.
* ``tw_xattn_scores``: XAttention's strided antidiagonal block scores, fused. For stride S,
  reduced query a and reduced key c score ``sum_s q[a*S + S-1-s] . k[c*S + s]`` (one GEMM of
  [M/S, D*S] x [D*S, N/S], a 1/S share of the dense products), scaled by ``scale / S``; each
  reduced row is softmaxed over its visible reduced keys (causal at the reduced level) and its
  probabilities are summed into [query block, key block] scores, averaged over the block's rows
  (every row of the output sums to 1). Selection from these scores is done by the caller.
"""
from __future__ import annotations

SPARSE_FORWARD = r"""
// dims: B, H, HKV, M, N, causal_offset, block, threads, flags (1: causal)
// st: q, k, v, out strides (4 each)
extern "C" void tw_bsattn_fwd(const void* qp, const void* kp, const void* vp, void* outp, float* lse,
                              const int64_t* rowptr, const int32_t* cols, const int64_t* dims, const int64_t* st,
                              double scale) {
  const int64_t full[12] = {dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], dims[6], dims[7], 0, 0,
                            dims[8] & 1};
  tw_attn_args a; tw_args(a, full, scale, 0.0);
  static const int64_t zero4[4] = {0, 0, 0, 0};
  a.qs = st; a.ks = st + 4; a.vs = st + 8; a.bs = zero4; a.ms = zero4;
  a.bias = nullptr; a.mask = nullptr;
  const int64_t* os = st + 12;
  const tw_t* q = (const tw_t*)qp; const tw_t* k = (const tw_t*)kp; const tw_t* v = (const tw_t*)vp;
  tw_t* out = (tw_t*)outp;
  const int64_t bm = a.bm, bn = a.bn, nkb = (a.N + bn - 1) / bn, nmb = (a.M + bm - 1) / bm;
  const int64_t kv_stride = nkb * bn * TW_DP;
#pragma omp parallel num_threads(tw_nthreads(a.threads))
  {
    std::unique_ptr<float[]> kt_buf(new float[(size_t)kv_stride]), vr_buf(new float[(size_t)kv_stride]);
    float* kt = kt_buf.get();
    float* vr = vr_buf.get();
    std::vector<int64_t> tag((size_t)nkb, -1);  // (batch, kv head) whose block is packed in each slot
    std::vector<float> Q((size_t)(bm * TW_DP)), O((size_t)(bm * TW_DP)), S((size_t)(bm * bn)), m((size_t)bm), l((size_t)bm);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < a.B * a.H * nmb; ++t) {
      const int64_t mb = t % nmb, bh = t / nmb, b = bh / a.H, h = bh % a.H, hk = h / a.group;
      const int64_t i0 = mb * bm, rows = std::min(bm, a.M - i0), rows4 = (rows + 3) & ~(int64_t)3;
      const int64_t cur = b * a.HKV + hk;
      tw_load_rows(q, a.qs, b, h, i0, rows, bm, a.scale, Q.data());
      std::fill(O.begin(), O.end(), 0.0f);
      std::fill(m.begin(), m.end(), TW_NEG_INF);
      std::fill(l.begin(), l.end(), 0.0f);
      const int64_t kend = tw_key_end(a, i0 + rows - 1);
      for (int64_t p = rowptr[t]; p < rowptr[t + 1]; ++p) {
        const int64_t kb = cols[p], j0 = kb * bn;
        if (kb < 0 || j0 >= kend) continue;
        if (tag[(size_t)kb] != cur) {
          tw_pack(k, a.ks, b, hk, j0, a.N, bn, kt + j0 * TW_DP, nullptr);
          tw_pack(v, a.vs, b, hk, j0, a.N, bn, nullptr, vr + j0 * TW_DP);
          tag[(size_t)kb] = cur;
        }
        tw_gemm_nt(Q.data(), TW_DP, kt + j0 * TW_DP, bn, S.data(), bn, rows4, bn, TW_D);
        tw_finish_scores(a, b, h, i0, rows, j0, bn, S.data());
        for (int64_t r = 0; r < rows; ++r) tw_softmax_update(S.data() + r * bn, bn, m[r], l[r], O.data() + r * TW_DP);
        tw_gemm_acc(S.data(), bn, 1, vr + j0 * TW_DP, TW_DP, O.data(), TW_DP, rows4, TW_DP, bn);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
        tw_t* dst = out + b * os[0] + h * os[1] + (i0 + r) * os[2];
        for (int64_t d = 0; d < TW_D; ++d) dst[d * os[3]] = tw_st(O[r * TW_DP + d] * inv);
        lse[(b * a.H + h) * a.M + i0 + r] = l[r] > 0.0f ? m[r] + tw_log(l[r]) : TW_NEG_INF;
      }
    }
  }
}
"""

ESTIMATE = r"""
// dims: B, H, HKV, M, N, causal_offset, block, stride, threads, flags (1: causal)
// st: q, k strides; scores: [B, H, nmb, nkb] float32 (written whole)
extern "C" void tw_xattn_scores(const void* qp, const void* kp, float* scores, const int64_t* dims,
                                const int64_t* st, double scale) {
  const int64_t B = dims[0], H = dims[1], HKV = dims[2], M = dims[3], N = dims[4], off = dims[5];
  const int64_t block = dims[6], S = dims[7], threads = dims[8] > 0 ? dims[8] : 1;
  const bool causal = (dims[9] & 1) != 0;
  const int64_t group = H / HKV, Mr = (M + S - 1) / S, Nr = (N + S - 1) / S, Nrp = (Nr + 63) / 64 * 64;
  const int64_t DS = TW_D * S, rb = block / S, nmb = (M + block - 1) / block, nkb = (N + block - 1) / block;
  const int64_t* qs = st; const int64_t* ks = st + 4;
  const tw_t* q = (const tw_t*)qp; const tw_t* k = (const tw_t*)kp;
  const float sc = (float)(scale / (double)S);
  std::unique_ptr<float[]> kt_buf(new float[(size_t)(B * HKV * DS * Nrp)]);
  float* KT = kt_buf.get();
#pragma omp parallel num_threads(tw_nthreads(threads))
  {
    // reduced keys, transposed in panels of 64: KT[bhk][c / 64][s*D + d][c % 64] = k[b, hk, c*S + s, d]
    // (0 past N; contiguous panels, so the GEMM never strides across a whole row of reduced keys)
#pragma omp for schedule(static)
    for (int64_t t = 0; t < B * HKV * Nrp; ++t) {
      const int64_t c = t % Nrp, bhk = t / Nrp, b = bhk / HKV, hk = bhk % HKV;
      float* dst = KT + bhk * DS * Nrp + (c / 64) * DS * 64 + c % 64;
      for (int64_t s = 0; s < S; ++s) {
        const int64_t j = c * S + s;
        const tw_t* src = k + b * ks[0] + hk * ks[1] + j * ks[2];
        for (int64_t d = 0; d < TW_D; ++d) dst[(s * TW_D + d) * 64] = j < N ? tw_ld(src[d * ks[3]]) : 0.0f;
      }
    }
    // tasks of several query blocks (about 32 reduced rows) so each K panel read is reused
    const int64_t per = std::max<int64_t>(1, 32 / rb), ntask = (nmb + per - 1) / per;
    const int64_t rmax = per * rb, rmax4 = (rmax + 3) & ~(int64_t)3;
    std::vector<float> Qr((size_t)(rmax4 * DS)), T((size_t)(rmax4 * Nrp)), acc((size_t)nkb);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < B * H * ntask; ++t) {
      const int64_t task = t % ntask, bh = t / ntask, b = bh / H, h = bh % H, hk = h / group;
      const int64_t mb0 = task * per, nblk = std::min(per, nmb - mb0);
      const int64_t a0 = mb0 * rb, rows = std::min(nblk * rb, Mr - a0), rows4 = (rows + 3) & ~(int64_t)3;
      // reduced queries: Qr[r][s*D + d] = q[(a0 + r)*S + S-1-s, d] (0 past M)
      for (int64_t r = 0; r < rows4; ++r)
        for (int64_t s = 0; s < S; ++s) {
          const int64_t i = (a0 + r) * S + S - 1 - s;
          const tw_t* src = q + b * qs[0] + h * qs[1] + i * qs[2];
          for (int64_t d = 0; d < TW_D; ++d)
            Qr[(size_t)(r * DS + s * TW_D + d)] = (r < rows && i < M) ? tw_ld(src[d * qs[3]]) : 0.0f;
        }
      // visible reduced keys of the last reduced row (causal at the reduced level)
      int64_t cend = Nr;
      if (causal) cend = std::min(Nr, std::max<int64_t>(0, ((a0 + rows) * S - 1 + off) / S + 1));
      const int64_t cols16 = (cend + 15) / 16 * 16;
      const float* kt = KT + (b * HKV + hk) * DS * Nrp;
      for (int64_t c0 = 0; c0 < cols16; c0 += 64)
        tw_gemm_nt(Qr.data(), DS, kt + c0 * DS, 64, T.data() + c0, Nrp, rows4, std::min<int64_t>(64, cols16 - c0), DS);
      for (int64_t blk = 0; blk < nblk; ++blk) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        int64_t counted = 0;
        for (int64_t r = blk * rb; r < std::min(rows, (blk + 1) * rb); ++r) {
          const int64_t a = a0 + r;
          int64_t ce = Nr;
          if (causal) {
            const int64_t last = a * S + S - 1 + off;  // the reduced row's last query sees keys <= last
            ce = last < 0 ? 0 : std::min(Nr, last / S + 1);
          }
          if (ce <= 0) continue;
          float* row = T.data() + r * Nrp;
          float mx = TW_NEG_INF;
          for (int64_t c = 0; c < ce; ++c) { row[c] *= sc; mx = row[c] > mx ? row[c] : mx; }
          float sum = 0.0f;
          for (int64_t c = 0; c < ce; ++c) { row[c] = tw_exp_neg(row[c] - mx); sum += row[c]; }
          const float inv = 1.0f / sum;
          for (int64_t c = 0; c < ce; ++c) acc[(size_t)((c * S) / block)] += row[c] * inv;
          ++counted;
        }
        float* dst = scores + (bh * nmb + mb0 + blk) * nkb;
        const float norm = counted > 0 ? 1.0f / (float)counted : 0.0f;
        for (int64_t kb = 0; kb < nkb; ++kb) dst[kb] = acc[(size_t)kb] * norm;
      }
    }
  }
}
"""


SELECT = r"""
// XAttention's selection as CSR, per row r = (b*H + h)*nmb + mb of scores [rows][nkb]: the visible key
// blocks (kb < vis_end[mb]) by descending score (ties: lower kb first) until the kept scores reach
// threshold * the row's total, plus block 0 and blocks flo[mb]..fhi[mb] (the diagonal). Writes
// rowptr [rows + 1] and ascending cols (capacity rows * nkb); returns the number kept.
extern "C" int64_t tw_select_blocks(const float* scores, int64_t rows, int64_t nmb, int64_t nkb, double threshold,
                                    const int64_t* vis_end, const int64_t* flo, const int64_t* fhi, int64_t threads,
                                    int64_t* rowptr, int32_t* cols) {
#pragma omp parallel num_threads(tw_nthreads(threads > 0 ? threads : 1))
  {
    std::vector<int32_t> order((size_t)nkb);
    std::vector<uint8_t> keep((size_t)nkb);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t mb = r % nmb, vend = std::min(nkb, vis_end[mb]);
      const float* s = scores + r * nkb;
      std::fill(keep.begin(), keep.end(), (uint8_t)0);
      double total = 0.0;
      for (int64_t kb = 0; kb < vend; ++kb) { order[(size_t)kb] = (int32_t)kb; total += std::max(s[kb], 0.0f); }
      std::stable_sort(order.begin(), order.begin() + vend,
                       [s](int32_t x, int32_t y) { return std::max(s[x], 0.0f) > std::max(s[y], 0.0f); });
      double acc = 0.0;
      for (int64_t t = 0; t < vend; ++t) {
        if (!(acc < threshold * total)) break;
        const int32_t kb = order[(size_t)t];
        keep[(size_t)kb] = 1;
        acc += std::max(s[kb], 0.0f);
      }
      if (vend > 0) keep[0] = 1;
      for (int64_t kb = std::max<int64_t>(flo[mb], 0); kb <= std::min(fhi[mb], vend - 1); ++kb) keep[(size_t)kb] = 1;
      int64_t count = 0;
      int32_t* dst = cols + r * nkb;
      for (int64_t kb = 0; kb < vend; ++kb) if (keep[(size_t)kb]) dst[count++] = (int32_t)kb;
      rowptr[r + 1] = count;
    }
  }
  rowptr[0] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t count = rowptr[r + 1];
    if (rowptr[r] != r * nkb) std::memmove(cols + rowptr[r], cols + r * nkb, (size_t)count * sizeof(int32_t));
    rowptr[r + 1] = rowptr[r] + count;
  }
  return rowptr[rows];
}
"""


MINFERENCE = r"""
// MInference's statistics from the scaled scores of the last `last` queries (scores [B*H][last][N],
// from a GEMM): each row softmaxed over its visible keys (causal) and summed per key block
// (vert [B*H][nkb]) and per slash band floor((i + off - j) / block) - lo (slash [B*H][nbands]).
// dims: B*H, M, N, causal_offset, block, last, threads, flags (1 causal), lo, nbands.
extern "C" void tw_minference_stats(float* scores, float* vert, float* slash, const int64_t* dims) {
  const int64_t BH = dims[0], M = dims[1], N = dims[2], off = dims[3], block = dims[4], last = dims[5];
  const int64_t threads = dims[6] > 0 ? dims[6] : 1, lo = dims[8], nbands = dims[9];
  const bool causal = (dims[7] & 1) != 0;
  const int64_t nkb = (N + block - 1) / block;
#pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(dynamic, 1)
  for (int64_t bh = 0; bh < BH; ++bh) {
    float* vo = vert + bh * nkb;
    float* so = slash + bh * nbands;
    for (int64_t x = 0; x < nkb; ++x) vo[x] = 0.0f;
    for (int64_t x = 0; x < nbands; ++x) so[x] = 0.0f;
    for (int64_t r = 0; r < last; ++r) {
      const int64_t i = M - last + r;
      float* srow = scores + (bh * last + r) * N;
      const int64_t end = causal ? std::min(N, std::max<int64_t>(0, i + off + 1)) : N;
      if (end <= 0) continue;
      float mx = TW_NEG_INF;
      for (int64_t j = 0; j < end; ++j) mx = srow[j] > mx ? srow[j] : mx;
      float sum = 0.0f;
      for (int64_t j = 0; j < end; ++j) { srow[j] = tw_exp_neg(srow[j] - mx); sum += srow[j]; }
      const float inv = 1.0f / sum;
      for (int64_t j0 = 0; j0 < end; j0 += block) {
        const int64_t j1 = std::min(end, j0 + block);
        float acc = 0.0f;
        for (int64_t j = j0; j < j1; ++j) acc += srow[j];
        vo[j0 / block] += acc * inv;
      }
      for (int64_t j = 0; j < end; ++j) {
        const int64_t o = i + off - j;
        const int64_t band = (o >= 0 ? o / block : -((-o + block - 1) / block)) - lo;
        if (band >= 0 && band < nbands) so[band] += srow[j] * inv;
      }
    }
  }
}

// The CSR of a vertical-slash pattern (same semantics as tilewright.sparsity.attention.index):
// vertical [B*H][nv] key blocks, slash [B*H][ns] bands; rows (b*H + h)*nmb + mb; cols capacity rows*nkb.
// dims: B, H, M, N, block, causal_offset, flags (1 causal), nv, ns, threads. Returns the number kept.
extern "C" int64_t tw_vertical_slash_csr(const int64_t* vertical, const int64_t* slash, const int64_t* dims,
                                         int64_t* rowptr, int32_t* cols) {
  const int64_t B = dims[0], H = dims[1], M = dims[2], N = dims[3], bn = dims[4], off = dims[5];
  const bool causal = (dims[6] & 1) != 0;
  const int64_t nv = dims[7], ns = dims[8], threads = dims[9] > 0 ? dims[9] : 1;
  const int64_t nmb = (M + bn - 1) / bn, nkb = (N + bn - 1) / bn, rows = B * H * nmb;
  auto fdiv = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
#pragma omp parallel num_threads(tw_nthreads(threads))
  {
    std::vector<uint8_t> keep((size_t)nkb);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t mb = r % nmb, bh = r / nmb;
      const int64_t i0 = mb * bn, iend = std::min(i0 + bn, M) - 1;
      int64_t vend = nkb;
      if (causal) vend = iend + off < 0 ? 0 : std::min(nkb, (iend + off) / bn + 1);
      std::fill(keep.begin(), keep.end(), (uint8_t)0);
      for (int64_t x = 0; x < nv; ++x) {
        const int64_t kb = vertical[bh * nv + x];
        if (kb >= 0 && kb < nkb) keep[(size_t)kb] = 1;
      }
      for (int64_t x = 0; x < ns; ++x) {
        const int64_t sb = slash[bh * ns + x];
        const int64_t jl = std::max<int64_t>(0, i0 + off - (sb + 1) * bn + 1);
        const int64_t jh = std::min<int64_t>(N - 1, iend + off - sb * bn);
        if (jl > jh) continue;
        for (int64_t kb = fdiv(jl, bn); kb <= fdiv(jh, bn); ++kb) keep[(size_t)kb] = 1;
      }
      int64_t count = 0;
      int32_t* dst = cols + r * nkb;
      for (int64_t kb = 0; kb < vend; ++kb) if (keep[(size_t)kb]) dst[count++] = (int32_t)kb;
      rowptr[r + 1] = count;
    }
  }
  rowptr[0] = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t count = rowptr[r + 1];
    if (rowptr[r] != r * nkb) std::memmove(cols + rowptr[r], cols + r * nkb, (size_t)count * sizeof(int32_t));
    rowptr[r + 1] = rowptr[r] + count;
  }
  return rowptr[rows];
}
"""


def sparse_attention_source(head_dim: int, dtype: str) -> str:
    """The C++ text of the block-sparse library for one head dim and dtype (after the prelude)."""
    from .attention_source import AttentionVariant, attention_source

    return "\n".join([attention_source(AttentionVariant(head_dim, dtype)), SPARSE_FORWARD, ESTIMATE, SELECT, MINFERENCE])
