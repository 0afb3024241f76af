"""The CPU target's GEMM core: packing, register-blocked SIMD micro-kernels, the blocked driver.

The C++ text here is shared by every matmul kernel of a library (guarded by ``TW_GEMM_CORE``):

- ``TwVec<T>``: the vector ISA the library is built for (``-march=native``): AVX-512 (16 floats /
  8 doubles), AVX2+FMA (8 / 4) or a portable scalar path (width 1);
- ``tw_micro<T, MR, NV, PACKED>``: an ``MR x (NV*W)`` register block of C accumulated with explicit
  FMAs over ``kc`` steps, reading B from a packed ``kc x NR`` panel and A either from a packed
  ``kc x MR`` micro-panel or straight through its strides; it stores (first K block) or adds
  into a padded C tile, so it never needs tails (packing pads with zeros);
- ``tw_gemm<S, T>``: the BLIS loop nest. B is packed once per call into ``NR``-wide panels
  (converted to the compute type ``T``: bfloat16 becomes float), then OpenMP threads take
  ``MC x NC`` blocks of C (batch in the same task grid); each block loops over ``KC`` slices of K,
  packs its A slice (``MR``-row micro-panels, zero-padded odd rows), runs the micro-kernel over
  the block into a thread-local C tile, and hands each finished row of the tile to the kernel's
  fused epilogue while it is still in cache.

- ``TwDotCore`` (CPUs with AVX512_BF16): the same loop nest for bfloat16 operands packed as pairs
  along K and multiplied by ``vdpbf16ps`` into float accumulators; a schedule candidate (``dot``).

Which ``(MR, NR)`` register blocks a library instantiates, and which the schedule space may pick,
both come from :func:`micro_shapes` (vector width and register count of the ISA).
"""
from __future__ import annotations

from typing import Any

import torch

from ...schedule.space import ScheduleSpace
from .gemm_dot import DOT_CORE, dot_dispatch, dot_pays, has_bf16_dot

__all__ = ["core_alternative", "core_source", "default_blocks", "gemm_space", "has_bf16_dot", "lanes", "micro_shapes", "vector_isa"]

#: (MR, NV) register blocks per vector ISA, NV vectors of W lanes wide: accumulators MR*NV,
#: plus NV B vectors and one broadcast A value must fit the register file
_SHAPES = {
    "avx512": ((14, 2), (12, 2), (8, 2), (6, 2), (8, 3), (6, 4), (4, 4)),  # measured: first five ~equal
    "avx2": ((6, 2), (4, 2), (4, 3), (8, 1), (4, 1)),
    "scalar": ((4, 4), (4, 8), (2, 4)),
}
_REGISTERS = {"avx512": 32, "avx2": 16, "scalar": 32}


def vector_isa(description: dict[str, Any]) -> str:
    """``avx512``, ``avx2`` or ``scalar``: the path the C++ below takes on this CPU (built -march=native)."""
    isa = set(description.get("isa") or ())
    if "avx512f" in isa:
        return "avx512"
    if {"avx2", "fma"} <= isa:
        return "avx2"
    return "scalar"


def lanes(isa: str, dtype: torch.dtype) -> int:
    """Vector width ``W`` in elements of the compute type (float for bfloat16)."""
    if isa == "scalar":
        return 1
    width = 64 if isa == "avx512" else 32
    return width // (8 if dtype == torch.float64 else 4)


def micro_shapes(isa: str, dtype: torch.dtype) -> list[tuple[int, int]]:
    """Feasible ``(MR, NR)`` register blocks for ``isa`` and compute dtype (``NR = NV * W``)."""
    w = lanes(isa, dtype)
    return [(mr, nv * w) for mr, nv in _SHAPES[isa] if mr * nv + nv + 1 <= _REGISTERS[isa]]


def _dispatch(isa: str, ctype: str, dtype: torch.dtype) -> str:
    """The C++ table from (MR, NR, packed) to an instantiated micro-kernel for ``ctype``."""
    w = lanes(isa, dtype)
    cases = []
    for mr, nr in micro_shapes(isa, dtype):
        cases.append(f"  if (mr == {mr} && nr == {nr}) return packed ? &tw_micro<{ctype}, {mr}, {nr // w}, true>"
                     f" : &tw_micro<{ctype}, {mr}, {nr // w}, false>;")
    return "\n".join(cases)


def core_source(dtype: torch.dtype, description: dict[str, Any]) -> str:
    """The shared GEMM core for compute ``dtype`` (float32 or float64), include-guarded per type."""
    isa = vector_isa(description)
    ctype = "double" if dtype == torch.float64 else "float"
    guard = f"TW_GEMM_PICK_{ctype.upper()}"
    pick = f"""#ifndef {guard}
#define {guard}
static TwMicroFn<{ctype}> tw_pick_micro(int64_t mr, int64_t nr, bool packed, {ctype}*) {{
{_dispatch(isa, ctype, dtype)}
  return nullptr;
}}
#endif
"""
    return _CORE + DOT_CORE + _CORE_LOOP + pick + (dot_dispatch(micro_shapes("avx512", torch.float32))
                                                   if has_bf16_dot(description) else "")


SPACE_VERSION = "3"  # 2: the bfloat16 dot core ("dot"); 3: its own KC (pairs: 2 bytes per value of K)
#: choices offered beside the machine-derived default (which is always added)
_MC = (48, 96, 192, 384, 768)
_NC = (192, 384, 768, 1536, 3072)
_KC = (64, 128, 256, 384, 512)
#: below this many flops one thread is faster than waking the team
_PARALLEL_FLOPS = 2e6


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _split(size: int, block: int, unit: int) -> int:
    """``block`` evened out over ``size``: the same number of blocks, each as equal as ``unit`` allows."""
    count = -(-size // block)
    return max(unit, _round_up(-(-size // count), unit))


def default_blocks(m: int, n: int, k: int, nb: int, dtype: torch.dtype,
                   description: dict[str, Any], dot: bool = False) -> dict[str, Any]:
    """Cache blocks and register block for this problem from the machine's description.

    ``KC`` keeps one packed ``KC x NR`` B micro-panel in half of L1; ``MC`` keeps the packed
    ``MC x KC`` A block in half of L2 (large: each B micro-panel fetched from L3 then serves MC/MR
    micro-kernel calls); ``NC`` bounds the ``KC x NC`` B block a task streams per K slice to half
    of L2. Blocks are then evened out over the problem and split until every thread has a block.
    ``dot``: the bfloat16 dot core, whose packed operands keep 2 bytes per value of K (pairs in
    32-bit words), so the same cache budget holds twice the ``KC`` (one-thread 256x384x1024:
    KC 256-512 1.10-1.12 ms against 1.15-1.24 ms at KC 128).
    """
    isa = vector_isa(description)
    elem = 8 if dtype == torch.float64 else (2 if dot else 4)
    shapes = micro_shapes(isa, dtype)
    # the first register block (in order of measured speed) that pads M by at most 1% more than the best
    waste = [(_round_up(m, mr) - m) / m for mr, _ in shapes]
    mr, nr = next(shape for shape, w in zip(shapes, waste) if w <= min(waste) + 0.01)
    l1 = int(description.get("l1d_bytes") or 32 << 10)
    l2 = int(description.get("l2_bytes") or 1 << 20)
    cores = max(1, int(description.get("cores") or 1))
    flops = 2.0 * nb * m * n * k
    threads = cores if flops >= _PARALLEL_FLOPS else 1
    kc = max(64, min(512, (l1 // 2 // (nr * elem)) // 16 * 16))
    kc = k if k <= kc * 5 // 4 else _split(k, kc, 16)
    mc = max(mr, min(32 * mr, (l2 // 2 // (kc * elem)) // mr * mr))  # measured: 2048^3 +9%, 1024^3 -4% vs 16*MR
    nc = max(nr, min(64 * nr, (l2 // 2 // (kc * elem)) // nr * nr))
    mc, nc = _split(m, min(mc, _round_up(m, mr)), mr), _split(n, min(nc, _round_up(n, nr)), nr)

    def tasks() -> int:
        return nb * (-(-m // mc)) * (-(-n // nc))

    # B packed once for all blocks ("shared") pays off when several M blocks read it; with one M block
    # per batch, each task packs its own K slices of B just before use ("task"), so packed B stays in
    # cache, and threads split N (splitting M would pack the same B twice)
    pack_b = "task" if -(-m // mc) == 1 or m <= 48 * mr else "shared"  # measured: 512x3072x768 0.76 -> 0.87
    if pack_b == "task":
        mc = _round_up(m, mr)
    # every thread gets a block, and blocks divide evenly over threads (or there are enough to balance);
    # with shared B, M is split first: every N block packs its A rows again
    while (tasks() < threads or (tasks() % threads and tasks() < 4 * threads)) and (mc > mr or nc > nr):
        if (pack_b == "shared" and mc > mr) or nc <= nr:
            mc = _split(m, max(mr, _round_up(mc // 2, mr)), mr)
        else:
            nc = _split(n, max(nr, _round_up(nc // 2, nr)), nr)
    return {"MC": mc, "NC": nc, "KC": kc, "MR": mr, "NR": nr, "threads": threads, "pack": True,
            "pack_b": pack_b, "order": "mn", "extern": False, "dot": dot}


def core_alternative(m: int, n: int, k: int, nb: int, dtype: torch.dtype, description: dict[str, Any],
                     storage: torch.dtype | None = None) -> dict[str, Any] | None:
    """The default blocks of the bfloat16 core the space's default does not use (the dot core when the
    default is the FMA core and the other way round), or None when the dot core is not offered: a race
    candidate (:meth:`.matmul.MatmulKernel.other_cores`), as its best-performing core depends on the
    shape, the threads and the host."""
    if storage != torch.bfloat16 or not has_bf16_dot(description):
        return None
    return default_blocks(m, n, k, nb, dtype, description, not dot_pays(description))


def gemm_space(m: int, n: int, k: int, nb: int, dtype: torch.dtype, description: dict[str, Any],
               storage: torch.dtype | None = None) -> ScheduleSpace:
    """The matmul schedule space: cache blocks, register block, threads, A packing, where B is packed
    (once for all tasks, or per task), task order, extern.

    ``extern`` runs torch.mm/bmm and then the generated epilogue; it only ever wins through a
    tuning record (the default is the generated kernel) and takes the default blocks (which it
    ignores), so it is one candidate.
    """
    isa = vector_isa(description)
    shapes = micro_shapes(isa, dtype)
    # NOTE: the dot core is the default, at every size, where a throughput probe on this CPU says vdpbf16ps
    # does more multiply-adds per second than FMAs (AMD Zen 4: 2x; the earlier Xeon: 0.5x; gemm_dot.dot_pays).
    # With its pairs packed by in-register 4x16 transposes it ran at 0.88-0.96x oneDNN's bf16 GEMM
    # (torch.mm) at transformer shapes (M 256, K 384/1024, N 128-5000; one and two threads, Zen 4; the FMA
    # core 0.40-0.45x), 1.4-2.2x on small ones (64^3, 8x384x384) and 0.75x at M = 1 (the FMA core 0.23x);
    # with the earlier strided scalar pair packing it lost to the FMA core inside models, so it was the
    # default only from K >= 1024 and M*N >= 2^19. The compile-time race still times the other core and extern.
    dot = storage == torch.bfloat16 and has_bf16_dot(description)
    default = default_blocks(m, n, k, nb, dtype, description, dot and dot_pays(description))
    alternative = core_alternative(m, n, k, nb, dtype, description, storage)
    blocks_of = [default] + ([alternative] if alternative else [])
    cores = max(1, int(description.get("cores") or 1))
    threads = sorted({1, *(t for t in (2, 4, 8, 16, 32, 64) if t <= cores), cores})
    params: dict[str, list[Any]] = {
        "MC": sorted({*_MC, *(b["MC"] for b in blocks_of)}), "NC": sorted({*_NC, *(b["NC"] for b in blocks_of)}),
        "KC": sorted({*_KC, *(b["KC"] for b in blocks_of)}), "MR": sorted({mr for mr, _ in shapes}),
        "NR": sorted({nr for _, nr in shapes}), "threads": threads, "pack": [True, False],
        "pack_b": ["shared", "task"], "order": ["mn", "nm"], "extern": [False, True],
        "dot": [False, True] if dot else [False]}
    feasible = set(shapes)

    def registers(c: Any) -> str | None:
        if (c["MR"], c["NR"]) not in feasible:
            return f"{c['MR']}x{c['NR']} is not a register block of {isa} ({sorted(feasible)})"
        return None

    def blocks(c: Any) -> str | None:
        if c["MC"] % c["MR"] or c["NC"] % c["NR"]:
            return "MC must be a multiple of MR and NC of NR"
        return None

    def packing(c: Any) -> str | None:
        if not c["pack"] and storage == torch.bfloat16:
            return "bfloat16 A is converted while packing: pack must be on"
        return None

    def extern(c: Any) -> str | None:
        if c["extern"] and any(c[p] != v for p, v in default.items() if p != "extern"):
            return "the extern candidate takes the default values of the other parameters"
        return None

    return ScheduleSpace("matmul", params, [registers, blocks, packing, extern], default=default,
                         version=SPACE_VERSION)


_CORE = r"""#ifndef TW_GEMM_CORE
#define TW_GEMM_CORE
#include <cstdlib>
#include <algorithm>
#include <type_traits>
#include <cstring>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

template <class T> struct TwVec;
#if defined(__AVX512F__)
template <> struct TwVec<float> {
  using R = __m512; static constexpr int W = 16;
  static inline R zero() { return _mm512_setzero_ps(); }
  static inline R load(const float* p) { return _mm512_loadu_ps(p); }
  static inline void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static inline R set1(float x) { return _mm512_set1_ps(x); }
  static inline R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static inline R add(R a, R b) { return _mm512_add_ps(a, b); }
};
template <> struct TwVec<double> {
  using R = __m512d; static constexpr int W = 8;
  static inline R zero() { return _mm512_setzero_pd(); }
  static inline R load(const double* p) { return _mm512_loadu_pd(p); }
  static inline void store(double* p, R v) { _mm512_storeu_pd(p, v); }
  static inline R set1(double x) { return _mm512_set1_pd(x); }
  static inline R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static inline R add(R a, R b) { return _mm512_add_pd(a, b); }
};
#elif defined(__AVX2__) && defined(__FMA__)
template <> struct TwVec<float> {
  using R = __m256; static constexpr int W = 8;
  static inline R zero() { return _mm256_setzero_ps(); }
  static inline R load(const float* p) { return _mm256_loadu_ps(p); }
  static inline void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static inline R set1(float x) { return _mm256_set1_ps(x); }
  static inline R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static inline R add(R a, R b) { return _mm256_add_ps(a, b); }
};
template <> struct TwVec<double> {
  using R = __m256d; static constexpr int W = 4;
  static inline R zero() { return _mm256_setzero_pd(); }
  static inline R load(const double* p) { return _mm256_loadu_pd(p); }
  static inline void store(double* p, R v) { _mm256_storeu_pd(p, v); }
  static inline R set1(double x) { return _mm256_set1_pd(x); }
  static inline R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static inline R add(R a, R b) { return _mm256_add_pd(a, b); }
};
#else
template <class T> struct TwVec {
  using R = T; static constexpr int W = 1;
  static inline R zero() { return T(0); }
  static inline R load(const T* p) { return *p; }
  static inline void store(T* p, R v) { *p = v; }
  static inline R set1(T x) { return x; }
  static inline R fma(R a, R b, R c) { return a * b + c; }
  static inline R add(R a, R b) { return a + b; }
};
#endif

template <class T>
using TwMicroFn = void (*)(int64_t, const T*, int64_t, int64_t, const T*, T*, int64_t, int);
static TwMicroFn<float> tw_pick_micro(int64_t mr, int64_t nr, bool packed, float*);
static TwMicroFn<double> tw_pick_micro(int64_t mr, int64_t nr, bool packed, double*);

// C[0:MR, 0:NV*W] (row stride ldc) = or += A[0:MR, 0:kc] @ Bpanel[0:kc, 0:NV*W].
// Packed A: element (i, k) at a[k*MR + i]; otherwise at a[i*rsa + k*csa].
template <class T, int MR, int NV, bool PACKED>
static void tw_micro(int64_t kc, const T* __restrict a, int64_t rsa, int64_t csa, const T* __restrict b,
                     T* __restrict c, int64_t ldc, int first) {
  using V = TwVec<T>;
  constexpr int W = V::W, NR = NV * W;
  typename V::R acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[i][v] = V::zero();
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) __builtin_prefetch(c + i * ldc, 1, 3);  // the C tile, read after the loop
  for (int64_t k = 0; k < kc; ++k) {
    if (PACKED) __builtin_prefetch(a + (k + 16) * MR, 0, 3);  // the A micro-panel streams from L2
    typename V::R bv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + k * NR + v * W);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const typename V::R av = V::set1(PACKED ? a[k * MR + i] : a[i * rsa + k * csa]);
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[i][v] = V::fma(av, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      T* p = c + i * ldc + v * W;
      V::store(p, first ? acc[i][v] : V::add(acc[i][v], V::load(p)));
    }
}

static inline float tw_to_compute(float x, float*) { return x; }
static inline float tw_to_compute(uint16_t x, float*) { return tw_bf16_load(x); }
static inline double tw_to_compute(double x, double*) { return x; }

// A growable 64-byte aligned scratch buffer (one per thread: packing and C tiles are reused across calls).
template <class T> struct TwScratch {
  T* data = nullptr; size_t size = 0;
  T* get(size_t n) {
    if (n > size) {
      std::free(data);
      data = static_cast<T*>(std::aligned_alloc(64, ((n * sizeof(T) + 63) / 64) * 64));
      size = data ? n : 0;
    }
    return data;
  }
  ~TwScratch() { std::free(data); }
};

// Pack rows [i0, i0+mc) x cols [p0, p0+kc) of A into MR-row micro-panels dst[panel][kc][mr] (zero rows past mc).
// Done in chunks of 16 columns: each row's cache line is read once and used at once (rows a power of two
// apart share an L1 set), and the chunk's destination (16 x MR values) stays in L1.
#if defined(__AVX512F__)
// One float micro-panel with AVX-512 gathers: 16 rows' values at a column per instruction (masked past `rows`).
static inline void tw_pack_panel_gather(const float* a, int64_t sam, int64_t sak, int64_t rows, int64_t kc,
                                        int64_t mr, float* panel) {
  const __m512i index = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int32_t)sam));
  for (int64_t g0 = 0; g0 < mr; g0 += 16) {
    const int64_t lanes = std::min<int64_t>(16, mr - g0);
    const int64_t valid = std::max<int64_t>(0, std::min<int64_t>(lanes, rows - g0));
    const __mmask16 load = (__mmask16)((1u << valid) - 1u), store = (__mmask16)((1u << lanes) - 1u);
    const float* base = a + g0 * sam;
    for (int64_t kk = 0; kk < kc; ++kk) {
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), load, index, base + kk * sak, 4);
      _mm512_mask_storeu_ps(panel + kk * mr + g0, store, v);
    }
  }
}
#endif

template <class S, class T>
static void tw_pack_a(const S* a, int64_t sam, int64_t sak, int64_t mc, int64_t kc, int64_t mr, T* dst) {
  for (int64_t ip = 0; ip < mc; ip += mr) {
    const int64_t rows = std::min<int64_t>(mr, mc - ip);
    T* panel = dst + ip * kc;
#if defined(__AVX512F__)
    if constexpr (std::is_same<S, float>::value && std::is_same<T, float>::value) {
      // not for rows a multiple of 4 KiB apart: a gather's 16 lines would all fall in one L1 set
      if (sam != 1 && sam > 0 && sam < (INT64_C(1) << 31) / 16 && (sam * 4) % 4096 != 0) {
        tw_pack_panel_gather(a + ip * sam, sam, sak, rows, kc, mr, panel);
        continue;
      }
    }
#endif
    for (int64_t k0 = 0; k0 < kc; k0 += 16) {
      const int64_t k1 = std::min<int64_t>(k0 + 16, kc);
      for (int64_t ii = 0; ii < rows; ++ii) {
        const S* src = a + (ip + ii) * sam;
        for (int64_t kk = k0; kk < k1; ++kk) panel[kk * mr + ii] = tw_to_compute(src[kk * sak], (T*)nullptr);
      }
      for (int64_t ii = rows; ii < mr; ++ii)
        for (int64_t kk = k0; kk < k1; ++kk) panel[kk * mr + ii] = T(0);
    }
  }
}

// Pack columns [p*nr, p*nr+nr) of B (k rows) into dst[k][nr] (zero columns past n).
template <class S, class T>
static void tw_pack_b(const S* b, int64_t sbk, int64_t sbn, int64_t k, int64_t n, int64_t p, int64_t nr, T* dst) {
  const int64_t j0 = p * nr, cols = std::min<int64_t>(nr, n - j0);
  if (sbn == 1 || sbk != 1) {
    for (int64_t kk = 0; kk < k; ++kk) {
      const S* src = b + kk * sbk + j0 * sbn;
      T* out = dst + kk * nr;
      int64_t jj = 0;
      if (sbn == 1)
        for (; jj + 16 <= cols; jj += 16)
          for (int t = 0; t < 16; ++t) out[jj + t] = tw_to_compute(src[jj + t], (T*)nullptr);
      for (; jj < cols; ++jj) out[jj] = tw_to_compute(src[jj * sbn], (T*)nullptr);
      for (jj = cols; jj < nr; ++jj) out[jj] = T(0);
    }
  } else {  // B read along K (a transposed weight): its columns are rows of B^T, packed like A
    tw_pack_a(b + j0 * sbn, sbn, sbk, cols, k, nr, dst);
  }
}

"""

_CORE_LOOP = r"""struct TwGemmShape {
  int64_t nb, m, n, k, sab, sam, sak, sbb, sbk, sbn;
};
struct TwGemmBlocks {
  int64_t mc, nc, kc, mr, nr, threads, pack, order, task_b;  // task_b: each task packs its own B slices
};

// How the loop nest below packs and multiplies: the FMA core packs S (float, double or bfloat16) into
// the compute type T and runs tw_micro; the bfloat16 dot core (TwDotCore) packs pairs of K.
template <class S, class T> struct TwFmaCore {
  using P = T;                                          // packed element
  static constexpr bool kStrided = std::is_same<S, T>::value;  // A may be read in place
  static inline int64_t rows(int64_t kc) { return kc; }  // packed rows holding kc values of K
  static inline void pack_a(const S* a, int64_t sam, int64_t sak, int64_t mc, int64_t kc, int64_t mr, P* dst) {
    tw_pack_a(a, sam, sak, mc, kc, mr, dst);
  }
  static inline void pack_b(const S* b, int64_t sbk, int64_t sbn, int64_t k, int64_t n, int64_t p, int64_t nr, P* dst) {
    tw_pack_b(b, sbk, sbn, k, n, p, nr, dst);
  }
  static inline TwMicroFn<T> micro(int64_t mr, int64_t nr, bool packed) { return tw_pick_micro(mr, nr, packed, (T*)nullptr); }
};

// C = A @ B blocked as described above; epi(batch, row, j0, j1, crow) receives each finished row
// segment of C (compute type, crow[j - j0]) exactly once.
template <class S, class T, class Epi, class Core = TwFmaCore<S, T>>
static void tw_gemm(const S* A, const S* B, const TwGemmShape& g, const TwGemmBlocks& blk, const Epi& epi) {
  using P = typename Core::P;
  const auto packed_fn = Core::micro(blk.mr, blk.nr, true);
  const auto strided_fn = Core::kStrided ? Core::micro(blk.mr, blk.nr, false) : nullptr;
  if (!packed_fn) std::abort();  // the schedule space admits only instantiated register blocks
  const int64_t mr = blk.mr, nr = blk.nr, mc_max = blk.mc, nc_max = blk.nc, kc_max = blk.kc;
  const int64_t panels = (g.n + nr - 1) / nr;
  const int64_t b_batches = g.sbb == 0 ? 1 : g.nb;
  const int64_t panel_size = Core::rows(g.k) * nr, batch_size = panels * panel_size;
  const bool task_b = blk.task_b != 0;
  static thread_local TwScratch<P> b_scratch;
  P* bp = task_b ? nullptr : b_scratch.get((size_t)(b_batches * batch_size));
  const int64_t mblocks = (g.m + mc_max - 1) / mc_max, nblocks = (g.n + nc_max - 1) / nc_max;
  const int64_t tasks = g.nb * mblocks * nblocks;
  const bool pack_a = blk.pack != 0 || !strided_fn;
  // C tile rows padded by a cache line: rows a power of two apart would share one L1 set
  const int64_t ldc = ((nc_max + nr - 1) / nr) * nr + 64 / (int64_t)sizeof(T);
  #pragma omp parallel num_threads(tw_nthreads(blk.threads)) if(tw_nthreads(blk.threads) > 1)
  {
    if (!task_b) {
      #pragma omp for schedule(static)
      for (int64_t t = 0; t < b_batches * panels; ++t)
        Core::pack_b(B + (t / panels) * g.sbb, g.sbk, g.sbn, g.k, g.n, t % panels, nr,
                     bp + (t / panels) * batch_size + (t % panels) * panel_size);
    }
    static thread_local TwScratch<P> a_scratch, bt_scratch;
    static thread_local TwScratch<T> c_scratch;
    P* bt = task_b ? bt_scratch.get((size_t)(((nc_max + nr - 1) / nr) * nr * Core::rows(kc_max))) : nullptr;
    P* ap = a_scratch.get((size_t)(((mc_max + mr - 1) / mr) * mr * Core::rows(kc_max)));
    T* cb = c_scratch.get((size_t)(((mc_max + mr - 1) / mr) * mr * ldc));
    #pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t bi = t / (mblocks * nblocks), rest = t % (mblocks * nblocks);
      const int64_t im = blk.order == 0 ? rest / nblocks : rest % mblocks;
      const int64_t jn = blk.order == 0 ? rest % nblocks : rest / mblocks;
      const int64_t i0 = im * mc_max, mc = std::min(mc_max, g.m - i0);
      const int64_t j0 = jn * nc_max, nc = std::min(nc_max, g.n - j0);
      const S* a_blk = A + bi * g.sab + i0 * g.sam;
      const P* b_blk = task_b ? nullptr : bp + (g.sbb == 0 ? 0 : bi * batch_size) + (j0 / nr) * panel_size;
      for (int64_t p0 = 0; p0 < g.k; p0 += kc_max) {  // p0: a multiple of KC, which the space keeps even
        const int64_t kc = std::min(kc_max, g.k - p0), rows = Core::rows(kc);
        if (task_b)  // this task's KC x NC slice of B, packed just before use (it stays in cache)
          for (int64_t jr = 0; jr < nc; jr += nr)
            Core::pack_b(B + bi * g.sbb + p0 * g.sbk + j0 * g.sbn, g.sbk, g.sbn, kc, nc, jr / nr, nr, bt + (jr / nr) * rows * nr);
        if (pack_a) Core::pack_a(a_blk + p0 * g.sak, g.sam, g.sak, mc, kc, mr, ap);
        for (int64_t jr = 0; jr < nc; jr += nr) {
          const P* bpanel = task_b ? bt + (jr / nr) * rows * nr : b_blk + (jr / nr) * panel_size + Core::rows(p0) * nr;
          for (int64_t ir = 0; ir < mc; ir += mr) {
            T* ctile = cb + ir * ldc + jr;
            if (pack_a) {
              packed_fn(rows, ap + ir * rows, 1, mr, bpanel, ctile, ldc, p0 == 0);
            } else if (ir + mr <= mc) {
              if constexpr (Core::kStrided)
                strided_fn(kc, a_blk + ir * g.sam + p0 * g.sak, g.sam, g.sak, bpanel, ctile, ldc, p0 == 0);
            } else {  // odd rows at the block's end: pack just them
              Core::pack_a(a_blk + ir * g.sam + p0 * g.sak, g.sam, g.sak, mc - ir, kc, mr, ap);
              packed_fn(rows, ap, 1, mr, bpanel, ctile, ldc, p0 == 0);
            }
          }
        }
      }
      for (int64_t ii = 0; ii < mc; ++ii) epi(bi, i0 + ii, j0, j0 + nc, cb + ii * ldc);
    }
  }
}

// The extern path: C was computed by another library (row stride ldc); run the epilogue over its rows.
template <class S, class T, class Epi>
static void tw_epilogue_only(const S* c, int64_t ldc, int64_t nb, int64_t m, int64_t n, int64_t threads, const Epi& epi) {
  #pragma omp parallel num_threads(tw_nthreads(threads)) if(tw_nthreads(threads) > 1)
  {
    static thread_local TwScratch<T> row_scratch;
    T* row = row_scratch.get((size_t)n);
    #pragma omp for schedule(static)
    for (int64_t r = 0; r < nb * m; ++r) {
      const S* src = c + r * ldc;
      for (int64_t j = 0; j < n; ++j) row[j] = tw_to_compute(src[j], (T*)nullptr);
      epi(r / m, r % m, 0, n, row);
    }
  }
}
#endif
"""
