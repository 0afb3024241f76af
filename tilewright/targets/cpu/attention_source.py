"""C++ text of the CPU target's fused attention kernels (FlashAttention-2 style, forward and backward).

One library per :class:`AttentionVariant` (head dim, dtype, bias dtype): the variant is
compile-time (``#define``); every size and stride, the causal limit and whether there is a bias or
a mask are ``int64_t`` arguments, so a new sequence length, batch or mask form reuses the library. The library holds three functions:

* ``tw_attn_fwd``: K and V of every (batch, kv head) packed once into float32 key blocks
  (Kᵀ as [D][BLOCK_N], V as [BLOCK_N][Dp]); then OpenMP over (batch, head, query block):
  scores Q·Kᵀ, online softmax in float32 (running max and sum), P·V into a float32
  accumulator; key blocks beyond the causal limit are never visited, key blocks whose mask
  tile keeps nothing are skipped, masks apply on boundary blocks only.
* ``tw_attn_bwd``: recompute-based backward. K, Kᵀ and Vᵀ packed once; dK/dV in parallel over
  (batch, kv head, key block) — every query head of the group accumulates into the block's
  dK/dV, so grouped-query attention needs no copies and no atomics — then dQ in parallel
  over (batch, head, query block), optionally writing dS for the bias gradient.

The matrix products are register-tiled micro-kernels over GCC vector extensions (16 floats:
one AVX-512 register, two AVX2 registers, or scalar code on other machines); head dims that
are not multiples of 16 are zero-padded in the packed tiles, odd key counts by padded, masked
columns.
"""
from __future__ import annotations

from dataclasses import dataclass

#: the micro-kernels' vector length (floats)
VECTOR = 16
#: the register tile: rows x vectors of 16 columns (4 x 4: 16 accumulators, 4 loads and 4
#: broadcasts per 16 FMAs; 6 x 4 and 8 x 2 measured no faster here)
TILE_ROWS, TILE_VECTORS = 4, 4


@dataclass(frozen=True)
class AttentionVariant:
    """What one attention library is specialised for (causal limits, bias and mask are runtime flags:
    a branch per tile row costs nothing next to the tile's products, and fewer libraries build faster)."""

    head_dim: int
    dtype: str  # "float32" or "bfloat16" (q, k, v, out, dout and gradients)
    bias: str = "float32"  # the bias's dtype when there is one: "float32" or "bfloat16"

    @property
    def tag(self) -> str:
        """A short name for the library's files."""
        return (f"attn_d{self.head_dim}_{'bf16' if self.dtype == 'bfloat16' else 'f32'}"
                f"{'_biasbf16' if self.bias == 'bfloat16' else ''}")


def padded_head_dim(head_dim: int) -> int:
    """The head dim rounded up to the vector length (packed tiles' row length)."""
    return -(-head_dim // VECTOR) * VECTOR


_HEADER = r"""
#include <algorithm>
#include <memory>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
typedef float tw_v16 __attribute__((vector_size(64)));
static inline tw_v16 tw_vld(const float* p) { tw_v16 r; std::memcpy(&r, p, sizeof r); return r; }
static inline void tw_vst(float* p, tw_v16 v) { std::memcpy(p, &v, sizeof v); }
#if TW_BF16
typedef uint16_t tw_t;
static inline float tw_ld(tw_t x) { return tw_bf16_load(x); }
static inline tw_t tw_st(float x) { return tw_bf16_store(x); }
#else
typedef float tw_t;
static inline float tw_ld(tw_t x) { return x; }
static inline tw_t tw_st(float x) { return x; }
#endif
#if TW_BIAS_BF16
static inline float tw_bias_ld(const void* p, int64_t i) { return tw_bf16_load(((const uint16_t*)p)[i]); }
#else
static inline float tw_bias_ld(const void* p, int64_t i) { return ((const float*)p)[i]; }
#endif
static const float TW_NEG_INF = -std::numeric_limits<float>::infinity();
"""

_MICROKERNELS = r"""
// One R-row register tile of C = A·B over NV vectors of 16 columns: C[r][j] (+)= sum_k A[r*ars + k*acs] * B[k*ldb + j].
template <int R, int NV, bool ACC>
static inline void tw_tile(const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb, float* C,
                           int64_t ldc, int64_t K) {
  tw_v16 acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = ACC ? tw_vld(C + r * ldc + 16 * v) : tw_v16{};
#pragma GCC unroll 2
  for (int64_t k = 0; k < K; ++k) {
    tw_v16 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = tw_vld(B + k * ldb + 16 * v);
    const float* ak = A + k * acs;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float x = ak[r * ars];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] += x * b[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) tw_vst(C + r * ldc + 16 * v, acc[r][v]);
}

// Rows [i, i + R) of C over every column block (64, then 32 and 16 wide).
template <int R, bool ACC>
static inline void tw_row_panel(const float* a, int64_t ars, int64_t acs, const float* B, int64_t ldb, float* c,
                                int64_t ldc, int64_t cols, int64_t K) {
  int64_t j = 0;
  for (; j + 16 * TW_NV <= cols; j += 16 * TW_NV) tw_tile<R, TW_NV, ACC>(a, ars, acs, B + j, ldb, c + j, ldc, K);
  for (; j + 32 <= cols; j += 32) tw_tile<R, 2, ACC>(a, ars, acs, B + j, ldb, c + j, ldc, K);
  if (j + 16 <= cols) tw_tile<R, 1, ACC>(a, ars, acs, B + j, ldb, c + j, ldc, K);
}

// C[i][j] (+)= sum_k A[i*ars + k*acs] * B[k*ldb + j] for i < rows (a multiple of 4), j < cols (of 16), k < K
template <bool ACC>
static inline void tw_gemm(const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb, float* C,
                           int64_t ldc, int64_t rows, int64_t cols, int64_t K) {
  int64_t i = 0;
  for (; i + TW_R <= rows; i += TW_R) tw_row_panel<TW_R, ACC>(A + i * ars, ars, acs, B, ldb, C + i * ldc, ldc, cols, K);
  for (; i + 4 <= rows; i += 4) tw_row_panel<4, ACC>(A + i * ars, ars, acs, B, ldb, C + i * ldc, ldc, cols, K);
  if (i < rows) tw_row_panel<2, ACC>(A + i * ars, ars, acs, B, ldb, C + i * ldc, ldc, cols, K);
}

// C[i][j] = sum_d A[i*lda + d] * B[d*ldb + j] (B: a transposed, packed key block)
static inline void tw_gemm_nt(const float* A, int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                              int64_t rows, int64_t cols, int64_t K) {
  tw_gemm<false>(A, lda, 1, B, ldb, C, ldc, rows, cols, K);
}

// C[i][d] += sum_k A[i*ars + k*acs] * B[k*ldb + d]
static inline void tw_gemm_acc(const float* A, int64_t ars, int64_t acs, const float* B, int64_t ldb, float* C,
                               int64_t ldc, int64_t rows, int64_t cols, int64_t K) {
  tw_gemm<true>(A, ars, acs, B, ldb, C, ldc, rows, cols, K);
}

typedef int32_t tw_i16 __attribute__((vector_size(64)));

// tw_exp_neg on 16 lanes (vector extensions: rounding by the 1.5 * 2^23 trick, 2^n from the exponent bits)
static inline tw_v16 tw_vexp_neg(tw_v16 x) {
  const tw_i16 under = x < -87.0f;
  const tw_v16 zero = {};
  const tw_v16 xc = under ? zero : x;
  const tw_v16 n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  tw_v16 r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  tw_v16 p = r * 1.9875691500E-4f + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  const tw_i16 bits = (__builtin_convertvector(n, tw_i16) + 127) << 23;
  const tw_v16 result = p * (tw_v16)bits;
  return under ? zero : result;
}

static inline float tw_hsum(tw_v16 v) {
  float s = 0.0f;
  for (int k = 0; k < 16; ++k) s += v[k];
  return s;
}

// exp(x) for x <= 0 (scores minus their running max): one range reduction and polynomial, no
// overflow path; results below exp(-87) are 0 (-inf gives 0, NaN stays NaN)
static inline float tw_exp_neg(float x) {
  const bool under = x < -87.0f;
  const float xc = under ? 0.0f : x;
  const float n = std::nearbyint(xc * 1.44269504088896341f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  const float result = p * tw_bits_to_float(((int32_t)n + 127) << 23);
  return under ? 0.0f : result;
}
"""

_SHARED = r"""
struct tw_attn_args {
  int64_t B, H, HKV, M, N, group, causal_offset, bm, bn, threads;
  bool causal, has_bias, has_mask;
  float scale, drop_p, drop_scale;  // dropout probability and 1 / (1 - p)
  uint64_t seed;
  const int64_t* qs; const int64_t* ks; const int64_t* vs; const int64_t* bs; const int64_t* ms;
  const void* bias; const uint8_t* mask;
};

// Dropout's uniform draw for score (b*H + h = bh, query i, key j): a splitmix64 hash of the seed and
// the score's index, so the forward and the backward draw the same keep-mask without storing it.
static inline float tw_uniform(uint64_t seed, uint64_t index) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + index;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// Row i of a tile of probabilities after dropout: kept ones scaled by 1 / (1 - p), the rest 0.
static inline void tw_dropout_row(const tw_attn_args& a, int64_t bh, int64_t i, int64_t j0, int64_t cols, float* s) {
  const uint64_t base = (uint64_t)((bh * a.M + i) * a.N + j0);
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j)
    s[j] = tw_uniform(a.seed, base + (uint64_t)j) >= a.drop_p ? s[j] * a.drop_scale : 0.0f;
}

// Pack rows [j0, j0 + bn) of one (batch, kv head) of x into float32: transposed [D][bn] (kt) and/or
// row-major [bn][DP] (rows); rows past N and columns past D are zeros.
static void tw_pack(const tw_t* x, const int64_t* s, int64_t b, int64_t hk, int64_t j0, int64_t N, int64_t bn,
                    float* kt, float* rows) {
  for (int64_t j = 0; j < bn; ++j) {
    const bool in = j0 + j < N;
    const tw_t* src = x + b * s[0] + hk * s[1] + (j0 + j) * s[2];
    for (int64_t d = 0; d < TW_DP; ++d) {
      const float val = (in && d < TW_D) ? tw_ld(src[d * s[3]]) : 0.0f;
      if (kt && d < TW_D) kt[d * bn + j] = val;
      if (rows) rows[j * TW_DP + d] = val;
    }
  }
}

// Load rows [i0, i0 + rows) of x[b, h] times mul as float32 [bm][DP] (zeros past the rows and D).
static void tw_load_rows(const tw_t* x, const int64_t* s, int64_t b, int64_t h, int64_t i0, int64_t rows,
                         int64_t bm, float mul, float* dst) {
  for (int64_t r = 0; r < bm; ++r) {
    const tw_t* src = x + b * s[0] + h * s[1] + (i0 + r) * s[2];
    for (int64_t d = 0; d < TW_DP; ++d)
      dst[r * TW_DP + d] = (r < rows && d < TW_D) ? tw_ld(src[d * s[3]]) * mul : 0.0f;
  }
}

// Last key (exclusive) query row i may attend to under the causal limit.
static inline int64_t tw_key_end(const tw_attn_args& a, int64_t i) {
  return a.causal ? std::min(a.N, std::max<int64_t>(0, i + a.causal_offset + 1)) : a.N;
}

// Whether the mask keeps nothing in the tile (rows x cols at (i0, j0)): the block can be skipped.
static bool tw_tile_empty(const tw_attn_args& a, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0,
                          int64_t cols) {
  if (!a.has_mask) return false;
  const uint8_t* mk = a.mask + b * a.ms[0] + h * a.ms[1];
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* row = mk + (i0 + r) * a.ms[2] + j0 * a.ms[3];
    for (int64_t j = 0; j < cols; ++j)
      if (row[j * a.ms[3]]) return false;
  }
  return true;
}

// Scores of a [rows x bn] tile: add the bias and set excluded keys (past N, causal, mask) to -inf.
// full: no key of the tile is excluded by N or the causal limit and there is no bias or mask.
static void tw_finish_scores(const tw_attn_args& a, int64_t b, int64_t h, int64_t i0, int64_t rows, int64_t j0,
                             int64_t bn, float* S) {
  const bool full = !a.has_bias && !a.has_mask && j0 + bn <= tw_key_end(a, i0);
  if (full) return;
  for (int64_t r = 0; r < rows; ++r) {
    float* srow = S + r * bn;
    const int64_t end = std::min(bn, tw_key_end(a, i0 + r) - j0);
    if (a.has_bias) {
      const int64_t boff = b * a.bs[0] + h * a.bs[1] + (i0 + r) * a.bs[2] + j0 * a.bs[3];
      for (int64_t j = 0; j < end; ++j) srow[j] += tw_bias_ld(a.bias, boff + j * a.bs[3]);
    }
    if (a.has_mask) {
      const uint8_t* mrow = a.mask + b * a.ms[0] + h * a.ms[1] + (i0 + r) * a.ms[2] + j0 * a.ms[3];
      for (int64_t j = 0; j < end; ++j) if (!mrow[j * a.ms[3]]) srow[j] = TW_NEG_INF;
    }
    for (int64_t j = std::max<int64_t>(end, 0); j < bn; ++j) srow[j] = TW_NEG_INF;
  }
}
"""


def attention_source(variant: AttentionVariant) -> str:
    """The C++ text of ``variant``'s library (after the shared prelude)."""
    from .attention_source_kernels import BACKWARD, FORWARD

    defines = "\n".join([
        f"#define TW_D {variant.head_dim}", f"#define TW_DP {padded_head_dim(variant.head_dim)}",
        f"#define TW_BF16 {int(variant.dtype == 'bfloat16')}",
        f"#define TW_BIAS_BF16 {int(variant.bias == 'bfloat16')}",
        f"#define TW_R {TILE_ROWS}", f"#define TW_NV {TILE_VECTORS}"])
    return f"{defines}\n{_HEADER}\n{_MICROKERNELS}\n{_SHARED}\n{FORWARD}\n{BACKWARD}"
