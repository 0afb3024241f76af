"""Explicit SIMD for the CPU target's float32 loops: a vector type, its ops, and row accumulators.

``tw_vf`` is ``TW_VW`` float32 lanes: an AVX-512 ``__m512`` where the compiler targets AVX-512, an
AVX2 ``__m256`` where it targets AVX2, and absent elsewhere (``TW_VW`` is 0 and generated kernels
keep only their portable scalar loop). Generated code writes vector expressions with the same
operators and ``tw_*`` names as scalar ones (``tw_exp(x)``, ``tw_max<tw_vf>(a, b)``), so one body
text serves both; scalars convert to vectors by broadcasting. ``tw_exp`` is the scalar prelude's
polynomial (same coefficients) with the scaling by 2^n done by ``vscalefps`` on AVX-512.
Accumulators: ``tw_vsum`` adds in double lanes (as the scalar loops do), ``tw_vmax``/``tw_vmin``
keep NaN in a separate mask, as torch's max/min propagate it.
"""
from __future__ import annotations

#: C++ appended to the scalar prelude (it uses ``tw_max``/``tw_min``/``tw_exp``'s declarations)
SIMD_PRELUDE = r"""
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#include <type_traits>
#endif
#if defined(__AVX512F__)
#define TW_VW 16
struct tw_vf {
  __m512 v;
  tw_vf() = default;
  tw_vf(__m512 x) : v(x) {}
  template <class S, class = typename std::enable_if<std::is_arithmetic<S>::value>::type>
  tw_vf(S s) : v(_mm512_set1_ps((float)s)) {}
  static tw_vf load(const float* p) { return _mm512_loadu_ps(p); }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
};
static inline tw_vf operator+(tw_vf a, tw_vf b) { return _mm512_add_ps(a.v, b.v); }
static inline tw_vf operator-(tw_vf a, tw_vf b) { return _mm512_sub_ps(a.v, b.v); }
static inline tw_vf operator*(tw_vf a, tw_vf b) { return _mm512_mul_ps(a.v, b.v); }
static inline tw_vf operator/(tw_vf a, tw_vf b) { return _mm512_div_ps(a.v, b.v); }
static inline tw_vf operator-(tw_vf a) { return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.v), _mm512_set1_epi32(INT32_MIN))); }
static inline tw_vf tw_vsqrt(tw_vf a) { return _mm512_sqrt_ps(a.v); }
static inline tw_vf tw_vabs(tw_vf a) { return _mm512_abs_ps(a.v); }
// a < b ? x : y; the sign of s on |r|; x where x is NaN, else r
static inline tw_vf tw_vless(tw_vf a, tw_vf b, tw_vf x, tw_vf y) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ), y.v, x.v); }
static inline tw_vf tw_vcopysign(tw_vf r, tw_vf s) { return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(r.v), _mm512_castps_si512(s.v), _mm512_set1_epi32(INT32_MIN), 0xd8)); }
static inline tw_vf tw_vkeep_nan(tw_vf x, tw_vf r) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q), r.v, x.v); }
// NaN in either operand gives NaN (maxps returns its second operand when either is NaN)
template <> inline tw_vf tw_max<tw_vf>(tw_vf a, tw_vf b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), _mm512_max_ps(a.v, b.v), a.v);
}
template <> inline tw_vf tw_min<tw_vf>(tw_vf a, tw_vf b) {
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q), _mm512_min_ps(a.v, b.v), a.v);
}
static inline tw_vf tw_exp(tw_vf xv) {
  // lanes below the range (masked scores are -inf) are zeroed by the mask instead of scaled by
  // 2^-150 (an underflowing vscalefps takes a slow microcode assist); NaN flows through max/min
  // (which return their second operand when one is NaN); above 89 vscalefps overflows to inf
  const __m512 x = xv.v, lo = _mm512_set1_ps(-103.972077083991796f);
  const __mmask16 in_range = _mm512_cmp_ps_mask(x, lo, _CMP_NLT_UQ);
  const __m512 xc = _mm512_min_ps(_mm512_set1_ps(89.0f), _mm512_max_ps(lo, x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500E-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073E-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894E-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459E-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201E-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_scalef_ps(in_range, p, n);
}
struct tw_vsum {  // float lanes summed in double
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  void add(tw_vf x) {
    lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(x.v)));
    hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x.v), 1))));
  }
  double total() const { return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi)); }
};
struct tw_vmax {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 nanm = 0;
  void add(tw_vf x) { m = _mm512_max_ps(x.v, m); nanm |= _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q); }
  float value() const { return _mm512_reduce_max_ps(m); }
  int nan() const { return nanm != 0; }
};
struct tw_vmin {
  __m512 m = _mm512_set1_ps(std::numeric_limits<float>::infinity());
  __mmask16 nanm = 0;
  void add(tw_vf x) { m = _mm512_min_ps(x.v, m); nanm |= _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q); }
  float value() const { return _mm512_reduce_min_ps(m); }
  int nan() const { return nanm != 0; }
};
#elif defined(__AVX2__) && defined(__FMA__)
#define TW_VW 8
struct tw_vf {
  __m256 v;
  tw_vf() = default;
  tw_vf(__m256 x) : v(x) {}
  template <class S, class = typename std::enable_if<std::is_arithmetic<S>::value>::type>
  tw_vf(S s) : v(_mm256_set1_ps((float)s)) {}
  static tw_vf load(const float* p) { return _mm256_loadu_ps(p); }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
};
static inline tw_vf operator+(tw_vf a, tw_vf b) { return _mm256_add_ps(a.v, b.v); }
static inline tw_vf operator-(tw_vf a, tw_vf b) { return _mm256_sub_ps(a.v, b.v); }
static inline tw_vf operator*(tw_vf a, tw_vf b) { return _mm256_mul_ps(a.v, b.v); }
static inline tw_vf operator/(tw_vf a, tw_vf b) { return _mm256_div_ps(a.v, b.v); }
static inline tw_vf operator-(tw_vf a) { return _mm256_xor_ps(a.v, _mm256_set1_ps(-0.0f)); }
static inline tw_vf tw_vsqrt(tw_vf a) { return _mm256_sqrt_ps(a.v); }
static inline tw_vf tw_vabs(tw_vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v); }
static inline tw_vf tw_vless(tw_vf a, tw_vf b, tw_vf x, tw_vf y) { return _mm256_blendv_ps(y.v, x.v, _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ)); }
static inline tw_vf tw_vcopysign(tw_vf r, tw_vf s) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  return _mm256_or_ps(_mm256_andnot_ps(sign, r.v), _mm256_and_ps(sign, s.v));
}
static inline tw_vf tw_vkeep_nan(tw_vf x, tw_vf r) { return _mm256_blendv_ps(r.v, x.v, _mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q)); }
template <> inline tw_vf tw_max<tw_vf>(tw_vf a, tw_vf b) {
  return _mm256_blendv_ps(_mm256_max_ps(a.v, b.v), a.v, _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
}
template <> inline tw_vf tw_min<tw_vf>(tw_vf a, tw_vf b) {
  return _mm256_blendv_ps(_mm256_min_ps(a.v, b.v), a.v, _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q));
}
static inline tw_vf tw_exp(tw_vf xv) {
  const __m256 x = xv.v;
  const __m256 under = _mm256_cmp_ps(x, _mm256_set1_ps(-103.972077083991796f), _CMP_LT_OQ);
  const __m256 over = _mm256_cmp_ps(x, _mm256_set1_ps(88.72283905206835f), _CMP_GT_OQ);
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  const __m256 xc = _mm256_andnot_ps(_mm256_or_ps(_mm256_or_ps(under, over), nan), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n in two factors so that n down to -150 (subnormal results) stays exact
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i n1 = _mm256_srai_epi32(ni, 1), n2 = _mm256_sub_epi32(ni, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 res = _mm256_mul_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23))),
                             _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23)));
  res = _mm256_andnot_ps(under, res);
  res = _mm256_blendv_ps(res, _mm256_set1_ps(std::numeric_limits<float>::infinity()), over);
  return _mm256_blendv_ps(res, x, nan);
}
struct tw_vsum {
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  void add(tw_vf x) {
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(x.v)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(x.v, 1)));
  }
  double total() const {
    double t[4]; _mm256_storeu_pd(t, _mm256_add_pd(lo, hi));
    return (t[0] + t[1]) + (t[2] + t[3]);
  }
};
struct tw_vmax {
  __m256 m = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 nanm = _mm256_setzero_ps();
  void add(tw_vf x) { m = _mm256_max_ps(x.v, m); nanm = _mm256_or_ps(nanm, _mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q)); }
  float value() const { float t[8]; _mm256_storeu_ps(t, m); float r = t[0]; for (int i = 1; i < 8; ++i) r = t[i] > r ? t[i] : r; return r; }
  int nan() const { return _mm256_movemask_ps(nanm) != 0; }
};
struct tw_vmin {
  __m256 m = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  __m256 nanm = _mm256_setzero_ps();
  void add(tw_vf x) { m = _mm256_min_ps(x.v, m); nanm = _mm256_or_ps(nanm, _mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q)); }
  float value() const { float t[8]; _mm256_storeu_ps(t, m); float r = t[0]; for (int i = 1; i < 8; ++i) r = t[i] < r ? t[i] : r; return r; }
  int nan() const { return _mm256_movemask_ps(nanm) != 0; }
};
#else
#define TW_VW 0
#endif
#if TW_VW
// tanh and erf on vectors: the scalar prelude's formulas (same constants, same branches as selects)
static inline tw_vf tw_tanh(tw_vf x) {
  const tw_vf a = tw_vabs(x), e = tw_exp(tw_vf(-2.0f) * a), z = x * x;
  const tw_vf big = (tw_vf(1.0f) - e) / (tw_vf(1.0f) + e);
  const tw_vf small = a * (tw_vf(1.0f) + z * (tw_vf(-0.333333333f) + z * (tw_vf(0.133333333f) + z * (tw_vf(-0.0539682540f) + z * tw_vf(0.0218694885f)))));
  return tw_vkeep_nan(x, tw_vcopysign(tw_vless(a, tw_vf(0.125f), small, big), x));
}
static inline tw_vf tw_erf(tw_vf x) {
  const tw_vf z = tw_vabs(x), t = tw_vf(1.0f) / (tw_vf(1.0f) + tw_vf(0.5f) * z), s = z * z;
  const tw_vf poly = tw_vf(-1.26551223f) - s + t * (tw_vf(1.00002368f) + t * (tw_vf(0.37409196f) + t * (tw_vf(0.09678418f) +
                     t * (tw_vf(-0.18628806f) + t * (tw_vf(0.27886807f) + t * (tw_vf(-1.13520398f) + t * (tw_vf(1.48851587f) +
                     t * (tw_vf(-0.82215223f) + t * tw_vf(0.17087277f)))))))));
  const tw_vf big = tw_vf(1.0f) - t * tw_exp(poly);
  const tw_vf small = z * tw_vf(1.12837916709551257f) * (tw_vf(1.0f) + s * (tw_vf(-0.333333333f) + s * (tw_vf(0.1f) + s * (tw_vf(-0.0238095238f) +
                      s * (tw_vf(0.00462962963f) + s * tw_vf(-0.000757575758f))))));
  return tw_vkeep_nan(x, tw_vcopysign(tw_vless(z, tw_vf(0.5f), small, big), x));
}
#endif
"""

#: ops whose scalar body text is also a valid ``tw_vf`` expression (after :func:`vector_body`)
VECTOR_OPS = frozenset({
    "aten.add", "aten.sub", "aten.rsub", "aten.mul", "aten.div", "aten.true_divide", "aten.neg", "aten.abs",
    "aten.exp", "aten.sqrt", "aten.rsqrt", "aten.reciprocal", "aten.sigmoid", "aten.silu", "aten.relu",
    "aten.maximum", "aten.minimum", "aten.clamp", "aten.clamp_min", "aten.clamp_max", "aten.hardtanh",
    "aten.pow", "aten.erf", "aten.tanh", "aten.gelu", "aten._to_copy", "aten.clone", "aten.lift_fresh_copy", "aten.copy", "aten.copy_", "prims.convert_element_type",
})

_RENAMES = {"std::sqrt(": "tw_vsqrt(", "std::abs(": "tw_vabs("}


def vector_body(body: str) -> str | None:
    """``body`` (a scalar C++ expression) as a ``tw_vf`` expression, or None when it calls something
    with no vector overload."""
    for old, new in _RENAMES.items():
        body = body.replace(old, new)
    return None if "std::" in body else body
