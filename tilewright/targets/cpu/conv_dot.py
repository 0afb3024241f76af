"""The bfloat16 dot core in implicit-GEMM convolutions (AVX512_BF16 ``vdpbf16ps``).

The convolution's implicit GEMM (:mod:`.conv_source`) with the GEMM's dot core (:mod:`.gemm_dot`):
the weight (the GEMM's A) is packed once per version as pairs of the reduction (``C/G*R*S``) in
32-bit words, ``[G][Kpad/MR][ceil(CRS/2)][MR]`` (:func:`pack_weight_pairs`); per ``KC`` slice each
task gathers its im2col slice as bfloat16 (no conversion) into ``NR``-wide panels, interleaves rows
``2q`` and ``2q+1`` into pair words (two zero-extensions, a shift and an or per 16 pixels) and runs
``tw_micro_dot`` register blocks. Products of bfloat16 are exact in float; accumulation is in float
as on the FMA path. ``KC`` is even (or covers the reduction), so pairs never straddle two slices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

CONV_DOT_CORE = r"""#if defined(__AVX512BF16__) && !defined(TW_CONV_DOT)
#define TW_CONV_DOT

// raw [kc][nr] bfloat16 (one im2col panel) -> pair words [ceil(kc/2)][nr]; an odd kc's last high halves are 0
static inline void tw_conv_pairs(const uint16_t* __restrict raw, int64_t kc, int64_t nr, uint32_t* __restrict out) {
  for (int64_t q = 0; 2 * q < kc; ++q) {
    const uint16_t* lo = raw + 2 * q * nr;
    const bool has_hi = 2 * q + 1 < kc;
    for (int64_t j = 0; j < nr; j += 16) {
      const __m512i l = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(lo + j)));
      const __m512i h = has_hi ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(lo + nr + j)))
                               : _mm512_setzero_si512();
      _mm512_storeu_si512((void*)(out + q * nr + j), _mm512_or_si512(l, _mm512_slli_epi32(h, 16)));
    }
  }
}

// tw_conv_gemm with the dot core. Wp: the weight as pair words [G][Kpad/MR][ceil(CRS/2)][MR] (wmode 0);
// wmode 2 packs each task's weight rows as pairs (TwDotCore::pack_a).
template <class Epi>
static void tw_conv_gemm_dot(const uint16_t* X, const uint16_t* W, int64_t ldw, const uint32_t* Wp, const TwConvGeom& g,
                             const TwConvBlocks& blk, const Epi& epi) {
  const TwDotFn fn = tw_pick_micro_dot(blk.mr, blk.nr);
  if (!fn || (blk.nr % 16) || blk.wmode == 1) std::abort();  // the schedule space admits only these
  const int64_t mr = blk.mr, nr = blk.nr, kc_max = blk.kc, kp_max = (kc_max + 1) / 2;
  const int64_t cg = g.c / g.groups, kg = g.k / g.groups, crs = cg * g.r * g.s, crsp = (crs + 1) / 2, P = g.oh * g.ow;
  const int64_t kpad = ((kg + mr - 1) / mr) * mr;
  const int64_t mc_max = std::min(blk.mc, kpad), nc_max = std::min(blk.nc, ((P + nr - 1) / nr) * nr);
  const int64_t mblocks = (kg + mc_max - 1) / mc_max, nblocks = (P + nc_max - 1) / nc_max;
  const int64_t tasks = g.n * g.groups * mblocks * nblocks;
  const int64_t ldc = nc_max + 16;  // rows a power of two apart would share an L1 set
  #pragma omp parallel num_threads(tw_nthreads(blk.threads)) if(tw_nthreads(blk.threads) > 1)
  {
    static thread_local TwScratch<uint16_t> raw_scratch;
    static thread_local TwScratch<uint32_t> b_scratch, a_scratch;
    static thread_local TwScratch<float> c_scratch;
    static thread_local TwScratch<int64_t> row_scratch;
    int64_t* rows = row_scratch.get((size_t)(5 * kc_max));
    uint16_t* raw = raw_scratch.get((size_t)(nc_max * kc_max));
    uint32_t* bp = b_scratch.get((size_t)(nc_max * kp_max));
    uint32_t* ap = a_scratch.get((size_t)(mc_max * kp_max));
    float* cb = c_scratch.get((size_t)(mc_max * ldc));
    #pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t jn = t % nblocks, im = (t / nblocks) % mblocks;
      const int64_t gi = (t / (nblocks * mblocks)) % g.groups, ni = t / (nblocks * mblocks * g.groups);
      const int64_t m0 = im * mc_max, mc = std::min(mc_max, kg - m0);
      const int64_t q0 = jn * nc_max, nc = std::min(nc_max, P - q0), panels = (nc + nr - 1) / nr;
      const uint16_t* x = X + ni * g.sxn;
      const uint16_t* wblk = W + (gi * kg + m0) * ldw;
      for (int64_t p0 = 0; p0 < crs; p0 += kc_max) {  // p0 even: KC is even or covers CRS
        const int64_t kc = std::min(kc_max, crs - p0), kp = (kc + 1) / 2;
        tw_conv_pack_b(x, g, gi * cg, p0, kc, q0, nc, nr, raw, rows);
        for (int64_t pnl = 0; pnl < panels; ++pnl) tw_conv_pairs(raw + pnl * kc * nr, kc, nr, bp + pnl * kp * nr);
        if (blk.wmode == 2) TwDotCore::pack_a(wblk + p0, ldw, 1, mc, kc, mr, ap);
        for (int64_t jr = 0; jr < nc; jr += nr) {
          const uint32_t* bpanel = bp + (jr / nr) * kp * nr;
          for (int64_t ir = 0; ir < mc; ir += mr) {
            const uint32_t* a = blk.wmode == 0 ? Wp + (gi * kpad + m0 + ir) * crsp + (p0 / 2) * mr : ap + ir * kp;
            fn(kp, a, 1, mr, bpanel, cb + ir * ldc + jr, ldc, p0 == 0);
          }
        }
      }
      for (int64_t ii = 0; ii < mc; ++ii) epi(ni, gi * kg + m0 + ii, q0, q0 + nc, cb + ii * ldc);
    }
  }
}
#endif
"""


def pack_weight_pairs(w: torch.Tensor, groups: int, mr: int) -> torch.Tensor:
    """The bfloat16 weight ``w`` ``[K, C/G, R, S]`` as pair words ``[G][Kpad/MR][ceil(CRS/2)][MR]``
    (int32; low half the even element of the reduction, high half the odd one; zero rows past K/G
    and a zero high half after an odd reduction)."""
    kg = w.shape[0] // groups
    rows = w.reshape(groups, kg, -1)
    if rows.shape[-1] % 2:
        rows = F.pad(rows, (0, 1))
    kpad = -(-kg // mr) * mr
    if kpad != kg:
        rows = F.pad(rows, (0, 0, 0, kpad - kg))
    words = rows.contiguous().view(torch.int32)  # little-endian: element 2q in the low half
    return words.reshape(groups, kpad // mr, mr, -1).transpose(2, 3).contiguous()


__all__ = ["CONV_DOT_CORE", "pack_weight_pairs"]
