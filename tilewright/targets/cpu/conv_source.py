"""The CPU target's convolution core (C++ text) and its schedule space.

Two algorithms, both writing NCHW output rows (one output channel, a run of output pixels) to
the kernel's fused epilogue while they are in cache:

- ``tw_conv_gemm``: implicit GEMM per image and group, ``C[K/G, P] = W[K/G, C/G*R*S] @ im2col``
  with ``P = OH*OW`` output pixels as the GEMM's columns (so a register block's vectors run along
  pixels and output rows are contiguous NCHW rows). Each OpenMP task owns ``MC`` output channels
  x ``NC`` pixels of one image; per ``KC`` slice of the reduction it gathers its im2col slice
  straight into ``NR``-wide packed panels (padding as zeros, unit-stride copies where the
  convolution's stride is 1), and runs the GEMM core's ``tw_micro`` register blocks
  (:mod:`.gemm_micro`) over it. The weight (the GEMM's A) is read either pre-packed into
  ``MR``-row micro-panels (``wpack=cached``: packed once per weight version by the kernel),
  straight through its strides (``strided``), or packed per task (``task``).
- ``tw_conv_depthwise``: direct depthwise convolution (groups == in == out channels): per
  (image, channel) task a zero-padded copy of the plane, then 32-pixel register accumulators
  over the ``R x S`` taps.

``tw_conv_epilogue_only`` runs the epilogue over a convolution computed elsewhere (the extern
oneDNN candidate).
"""
from __future__ import annotations

from typing import Any

import torch

from ...schedule.space import ScheduleSpace
from .gemm_dot import dot_pays, has_bf16_dot
from .gemm_micro import default_blocks, micro_shapes, vector_isa

SPACE_VERSION = "2"  # 2: the bfloat16 dot core ("dot")
#: multiples of every register block's MR (except 14) and NR: most choices fit any register block
_MC = (48, 96, 192, 384, 768)
_NC = (96, 192, 384, 768, 1536)
_KC = (64, 128, 192, 256, 384)
#: below this many flops one thread is faster than waking the team
_PARALLEL_FLOPS = 2e6


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def conv_default(kg: int, pixels: int, crs: int, tasks_outer: int, dtype: torch.dtype, description: dict[str, Any],
                 wpack: str, dot: bool = False) -> dict[str, Any]:
    """Default blocks of an implicit-GEMM convolution: ``kg`` output channels per group, ``pixels``
    output pixels, a reduction of ``crs``, ``tasks_outer`` = images x groups.

    Register block and ``KC`` as the GEMM's defaults choose them; ``MC`` covers every output
    channel of the group (the im2col slice is gathered once per pixel block) while the ``MC x KC``
    weight block fits half of L2; ``NC`` keeps the packed ``KC x NC`` im2col slice in a quarter of
    L2; blocks are then split until every thread has work. ``dot``: the bfloat16 dot core (pairs:
    2 bytes per value of the reduction, so the GEMM's dot ``KC`` and twice the blocks per cache).
    """
    base = default_blocks(kg, pixels, crs, tasks_outer, dtype, description, dot)
    mr, nr, kc = int(base["MR"]), int(base["NR"]), int(base["KC"])
    elem = 8 if dtype == torch.float64 else (2 if dot else 4)
    l2 = int(description.get("l2_bytes") or 1 << 20)
    cores = max(1, int(description.get("cores") or 1))
    threads = cores if 2.0 * kg * pixels * crs * tasks_outer >= _PARALLEL_FLOPS else 1
    mc = min(_round_up(kg, mr), max(mr, (l2 // 2 // (kc * elem)) // mr * mr))
    nc = min(_round_up(pixels, nr), max(nr, (l2 // 4 // (kc * elem)) // nr * nr))

    def tasks() -> int:
        return tasks_outer * -(-kg // mc) * -(-pixels // nc)

    while (tasks() < threads or (tasks() % threads and tasks() < 4 * threads)) and (nc > nr or mc > mr):
        if nc > nr:
            nc = max(nr, _round_up(-(-pixels // (-(-pixels // nc) + 1)), nr))
        else:
            mc = max(mr, _round_up(mc // 2, mr))
    return {"MC": mc, "NC": nc, "KC": kc, "MR": mr, "NR": nr, "threads": threads, "wpack": wpack,
            "extern": False, "dot": dot}


def conv_alternative(kg: int, pixels: int, crs: int, tasks_outer: int, dtype: torch.dtype, storage: torch.dtype,
                     description: dict[str, Any], wpack: str) -> dict[str, Any] | None:
    """The default config of the bfloat16 core the space's default does not use (implicit GEMM), or
    None when the dot core is not offered: a race candidate (:meth:`.conv.ConvKernel.other_cores`)."""
    if storage != torch.bfloat16 or not has_bf16_dot(description):
        return None
    return conv_default(kg, pixels, crs, tasks_outer, dtype, description, wpack, not dot_pays(description))


def conv_space(algo: str, kg: int, pixels: int, crs: int, tasks_outer: int, dtype: torch.dtype,
               storage: torch.dtype, description: dict[str, Any], weight_is_input: bool) -> ScheduleSpace:
    """The convolution schedule space.

    ``gemm``: ``MC``, ``NC``, ``KC``, ``MR`` x ``NR`` (register blocks of the ISA), ``threads``,
    ``wpack`` (``cached``: pre-packed once per weight version, only for weights that are graph
    inputs, whose version counter tells when they changed; ``strided``: read in place, float32
    and float64 only; ``task``: packed by each task) and ``extern`` (oneDNN via
    torch.convolution, then the generated epilogue: one candidate, raced against the generated
    default at compile time, never the default) and ``dot`` (bfloat16 on CPUs with AVX512_BF16: the
    ``vdpbf16ps`` dot core of :mod:`.conv_dot`, the default where :func:`.gemm_dot.dot_pays`).
    ``depthwise``: ``threads`` and ``extern``.
    """
    cores = max(1, int(description.get("cores") or 1))
    threads = sorted({1, *(t for t in (2, 4, 8, 16, 32, 64) if t <= cores), cores})
    isa = vector_isa(description)
    shapes = micro_shapes(isa, dtype)
    if weight_is_input:
        wpack = "cached"
    else:
        wpack = "strided" if storage == dtype else "task"
    if algo == "depthwise":
        flops = 2.0 * kg * pixels * crs * tasks_outer
        default: dict[str, Any] = {"MC": 0, "NC": 0, "KC": 0, "MR": 0, "NR": 0,
                                   "threads": cores if flops >= _PARALLEL_FLOPS else 1, "wpack": "strided",
                                   "extern": False, "dot": False}
        params: dict[str, list[Any]] = {"MC": [0], "NC": [0], "KC": [0], "MR": [0], "NR": [0], "threads": threads,
                                        "wpack": ["strided"], "extern": [False, True], "dot": [False]}
        return ScheduleSpace("conv", params, [], default=default, version=SPACE_VERSION)
    dot = storage == torch.bfloat16 and has_bf16_dot(description)
    default = conv_default(kg, pixels, crs, tasks_outer, dtype, description, wpack, dot and dot_pays(description))
    alternative = conv_alternative(kg, pixels, crs, tasks_outer, dtype, storage, description, wpack)
    blocks_of = [default] + ([alternative] if alternative else [])
    params = {"MC": sorted({*_MC, *(b["MC"] for b in blocks_of)}), "NC": sorted({*_NC, *(b["NC"] for b in blocks_of)}),
              "KC": sorted({*_KC, *(b["KC"] for b in blocks_of)}), "MR": sorted({mr for mr, _ in shapes}),
              "NR": sorted({nr for _, nr in shapes}), "threads": threads,
              "wpack": ["cached", "strided", "task"], "extern": [False, True], "dot": [False, True] if dot else [False]}
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
        if c["wpack"] == "cached" and not weight_is_input:
            return "wpack=cached needs a weight that is a graph input (its version counter tells when it changed)"
        if c["wpack"] == "strided" and storage != dtype:
            return f"{storage} weights are converted while packing: wpack must be cached or task"
        return None

    def extern(c: Any) -> str | None:
        if c["extern"] and any(c[p] != v for p, v in default.items() if p != "extern"):
            return "the extern candidate takes the default values of the other parameters"
        return None

    def pairs(c: Any) -> str | None:
        if c["dot"] and c["KC"] % 2 and c["KC"] < crs:
            return "the dot core packs pairs of the reduction: KC must be even (or cover it)"
        return None

    return ScheduleSpace("conv", params, [registers, blocks, packing, extern, pairs], default=default,
                         version=SPACE_VERSION)


CORE = r"""#ifndef TW_CONV_CORE
#define TW_CONV_CORE
struct TwConvGeom {
  int64_t n, c, h, w;          // input sizes
  int64_t sxn, sxc, sxh, sxw;  // input strides
  int64_t k, r, s, oh, ow, groups;
  int64_t sh, sw, ph, pw, dh, dw;
};
static inline uint16_t tw_to_compute(uint16_t x, uint16_t*) { return x; }  // raw bfloat16 (the dot core's im2col)
struct TwConvBlocks {
  int64_t mc, nc, kc, mr, nr, threads, wmode;  // wmode: 0 pre-packed weight, 1 strided, 2 packed per task
};

template <class S, class T>
static inline void tw_conv_copy(const S* __restrict src, T* __restrict dst, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same<S, uint16_t>::value && std::is_same<T, uint16_t>::value) {
    std::memcpy(dst, src, (size_t)n * sizeof(T));
    return;
  }
#if defined(__AVX512F__) || defined(__AVX2__)
  if constexpr (std::is_same<S, float>::value && std::is_same<T, float>::value) {
    using V = TwVec<float>;
    for (; i + V::W <= n; i += V::W) V::store(dst + i, V::load(src + i));
  }
#endif
  for (; i < n; ++i) dst[i] = tw_to_compute(src[i], (T*)nullptr);
}

// im2col rows [p0, p0 + kc) (ordered c, r, s over the group's channels from c0) x output pixels
// [q0, q0 + nc) into NR-wide panels dst[panel][kk][nr]; out-of-image taps and pixels past the end are 0.
// `rows` (5 * kc values) receives each row's channel offset, first input row/column and the output
// columns [lo, hi) whose input column is inside the image, so the panel loop divides nothing per row.
template <class S, class T>
static void tw_conv_pack_b(const S* __restrict x, const TwConvGeom& g, int64_t c0, int64_t p0, int64_t kc,
                           int64_t q0, int64_t nc, int64_t nr, T* __restrict dst, int64_t* __restrict rows) {
  const int64_t rs = g.r * g.s, q1 = std::min(q0 + nc, g.oh * g.ow);
  const int64_t panels = (nc + nr - 1) / nr;
  for (int64_t kk = 0; kk < kc; ++kk) {
    const int64_t row = p0 + kk, c = row / rs, r = (row % rs) / g.s, s = row % g.s;
    const int64_t iw0 = s * g.dw - g.pw;
    int64_t lo = iw0 >= 0 ? 0 : (-iw0 + g.sw - 1) / g.sw;
    int64_t hi = g.w - 1 - iw0 < 0 ? 0 : (g.w - 1 - iw0) / g.sw + 1;
    lo = std::min(lo, g.ow);
    hi = std::max(lo, std::min(hi, g.ow));
    int64_t* rw = rows + 5 * kk;
    rw[0] = (c0 + c) * g.sxc; rw[1] = r * g.dh - g.ph; rw[2] = iw0; rw[3] = lo; rw[4] = hi;
  }
  const bool unit = g.sw == 1 && g.sxw == 1;
  for (int64_t pnl = 0; pnl < panels; ++pnl) {
    const int64_t qs = q0 + pnl * nr, oh0 = qs / g.ow, ow0 = qs % g.ow;
    for (int64_t kk = 0; kk < kc; ++kk) {
      const int64_t* rw = rows + 5 * kk;
      const S* xc = x + rw[0];
      const int64_t ih0 = rw[1], iw0 = rw[2], lo = rw[3], hi = rw[4];
      T* out = dst + (pnl * kc + kk) * nr;
      int64_t q = qs, jj = 0, oh = oh0, ow = ow0;
      while (jj < nr) {
        if (q >= q1) {
          for (; jj < nr; ++jj) out[jj] = T(0);
          break;
        }
        const int64_t run = std::min(std::min(nr - jj, g.ow - ow), q1 - q);
        const int64_t ih = oh * g.sh + ih0, end = ow + run;
        T* o = out + jj - ow;  // o[t] is output column t of this output row
        if (ih < 0 || ih >= g.h) {
          for (int64_t t = ow; t < end; ++t) o[t] = T(0);
        } else {
          const S* xr = xc + ih * g.sxh;
          const int64_t a = std::min(std::max(ow, lo), end), b = std::max(a, std::min(end, hi));
          for (int64_t t = ow; t < a; ++t) o[t] = T(0);
          if (unit) {
            tw_conv_copy(xr + iw0 + a, o + a, b - a);
          } else if (g.sw == 2 && g.sxw == 1) {  // a constant stride: even/odd lanes by permutes, not gathers
            const S* src = xr + iw0;
            #pragma omp simd
            for (int64_t t = a; t < b; ++t) o[t] = tw_to_compute(src[2 * t], (T*)nullptr);
          } else {
            for (int64_t t = a; t < b; ++t) o[t] = tw_to_compute(xr[(t * g.sw + iw0) * g.sxw], (T*)nullptr);
          }
          for (int64_t t = b; t < end; ++t) o[t] = T(0);
        }
        jj += run; q += run; ow += run;
        if (ow == g.ow) { ow = 0; ++oh; }
      }
    }
  }
}

// Implicit GEMM (see the module docstring). W: the weight [K, C/G*R*S] (rows ldw apart, row-major
// inside); Wp: the pre-packed weight [G][Kpad/MR][CRS][MR] (wmode 0). epi(n, k, q0, q1, crow) gets
// each finished run of output pixels of channel k (compute type, crow[q - q0]) exactly once.
template <class S, class T, class Epi>
static void tw_conv_gemm(const S* X, const S* W, int64_t ldw, const T* Wp, const TwConvGeom& g,
                         const TwConvBlocks& blk, const Epi& epi) {
  const TwMicroFn<T> packed_fn = tw_pick_micro(blk.mr, blk.nr, true, (T*)nullptr);
  const TwMicroFn<T> strided_fn = tw_pick_micro(blk.mr, blk.nr, false, (T*)nullptr);
  if (!packed_fn || !strided_fn) std::abort();  // the schedule space admits only instantiated register blocks
  const int64_t mr = blk.mr, nr = blk.nr, kc_max = blk.kc;
  const int64_t cg = g.c / g.groups, kg = g.k / g.groups, crs = cg * g.r * g.s, P = g.oh * g.ow;
  const int64_t kpad = ((kg + mr - 1) / mr) * mr;
  const int64_t mc_max = std::min(blk.mc, kpad), nc_max = std::min(blk.nc, ((P + nr - 1) / nr) * nr);
  const int64_t mblocks = (kg + mc_max - 1) / mc_max, nblocks = (P + nc_max - 1) / nc_max;
  const int64_t tasks = g.n * g.groups * mblocks * nblocks;
  const int64_t ldc = nc_max + 64 / (int64_t)sizeof(T);  // rows a power of two apart would share an L1 set
  #pragma omp parallel num_threads(tw_nthreads(blk.threads)) if(tw_nthreads(blk.threads) > 1)
  {
    static thread_local TwScratch<T> b_scratch, a_scratch, c_scratch;
    static thread_local TwScratch<int64_t> row_scratch;
    int64_t* rows = row_scratch.get((size_t)(5 * kc_max));
    T* bp = b_scratch.get((size_t)(nc_max * kc_max));
    T* ap = a_scratch.get((size_t)(mc_max * kc_max));
    T* cb = c_scratch.get((size_t)(mc_max * ldc));
    #pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t jn = t % nblocks, im = (t / nblocks) % mblocks;
      const int64_t gi = (t / (nblocks * mblocks)) % g.groups, ni = t / (nblocks * mblocks * g.groups);
      const int64_t m0 = im * mc_max, mc = std::min(mc_max, kg - m0);
      const int64_t q0 = jn * nc_max, nc = std::min(nc_max, P - q0);
      const S* x = X + ni * g.sxn;
      const S* wblk = W + (gi * kg + m0) * ldw;
      for (int64_t p0 = 0; p0 < crs; p0 += kc_max) {
        const int64_t kc = std::min(kc_max, crs - p0);
        tw_conv_pack_b(x, g, gi * cg, p0, kc, q0, nc, nr, bp, rows);
        if (blk.wmode == 2) tw_pack_a(wblk + p0, ldw, 1, mc, kc, mr, ap);
        for (int64_t jr = 0; jr < nc; jr += nr) {
          const T* bpanel = bp + (jr / nr) * kc * nr;
          for (int64_t ir = 0; ir < mc; ir += mr) {
            T* ctile = cb + ir * ldc + jr;
            if (blk.wmode == 0) {
              packed_fn(kc, Wp + (gi * kpad + m0 + ir) * crs + p0 * mr, 1, mr, bpanel, ctile, ldc, p0 == 0);
            } else if (blk.wmode == 2) {
              packed_fn(kc, ap + ir * kc, 1, mr, bpanel, ctile, ldc, p0 == 0);
            } else if (ir + mr <= mc) {
              if constexpr (std::is_same<S, T>::value)
                strided_fn(kc, wblk + ir * ldw + p0, ldw, 1, bpanel, ctile, ldc, p0 == 0);
            } else {  // the group's last rows: pack just them
              tw_pack_a(wblk + ir * ldw + p0, ldw, 1, mc - ir, kc, mr, ap);
              packed_fn(kc, ap, 1, mr, bpanel, ctile, ldc, p0 == 0);
            }
          }
        }
      }
      for (int64_t ii = 0; ii < mc; ++ii) epi(ni, gi * kg + m0 + ii, q0, q0 + nc, cb + ii * ldc);
    }
  }
}

// Direct depthwise convolution (groups == C == K). Per (image, channel) the zero-padded plane is
// copied into `sw` phase planes (phase p holds padded columns p, p + sw, ...), so that every tap
// reads a contiguous run of inputs for consecutive output columns whatever the stride; each output
// row is then computed in blocks of NV vectors of register accumulators over the R x S taps.
template <class T, int NV>
static inline void tw_dw_block(const T* __restrict base, int64_t rows, int64_t cols, int64_t row_step,
                               const int64_t* __restrict col_offset, const T* __restrict wl, T* __restrict out) {
  using V = TwVec<T>;
  constexpr int U = 8 / NV;  // independent accumulator sets over taps: 8 FMA chains in flight
  typename V::R acc[U][NV];
#pragma GCC unroll 8
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[u][v] = V::zero();
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = base + r * row_step;
    const T* wr = wl + r * cols;
    int64_t s = 0;
    for (; s + U <= cols; s += U) {
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        const T* xs = xr + col_offset[s + u];
        const typename V::R wv = V::set1(wr[s + u]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[u][v] = V::fma(wv, V::load(xs + v * V::W), acc[u][v]);
      }
    }
    for (; s < cols; ++s) {
      const T* xs = xr + col_offset[s];
      const typename V::R wv = V::set1(wr[s]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[0][v] = V::fma(wv, V::load(xs + v * V::W), acc[0][v]);
    }
  }
#pragma GCC unroll 8
  for (int u = 1; u < U; ++u)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[0][v] = V::add(acc[0][v], acc[u][v]);
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) V::store(out + v * V::W, acc[0][v]);
}

template <class S, class T, class Epi>
static void tw_conv_depthwise(const S* X, const S* W, const TwConvGeom& g, int64_t threads, const Epi& epi) {
  constexpr int64_t VW = TwVec<T>::W;
  const int64_t nv = g.ow <= VW ? 1 : g.ow <= 2 * VW ? 2 : 4, block = nv * VW;
  const int64_t hp = g.h + 2 * g.ph, wp = g.w + 2 * g.pw;
  const int64_t row_stride = (wp + g.sw - 1) / g.sw + block + 16;  // a block may read `block` past a row
  const int64_t phase_stride = hp * row_stride, rs = g.r * g.s;
  const size_t plane = (size_t)(g.sw * phase_stride + block + 16);
  #pragma omp parallel num_threads(tw_nthreads(threads)) if(tw_nthreads(threads) > 1)
  {
    static thread_local TwScratch<T> pad_scratch, row_scratch, w_scratch;
    static thread_local TwScratch<int64_t> offset_scratch;
    T* pad = pad_scratch.get(plane);
    T* row = row_scratch.get((size_t)(g.ow + block));
    T* wl = w_scratch.get((size_t)rs);
    int64_t* col_offset = offset_scratch.get((size_t)g.s);  // tap s: its phase plane and column shift
    for (int64_t s = 0; s < g.s; ++s) col_offset[s] = ((s * g.dw) % g.sw) * phase_stride + (s * g.dw) / g.sw;
    #pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < g.n * g.c; ++t) {
      const int64_t ni = t / g.c, c = t % g.c;
      const S* x = X + ni * g.sxn + c * g.sxc;
      for (int64_t i = 0; i < rs; ++i) wl[i] = tw_to_compute(W[c * rs + i], (T*)nullptr);
      std::fill(pad, pad + plane, T(0));
      for (int64_t ih = 0; ih < g.h; ++ih) {
        const S* src = x + ih * g.sxh;
        if (g.sw == 1) {
          T* dst = pad + (ih + g.ph) * row_stride + g.pw;
          if (g.sxw == 1) {
            #pragma omp simd
            for (int64_t iw = 0; iw < g.w; ++iw) dst[iw] = tw_to_compute(src[iw], (T*)nullptr);
          } else {
            for (int64_t iw = 0; iw < g.w; ++iw) dst[iw] = tw_to_compute(src[iw * g.sxw], (T*)nullptr);
          }
        } else {
          for (int64_t iw = 0; iw < g.w; ++iw) {
            const int64_t col = iw + g.pw;
            pad[(col % g.sw) * phase_stride + (ih + g.ph) * row_stride + col / g.sw] =
                tw_to_compute(src[iw * g.sxw], (T*)nullptr);
          }
        }
      }
      for (int64_t oh = 0; oh < g.oh; ++oh) {
        const T* base = pad + oh * g.sh * row_stride;
        for (int64_t o0 = 0; o0 < g.ow; o0 += block) {
          const int64_t step = g.dh * row_stride;
          if (nv == 1) tw_dw_block<T, 1>(base + o0, g.r, g.s, step, col_offset, wl, row + o0);
          else if (nv == 2) tw_dw_block<T, 2>(base + o0, g.r, g.s, step, col_offset, wl, row + o0);
          else tw_dw_block<T, 4>(base + o0, g.r, g.s, step, col_offset, wl, row + o0);
        }
        epi(ni, c, oh * g.ow, (oh + 1) * g.ow, row);
      }
    }
  }
}

// The extern path: the convolution (contiguous NCHW, k channels, p pixels) came from another library.
template <class S, class T, class Epi>
static void tw_conv_epilogue_only(const S* c, int64_t n, int64_t k, int64_t p, int64_t threads, const Epi& epi) {
  #pragma omp parallel num_threads(tw_nthreads(threads)) if(tw_nthreads(threads) > 1)
  {
    static thread_local TwScratch<T> row_scratch;
    T* row = row_scratch.get((size_t)p);
    #pragma omp for schedule(static)
    for (int64_t r = 0; r < n * k; ++r) {
      const S* src = c + r * p;
      for (int64_t j = 0; j < p; ++j) row[j] = tw_to_compute(src[j], (T*)nullptr);
      epi(r / k, r % k, 0, p, row);
    }
  }
}
#endif
"""
