"""The forward and backward entry points of the CPU attention library (see :mod:`.attention_source`).

``dims`` and ``strides`` are int64 arrays (sizes, the schedule and every tensor's strides, in
elements; broadcast dims of a bias or mask have stride 0), so one library serves any sizes.
"""
from __future__ import annotations

FORWARD = r"""
// dims: B, H, HKV, M, N, causal_offset, BLOCK_M, BLOCK_N, threads, FUSED_DQ, dropout seed,
// flags (1: causal, 2: bias, 4: mask)
static void tw_args(tw_attn_args& a, const int64_t* dims, double scale, double dropout_p) {
  a.drop_p = (float)dropout_p;
  a.drop_scale = dropout_p > 0.0 ? (float)(1.0 / (1.0 - dropout_p)) : 1.0f;
  a.seed = (uint64_t)dims[10];
  a.causal = (dims[11] & 1) != 0; a.has_bias = (dims[11] & 2) != 0; a.has_mask = (dims[11] & 4) != 0;
  a.B = dims[0]; a.H = dims[1]; a.HKV = dims[2]; a.M = dims[3]; a.N = dims[4]; a.causal_offset = dims[5];
  a.bm = dims[6]; a.bn = dims[7]; a.threads = dims[8] > 0 ? dims[8] : 1; a.group = a.H / a.HKV;
  a.scale = (float)scale;
}

// Online-softmax update of row r with the tile's scores s[0..bn): s becomes the probabilities
// relative to the new running max; the accumulator row is rescaled.
static inline void tw_softmax_update(float* s, int64_t bn, float& m, float& l, float* o) {
  tw_v16 mv = tw_vld(s);  // bn is a multiple of 16: lane-wise maxima, then across lanes
  for (int64_t j = 16; j < bn; j += 16) { const tw_v16 x = tw_vld(s + j); mv = x > mv ? x : mv; }
  float mx = mv[0];
  for (int k = 1; k < 16; ++k) mx = mv[k] > mx ? mv[k] : mx;
  const float mnew = mx > m ? mx : m;
  if (mnew == TW_NEG_INF) {  // nothing kept so far
    for (int64_t j = 0; j < bn; ++j) s[j] = 0.0f;
    return;
  }
  const float alpha = tw_exp(m - mnew);
  tw_v16 sv = {};
  for (int64_t j = 0; j < bn; j += 16) {
    const tw_v16 p = tw_vexp_neg(tw_vld(s + j) - mnew);
    tw_vst(s + j, p);
    sv += p;
  }
  l = l * alpha + tw_hsum(sv);
  m = mnew;
  if (alpha != 1.0f) {
#pragma omp simd
    for (int64_t d = 0; d < TW_DP; ++d) o[d] *= alpha;
  }
}

extern "C" void tw_attn_fwd(const void* qp, const void* kp, const void* vp, const void* bias, const void* mask,
                            void* outp, float* lse, const int64_t* dims, const int64_t* st, double scale,
                            double dropout_p) {
  tw_attn_args a; tw_args(a, dims, scale, dropout_p);
  a.qs = st; a.ks = st + 4; a.vs = st + 8; a.bs = st + 12; a.ms = st + 16;
  const int64_t* os = st + 20;
  a.bias = bias; a.mask = (const uint8_t*)mask;
  const tw_t* q = (const tw_t*)qp; const tw_t* k = (const tw_t*)kp; const tw_t* v = (const tw_t*)vp;
  tw_t* out = (tw_t*)outp;
  const int64_t bm = a.bm, bn = a.bn, nkb = (a.N + bn - 1) / bn, nmb = (a.M + bm - 1) / bm;
  const int64_t kv_stride = nkb * bn * TW_DP;
  // One parallel region, one barrier (a shared machine may deschedule a thread at any barrier):
  // contiguous chunks of (batch, head, query block) tasks per thread (every head has the same
  // work, so causal chunks balance too); a thread packs the K and V of each (batch, kv head) it
  // meets into its own buffers (packing writes every element the kernels read: no zero-fill).
#pragma omp parallel num_threads(tw_nthreads(a.threads))
  {
    std::unique_ptr<float[]> kt_buf(new float[(size_t)kv_stride]), vr_buf(new float[(size_t)kv_stride]);
    float* kt = kt_buf.get();
    float* vr = vr_buf.get();
    int64_t packed = -1;
    std::vector<float> Q((size_t)(bm * TW_DP)), O((size_t)(bm * TW_DP)), S((size_t)(bm * bn)), m((size_t)bm), l((size_t)bm);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < a.B * a.H * nmb; ++t) {
      const int64_t mb = t % nmb, bh = t / nmb, b = bh / a.H, h = bh % a.H, hk = h / a.group;
      const int64_t i0 = mb * bm, rows = std::min(bm, a.M - i0), rows4 = (rows + 3) & ~(int64_t)3;
      if (packed != b * a.HKV + hk) {
        for (int64_t kb = 0; kb < nkb; ++kb) {
          tw_pack(k, a.ks, b, hk, kb * bn, a.N, bn, kt + kb * bn * TW_DP, nullptr);
          tw_pack(v, a.vs, b, hk, kb * bn, a.N, bn, nullptr, vr + kb * bn * TW_DP);
        }
        packed = b * a.HKV + hk;
      }
      tw_load_rows(q, a.qs, b, h, i0, rows, bm, a.scale, Q.data());
      std::fill(O.begin(), O.end(), 0.0f);
      std::fill(m.begin(), m.end(), TW_NEG_INF);
      std::fill(l.begin(), l.end(), 0.0f);
      const int64_t kend = tw_key_end(a, i0 + rows - 1);
      const size_t kv = 0;
      for (int64_t j0 = 0; j0 < kend; j0 += bn) {
        if (tw_tile_empty(a, b, h, i0, rows, j0, std::min(bn, a.N - j0))) continue;
        tw_gemm_nt(Q.data(), TW_DP, kt + kv + j0 * TW_DP, bn, S.data(), bn, rows4, bn, TW_D);
        tw_finish_scores(a, b, h, i0, rows, j0, bn, S.data());
        for (int64_t r = 0; r < rows; ++r) {
          tw_softmax_update(S.data() + r * bn, bn, m[r], l[r], O.data() + r * TW_DP);
          if (a.drop_p > 0.0f) tw_dropout_row(a, bh, i0 + r, j0, std::min(bn, a.N - j0), S.data() + r * bn);
        }
        tw_gemm_acc(S.data(), bn, 1, vr + kv + j0 * TW_DP, TW_DP, O.data(), TW_DP, rows4, TW_DP, bn);
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

BACKWARD = r"""
// P = exp(S - lse) of rows [0, rows) (0 for rows without any kept key); then, with dP given,
// dS = P * (dP - delta) in place of dP.
static inline void tw_probs(float* S, int64_t rows, int64_t bn, const float* lse) {
  for (int64_t r = 0; r < rows; ++r) {
    float* s = S + r * bn;
    const float mr = lse[r];
    if (mr == TW_NEG_INF) { for (int64_t j = 0; j < bn; ++j) s[j] = 0.0f; continue; }
    for (int64_t j = 0; j < bn; j += 16) tw_vst(s + j, tw_vexp_neg(tw_vld(s + j) - mr));
  }
}

// With dropout: dS = P * (keep ? dP / (1 - p) : 0 - delta), and P becomes the dropped P the dV product needs.
static inline void tw_dscores_dropout(const tw_attn_args& a, int64_t bh, int64_t i0, int64_t j0, float* P, float* dP,
                                      int64_t rows, const float* delta) {
  const int64_t bn = a.bn, cols = std::min(bn, a.N - j0);
  for (int64_t r = 0; r < rows; ++r) {
    const float dr = delta[r];
    const uint64_t base = (uint64_t)((bh * a.M + i0 + r) * a.N + j0);
    float* p = P + r * bn;
    float* dp = dP + r * bn;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
      const bool keep = tw_uniform(a.seed, base + (uint64_t)j) >= a.drop_p;
      dp[j] = p[j] * ((keep ? dp[j] * a.drop_scale : 0.0f) - dr);
      p[j] = keep ? p[j] * a.drop_scale : 0.0f;
    }
    for (int64_t j = cols; j < bn; ++j) { dp[j] = 0.0f; p[j] = 0.0f; }
  }
}

static inline void tw_dscores(const float* P, float* dP, int64_t rows, int64_t bn, const float* delta) {
  for (int64_t r = 0; r < rows; ++r) {
    const float dr = delta[r];
#pragma omp simd
    for (int64_t j = 0; j < bn; ++j) dP[r * bn + j] = P[r * bn + j] * (dP[r * bn + j] - dr);
  }
}

struct tw_bwd_ctx {
  tw_attn_args a;
  const tw_t *q, *dout;
  const float *lse, *delta, *kt, *vt, *kr;
  const int64_t* dos;
  const tw_t *k, *v;
  int64_t nkb, nmb, kv_stride;
  int64_t kv_head_stride;  // kv_stride for buffers of every (batch, kv head); 0 for one head's buffers
};

// S, P and dS of the (query block at i0, key block at j0) tile of head h; Q scaled, dO loaded.
static void tw_bwd_tile(const tw_bwd_ctx& c, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0,
                        const float* Q, const float* dO, float* S, float* dP) {
  const tw_attn_args& a = c.a;
  const int64_t bn = a.bn, rows4 = (rows + 3) & ~(int64_t)3, hk = h / a.group;
  const size_t kv = (size_t)((b * a.HKV + hk) * c.kv_head_stride + j0 * TW_DP);
  const int64_t row = (b * a.H + h) * a.M + i0;
  tw_gemm_nt(Q, TW_DP, c.kt + kv, bn, S, bn, rows4, bn, TW_D);
  tw_finish_scores(a, b, h, i0, rows, j0, bn, S);
  tw_probs(S, rows, bn, c.lse + row);
  tw_gemm_nt(dO, TW_DP, c.vt + kv, bn, dP, bn, rows4, bn, TW_D);
  if (a.drop_p > 0.0f)
    tw_dscores_dropout(a, b * a.H + h, i0, j0, S, dP, rows, c.delta + row);
  else
    tw_dscores(S, dP, rows, bn, c.delta + row);
}

// Row i of dS into the bias-gradient buffer ds [B, H, M, N].
static inline void tw_store_ds(const tw_attn_args& a, float* ds, int64_t b, int64_t h, int64_t i0, int64_t rows,
                               int64_t j0, const float* dS) {
  const int64_t cols = std::min(a.bn, a.N - j0);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(ds + ((b * a.H + h) * a.M + i0 + r) * a.N + j0, dS + r * a.bn, (size_t)cols * 4);
}

struct tw_bwd_scratch {
  std::vector<float> Q, dO, S, dP, dK, dV;
  tw_bwd_scratch(int64_t bm, int64_t bn)
      : Q((size_t)(bm * TW_DP)), dO((size_t)(bm * TW_DP)), S((size_t)(bm * bn)), dP((size_t)(bm * bn)),
        dK((size_t)(bn * TW_DP)), dV((size_t)(bn * TW_DP)) {}
};

// dK and dV of key block kb of (b, kv head hk), summed over the group's query heads; with dqacc
// (float32 [group, M4, DP]) also dQ's share of the block (the caller owns every head of the group).
static void tw_bwd_key_block(const tw_bwd_ctx& c, int64_t b, int64_t hk, int64_t kb, tw_bwd_scratch& w,
                             float* dqacc, float* ds, tw_t* dk, tw_t* dv, const int64_t* dks, const int64_t* dvs) {
  const tw_attn_args& a = c.a;
  const int64_t bm = a.bm, bn = a.bn, j0 = kb * bn, m4 = (a.M + 3) & ~(int64_t)3;
  std::fill(w.dK.begin(), w.dK.end(), 0.0f);
  std::fill(w.dV.begin(), w.dV.end(), 0.0f);
  const int64_t istart = a.causal ? std::min(a.M, std::max<int64_t>(0, j0 - a.causal_offset)) : 0;
  const size_t kv = (size_t)((b * a.HKV + hk) * c.kv_head_stride + j0 * TW_DP);
  for (int64_t g = 0; g < a.group; ++g) {
    const int64_t h = hk * a.group + g;
    for (int64_t i0 = (istart / bm) * bm; i0 < a.M; i0 += bm) {
      const int64_t rows = std::min(bm, a.M - i0), rows4 = (rows + 3) & ~(int64_t)3;
      if (tw_tile_empty(a, b, h, i0, rows, j0, std::min(bn, a.N - j0))) continue;
      tw_load_rows(c.q, a.qs, b, h, i0, rows, bm, a.scale, w.Q.data());
      tw_load_rows(c.dout, c.dos, b, h, i0, rows, bm, 1.0f, w.dO.data());
      tw_bwd_tile(c, b, h, i0, rows, j0, w.Q.data(), w.dO.data(), w.S.data(), w.dP.data());
      tw_gemm_acc(w.S.data(), 1, bn, w.dO.data(), TW_DP, w.dV.data(), TW_DP, bn, TW_DP, rows);
      tw_gemm_acc(w.dP.data(), 1, bn, w.Q.data(), TW_DP, w.dK.data(), TW_DP, bn, TW_DP, rows);
      if (dqacc) {  // rows past `rows` of dS are zeros (zero dO rows) and stay inside this head's M4 rows
        tw_gemm_acc(w.dP.data(), bn, 1, c.kr + kv, TW_DP, dqacc + (g * m4 + i0) * TW_DP, TW_DP, rows4,
                    TW_DP, bn);
        if (ds) tw_store_ds(a, ds, b, h, i0, rows, j0, w.dP.data());
      }
    }
  }
  for (int64_t j = 0; j < std::min(bn, a.N - j0); ++j) {
    tw_t* kd = dk + b * dks[0] + hk * dks[1] + (j0 + j) * dks[2];
    tw_t* vd = dv + b * dvs[0] + hk * dvs[1] + (j0 + j) * dvs[2];
    for (int64_t d = 0; d < TW_D; ++d) {
      kd[d * dks[3]] = tw_st(w.dK[j * TW_DP + d]);
      vd[d * dvs[3]] = tw_st(w.dV[j * TW_DP + d]);
    }
  }
}

// Separate passes: dK/dV in parallel over key blocks (packed K/V shared; then tw_bwd_dq).
static void tw_bwd_dkdv(const tw_bwd_ctx& c, tw_t* dk, tw_t* dv, const int64_t* dks, const int64_t* dvs) {
  const tw_attn_args& a = c.a;
#pragma omp parallel num_threads(tw_nthreads(a.threads))
  {
    tw_bwd_scratch w(a.bm, a.bn);
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < a.B * a.HKV * c.nkb; ++t)
      tw_bwd_key_block(c, (t / c.nkb) / a.HKV, (t / c.nkb) % a.HKV, t % c.nkb, w, nullptr, nullptr, dk, dv, dks, dvs);
  }
}

// Fused: one task per (batch, kv head) packs its K/V into the thread's buffers, runs every key
// block with dQ accumulated alongside and writes dQ of the group's heads; one barrier in all.
static void tw_bwd_fused(const tw_bwd_ctx& shared, float* ds, tw_t* dq, const int64_t* dqs, tw_t* dk, tw_t* dv,
                         const int64_t* dks, const int64_t* dvs) {
  const tw_attn_args& a = shared.a;
  const int64_t m4 = (a.M + 3) & ~(int64_t)3, bn = a.bn;
#pragma omp parallel num_threads(tw_nthreads(a.threads))
  {
    tw_bwd_scratch w(a.bm, bn);
    tw_bwd_ctx c = shared;
    c.kv_head_stride = 0;
    std::unique_ptr<float[]> kt(new float[(size_t)c.kv_stride]), vt(new float[(size_t)c.kv_stride]);
    std::unique_ptr<float[]> kr(new float[(size_t)c.kv_stride]);
    c.kt = kt.get(); c.vt = vt.get(); c.kr = kr.get();
    std::vector<float> acc((size_t)(a.group * m4 * TW_DP));
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < a.B * a.HKV; ++t) {
      const int64_t b = t / a.HKV, hk = t % a.HKV;
      for (int64_t kb = 0; kb < c.nkb; ++kb) {
        const size_t off = (size_t)(kb * bn * TW_DP);
        tw_pack(c.k, a.ks, b, hk, kb * bn, a.N, bn, kt.get() + off, kr.get() + off);
        tw_pack(c.v, a.vs, b, hk, kb * bn, a.N, bn, vt.get() + off, nullptr);
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t kb = 0; kb < c.nkb; ++kb) tw_bwd_key_block(c, b, hk, kb, w, acc.data(), ds, dk, dv, dks, dvs);
      for (int64_t g = 0; g < a.group; ++g)
        for (int64_t i = 0; i < a.M; ++i) {
          tw_t* dst = dq + b * dqs[0] + (hk * a.group + g) * dqs[1] + i * dqs[2];
          const float* src = acc.data() + (g * m4 + i) * TW_DP;
          for (int64_t d = 0; d < TW_D; ++d) dst[d * dqs[3]] = tw_st(src[d] * a.scale);
        }
    }
  }
}

static void tw_bwd_dq(const tw_bwd_ctx& c, tw_t* dq, const int64_t* dqs, float* ds) {
  const tw_attn_args& a = c.a;
  const int64_t bm = a.bm, bn = a.bn;
#pragma omp parallel num_threads(tw_nthreads(a.threads))
  {
    std::vector<float> Q((size_t)(bm * TW_DP)), dO((size_t)(bm * TW_DP)), S((size_t)(bm * bn)), dP((size_t)(bm * bn));
    std::vector<float> dQ((size_t)(bm * TW_DP));
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < a.B * a.H * c.nmb; ++t) {
      const int64_t mb = c.nmb - 1 - t % c.nmb, bh = t / c.nmb, b = bh / a.H, h = bh % a.H, hk = h / a.group;
      const int64_t i0 = mb * bm, rows = std::min(bm, a.M - i0), rows4 = (rows + 3) & ~(int64_t)3;
      tw_load_rows(c.q, a.qs, b, h, i0, rows, bm, a.scale, Q.data());
      tw_load_rows(c.dout, c.dos, b, h, i0, rows, bm, 1.0f, dO.data());
      std::fill(dQ.begin(), dQ.end(), 0.0f);
      const int64_t kend = tw_key_end(a, i0 + rows - 1);
      for (int64_t j0 = 0; j0 < kend; j0 += bn) {
        const int64_t cols = std::min(bn, a.N - j0);
        if (tw_tile_empty(a, b, h, i0, rows, j0, cols)) continue;
        tw_bwd_tile(c, b, h, i0, rows, j0, Q.data(), dO.data(), S.data(), dP.data());
        if (ds) tw_store_ds(a, ds, b, h, i0, rows, j0, dP.data());
        const size_t kv = (size_t)((b * a.HKV + hk) * c.kv_head_stride + j0 * TW_DP);
        tw_gemm_acc(dP.data(), bn, 1, c.kr + kv, TW_DP, dQ.data(), TW_DP, rows4, TW_DP, bn);
      }
      for (int64_t r = 0; r < rows; ++r) {
        tw_t* dst = dq + b * dqs[0] + h * dqs[1] + (i0 + r) * dqs[2];
        for (int64_t d = 0; d < TW_D; ++d) dst[d * dqs[3]] = tw_st(dQ[r * TW_DP + d] * a.scale);
      }
    }
  }
}

// strides: q, k, v, bias, mask, dout, dq, dk, dv (4 each); ds: float32 [B, H, M, N] or null
extern "C" void tw_attn_bwd(const void* doutp, const void* qp, const void* kp, const void* vp, const void* bias,
                            const void* mask, const float* lse, const float* delta, void* dq, void* dk, void* dv,
                            float* ds, const int64_t* dims, const int64_t* st, double scale, double dropout_p) {
  tw_bwd_ctx c;
  tw_attn_args& a = c.a;
  tw_args(a, dims, scale, dropout_p);
  a.qs = st; a.ks = st + 4; a.vs = st + 8; a.bs = st + 12; a.ms = st + 16; c.dos = st + 20;
  a.bias = bias; a.mask = (const uint8_t*)mask;
  c.q = (const tw_t*)qp; c.dout = (const tw_t*)doutp; c.lse = lse; c.delta = delta;
  const int64_t bn = a.bn;
  c.nkb = (a.N + bn - 1) / bn; c.nmb = (a.M + a.bm - 1) / a.bm; c.kv_stride = c.nkb * bn * TW_DP;
  c.k = (const tw_t*)kp; c.v = (const tw_t*)vp;
  if (dims[9] != 0) {
    tw_bwd_fused(c, ds, (tw_t*)dq, st + 24, (tw_t*)dk, (tw_t*)dv, st + 28, st + 32);
    return;
  }
  c.kv_head_stride = c.kv_stride;
  const size_t total = (size_t)(a.B * a.HKV * c.kv_stride);
  std::unique_ptr<float[]> kt(new float[total]), vt(new float[total]), kr(new float[total]);
#pragma omp parallel for num_threads(tw_nthreads(a.threads)) schedule(static)
  for (int64_t t = 0; t < a.B * a.HKV * c.nkb; ++t) {
    const int64_t kb = t % c.nkb, bh = t / c.nkb;
    const size_t off = (size_t)(bh * c.kv_stride + kb * bn * TW_DP);
    tw_pack(c.k, a.ks, bh / a.HKV, bh % a.HKV, kb * bn, a.N, bn, kt.get() + off, kr.get() + off);
    tw_pack(c.v, a.vs, bh / a.HKV, bh % a.HKV, kb * bn, a.N, bn, vt.get() + off, nullptr);
  }
  c.kt = kt.get(); c.vt = vt.get(); c.kr = kr.get();
  tw_bwd_dkdv(c, (tw_t*)dk, (tw_t*)dv, st + 28, st + 32);
  tw_bwd_dq(c, (tw_t*)dq, st + 24, ds);
}
"""
