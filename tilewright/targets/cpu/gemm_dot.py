"""The bfloat16 dot core of the CPU GEMM (AVX512_BF16 ``vdpbf16ps``) and the probe that decides its default.

``vdpbf16ps`` multiplies pairs of bfloat16 and adds both products into float lanes: twice the
multiply-adds of an FMA per instruction. Whether that is twice the multiply-adds per *second*
depends on the core: on AMD Zen 4 it issues at the FMA's rate (a register-only loop: 2.0x the
FMA's multiply-adds per second), on this project's earlier Xeon at half of it (0.5x). So the GEMM
space's default (``dot``) is what :func:`dot_pays` measures on the host, once per process.

The C++ (``DOT_CORE``) is spliced into :mod:`.gemm_micro`'s core between the FMA micro-kernels and
the blocked loop nest that runs either core (``TwDotCore`` is its packing/micro-kernel policy).
"""
from __future__ import annotations

import ctypes
import logging
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

#: the dot core is the default when it does at least this many times the FMA's multiply-adds per second
DOT_ADVANTAGE = 1.25


def has_bf16_dot(description: dict[str, Any]) -> bool:
    """Whether this CPU has AVX512_BF16's ``vdpbf16ps`` (the bfloat16 dot core's instruction)."""
    isa = set(description.get("isa") or ())
    return "avx512f" in isa and "avx512_bf16" in isa


def dot_dispatch(shapes: list[tuple[int, int]]) -> str:
    """The C++ table from (MR, NR) (AVX-512 float register blocks) to an instantiated dot micro-kernel."""
    cases = [f"  if (mr == {mr} && nr == {nr}) return &tw_micro_dot<{mr}, {nr // 16}>;" for mr, nr in shapes]
    return """#if defined(__AVX512BF16__) && !defined(TW_GEMM_PICK_DOT)
#define TW_GEMM_PICK_DOT
static TwDotFn tw_pick_micro_dot(int64_t mr, int64_t nr) {
""" + "\n".join(cases) + """
  return nullptr;
}
#endif
"""


_PROBE = r"""#include <chrono>
#include <cstdint>
#include <immintrin.h>
// 12 independent accumulator chains of `which` (0: vfmadd231ps, 1: vdpbf16ps) in registers; seconds for `iters` rounds
extern "C" double tw_dot_probe(int which, int64_t iters) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(0.f);
  __m512 x = _mm512_set1_ps(1e-30f), y = _mm512_set1_ps(1e-30f);
  __m512bh xb = (__m512bh)_mm512_set1_epi32(0x00010001), yb = xb;
  const auto t0 = std::chrono::steady_clock::now();
  if (which == 0) {
    for (int64_t it = 0; it < iters; ++it) {
      for (int i = 0; i < 12; ++i) acc[i] = _mm512_fmadd_ps(x, y, acc[i]);
      __asm__ volatile("" : "+v"(x), "+v"(y));
    }
  } else {
    for (int64_t it = 0; it < iters; ++it) {
      for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], xb, yb);
      __asm__ volatile("" : "+v"(xb), "+v"(yb));
    }
  }
  const auto t1 = std::chrono::steady_clock::now();
  float sink = 0.f;
  for (int i = 0; i < 12; ++i) sink += _mm512_reduce_add_ps(acc[i]);
  volatile float keep = sink; (void)keep;
  return std::chrono::duration<double>(t1 - t0).count();
}
"""


@lru_cache(maxsize=1)
def _host_advantage() -> float:
    """The dot instruction's multiply-adds per second over the FMA's on this host (best of 7 interleaved runs)."""
    from .build import build_library, load_library

    probe = load_library(build_library(_PROBE, "tw_dot_probe")).tw_dot_probe
    probe.restype, probe.argtypes = ctypes.c_double, [ctypes.c_int, ctypes.c_int64]
    iters = 20000  # 240k instructions: ~0.1-0.3 ms each
    best = [float("inf"), float("inf")]
    for _ in range(7):
        for which in (0, 1):
            best[which] = min(best[which], probe(which, iters))
    advantage = (32 / best[1]) / (16 / best[0])  # vdpbf16ps: 32 multiply-adds per instruction, an FMA 16
    log.info("bf16 dot probe: vdpbf16ps %.2fx the FMA's multiply-adds per second", advantage)
    return advantage


def dot_pays(description: dict[str, Any]) -> bool:
    """Whether the dot core should be the default bfloat16 GEMM core for ``description``: it has
    ``vdpbf16ps``, is this host (the probe measures only the host), and the probe's advantage is at
    least :data:`DOT_ADVANTAGE`."""
    from .toolchain import cpu_description

    if not has_bf16_dot(description) or description.get("model") != cpu_description().get("model"):
        return False
    try:
        return _host_advantage() >= DOT_ADVANTAGE
    except Exception as exc:  # noqa: BLE001 - a probe that cannot build or run leaves the FMA core
        log.warning("bf16 dot probe failed (%s); the FMA core stays the default", exc)
        return False


DOT_CORE = r"""#if defined(__AVX512BF16__)
// The bfloat16 dot core (AVX512_BF16): vdpbf16ps multiplies pairs of bfloat16 and adds both products
// into float lanes, twice the multiply-adds of an FMA per instruction, with no conversion to float
// while packing. A and B are packed as pairs along K: A micro-panel [kc/2][MR] and B panel [kc/2][NR]
// of 32-bit words (low half element 2k, high half 2k+1; an odd K's last pair and rows/columns past
// the matrix are zeros). Accumulation is in float, as on the FMA path.
static inline uint32_t tw_pair(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }

template <int MR, int NV>
static void tw_micro_dot(int64_t kp, const uint32_t* __restrict a, int64_t, int64_t, const uint32_t* __restrict b,
                         float* __restrict c, int64_t ldc, int first) {
  constexpr int NR = NV * 16;
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kp; ++k) {
    __builtin_prefetch(a + (k + 8) * MR, 0, 3);
    __m512bh bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512((const void*)(b + k * NR + v * 16));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32((int32_t)a[k * MR + i]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], av, bv[v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      float* p = c + i * ldc + v * 16;
      _mm512_storeu_ps(p, first ? acc[i][v] : _mm512_add_ps(acc[i][v], _mm512_loadu_ps(p)));
    }
}

using TwDotFn = void (*)(int64_t, const uint32_t*, int64_t, int64_t, const uint32_t*, float*, int64_t, int);
static TwDotFn tw_pick_micro_dot(int64_t mr, int64_t nr);

struct TwDotCore {
  using P = uint32_t;
  static constexpr bool kStrided = false;
  static inline int64_t rows(int64_t kc) { return (kc + 1) / 2; }
  // pairs adjacent in memory (K stride 1: activations, linear weights) are copied as 32-bit words
  static inline uint32_t word(const uint16_t* p) { uint32_t w; std::memcpy(&w, p, 4); return w; }
  // rows ii0..ii0+3 (K stride 1), pairs q0..q0+15: four 16-word rows transposed in registers, stored as
  // 16 four-word columns at dst[q * mr + ii0] (the scalar loop's 32 loads and stores per column group)
  static inline void pack4x16(const uint16_t* src, int64_t sam, int64_t mr, uint32_t* out) {
    const __m512i r0 = _mm512_loadu_si512((const void*)src), r1 = _mm512_loadu_si512((const void*)(src + sam));
    const __m512i r2 = _mm512_loadu_si512((const void*)(src + 2 * sam));
    const __m512i r3 = _mm512_loadu_si512((const void*)(src + 3 * sam));
    const __m512i t0 = _mm512_unpacklo_epi32(r0, r1), t1 = _mm512_unpackhi_epi32(r0, r1);
    const __m512i t2 = _mm512_unpacklo_epi32(r2, r3), t3 = _mm512_unpackhi_epi32(r2, r3);
    // u[j], 128-bit lane l: rows 0..3 of pair 4l + j
    const __m512i u[4] = {_mm512_unpacklo_epi64(t0, t2), _mm512_unpackhi_epi64(t0, t2),
                          _mm512_unpacklo_epi64(t1, t3), _mm512_unpackhi_epi64(t1, t3)};
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      _mm_storeu_si128((__m128i*)(out + j * mr), _mm512_castsi512_si128(u[j]));
      _mm_storeu_si128((__m128i*)(out + (4 + j) * mr), _mm512_extracti32x4_epi32(u[j], 1));
      _mm_storeu_si128((__m128i*)(out + (8 + j) * mr), _mm512_extracti32x4_epi32(u[j], 2));
      _mm_storeu_si128((__m128i*)(out + (12 + j) * mr), _mm512_extracti32x4_epi32(u[j], 3));
    }
  }
  // rows x kc values (K stride sak) as pair rows [kp][mr] at dst (columns ii < rows; the caller pads)
  static void pack_rows(const uint16_t* a, int64_t sam, int64_t sak, int64_t rows, int64_t kc, int64_t mr, uint32_t* dst) {
    const int64_t even = kc & ~INT64_C(1);
    int64_t first = 0;  // rows before this one were packed in groups of four, pairs before `vec` by 16s
    const int64_t vec = sak == 1 ? (kc / 32) * 32 : 0;
    if (vec) {
      for (; first + 4 <= rows; first += 4)
        for (int64_t kk = 0; kk < vec; kk += 32) pack4x16(a + first * sam + kk, sam, mr, dst + (kk / 2) * mr + first);
      for (int64_t ii = 0; ii < first; ++ii) {  // those rows' last pairs
        const uint16_t* src = a + ii * sam;
        for (int64_t kk = vec; kk < even; kk += 2) dst[(kk / 2) * mr + ii] = word(src + kk);
        if (even < kc) dst[(even / 2) * mr + ii] = tw_pair(src[even], 0);
      }
    }
    for (int64_t ii = first; ii < rows; ++ii) {
      const uint16_t* src = a + ii * sam;
      uint32_t* out = dst + ii;
      if (sak == 1) {
        for (int64_t kk = 0; kk < even; kk += 2) out[(kk / 2) * mr] = word(src + kk);
      } else {
        for (int64_t kk = 0; kk < even; kk += 2) out[(kk / 2) * mr] = tw_pair(src[kk * sak], src[(kk + 1) * sak]);
      }
      if (even < kc) out[(even / 2) * mr] = tw_pair(src[even * sak], 0);
    }
  }
  static void pack_a(const uint16_t* a, int64_t sam, int64_t sak, int64_t mc, int64_t kc, int64_t mr, uint32_t* dst) {
    const int64_t kp = rows(kc);
    for (int64_t ip = 0; ip < mc; ip += mr) {
      const int64_t n = std::min<int64_t>(mr, mc - ip);
      uint32_t* panel = dst + ip * kp;
      pack_rows(a + ip * sam, sam, sak, n, kc, mr, panel);
      for (int64_t ii = n; ii < mr; ++ii)
        for (int64_t q = 0; q < kp; ++q) panel[q * mr + ii] = 0u;
    }
  }
  static void pack_b(const uint16_t* b, int64_t sbk, int64_t sbn, int64_t k, int64_t n, int64_t p, int64_t nr, uint32_t* dst) {
    const int64_t j0 = p * nr, cols = std::min<int64_t>(nr, n - j0), kp = rows(k);
    if (sbk == 1 && sbn != 1) {  // B read along K (a transposed weight): each column's pairs are adjacent
      pack_rows(b + j0 * sbn, sbn, 1, cols, k, nr, dst);
      for (int64_t q = 0; q < kp; ++q)
        for (int64_t jj = cols; jj < nr; ++jj) dst[q * nr + jj] = 0u;
      return;
    }
    // row-major B: interleave rows 2q and 2q+1, 16 columns per two vpermt2w
    alignas(64) static const uint16_t order[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                    8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
    const __m512i first = _mm512_load_si512((const void*)order);
    const __m512i second = _mm512_add_epi16(first, _mm512_set1_epi16(16));
    for (int64_t q = 0; q < kp; ++q) {
      const uint16_t* lo = b + (2 * q) * sbk + j0 * sbn;
      const bool has_hi = 2 * q + 1 < k;
      uint32_t* out = dst + q * nr;
      int64_t jj = 0;
      if (sbn == 1)
        for (; jj + 32 <= cols; jj += 32) {
          const __m512i l = _mm512_loadu_si512((const void*)(lo + jj));
          const __m512i h = has_hi ? _mm512_loadu_si512((const void*)(lo + sbk + jj)) : _mm512_setzero_si512();
          _mm512_storeu_si512((void*)(out + jj), _mm512_permutex2var_epi16(l, first, h));
          _mm512_storeu_si512((void*)(out + jj + 16), _mm512_permutex2var_epi16(l, second, h));
        }
      for (; jj < cols; ++jj) out[jj] = tw_pair(lo[jj * sbn], has_hi ? lo[sbk + jj * sbn] : (uint16_t)0);
      for (jj = cols; jj < nr; ++jj) out[jj] = 0u;
    }
  }
  static inline TwDotFn micro(int64_t mr, int64_t nr, bool) { return tw_pick_micro_dot(mr, nr); }
};
#endif

"""
