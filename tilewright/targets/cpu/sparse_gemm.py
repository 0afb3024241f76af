"""Sparse GEMMs of the CPU target: block-sparse (BSR) and 2:4 weights, as generated C++/OpenMP.

``y[M, N] = x[M, K] @ W^T + b`` with ``W`` in one of the formats of
:mod:`tilewright.sparsity.weights`.

Block-sparse (:func:`bsr_linear`): the weight's blocks are ``BN x BK`` with ``BN`` a multiple of
the vector width, stored k-major, so the micro-kernel is the dense one's shape with the packed
B panel replaced by the kept blocks of one block row: an ``MR x BN`` register tile of ``y``
accumulates, for every kept block and each of its ``BK`` input columns, one broadcast of ``x``
times ``BN/W`` weight vectors (explicit SIMD through GCC vector types, which become AVX-512 /
AVX2 / NEON registers under ``-march=native``). Work is only done for kept blocks, so time
scales with density. OpenMP threads take (``MC`` rows of ``x``) x (block row) tasks, dynamic
schedule (block rows hold different numbers of blocks). Edge blocks are zero-padded at pack
time; the kernel reads ``x`` only up to ``K`` and writes ``y`` only up to ``N``.

2:4 (:func:`nm_linear`): the kept positions differ per output row, so the kernel vectorizes over
rows of ``x`` instead (``x`` is transposed to ``[K, M]`` first, as in Fast Sparse ConvNets): for
each output and each group of four inputs it reads the two kept columns' vectors and does two
FMAs. That is half the FMAs of dense but one vector load per FMA; whether it beats the dense
GEMM on a CPU is measured in benchmarks/sparse_weights.py (docs/sparsity.md has the numbers).

Both compute in float32; bfloat16 inputs are converted on entry and the result back.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["bsr_linear", "bsr_source", "native_available", "nm_linear", "nm_source", "vector_width"]


@functools.lru_cache(maxsize=1)
def vector_width() -> int:
    """float32 lanes of the widest vector ISA the kernels are built for (1 without SIMD)."""
    from .gemm_micro import lanes, vector_isa
    from .toolchain import cpu_description

    isa = vector_isa(cpu_description())
    return max(4, lanes(isa, torch.float32)) if isa != "scalar" else 4


@functools.lru_cache(maxsize=1)
def native_available() -> str | None:
    """None when the native sparse kernels can be built here, else why not."""
    from .. import native_cpu_problem

    return native_cpu_problem()


def _threads() -> int:
    from .toolchain import cpu_description

    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit():
        return max(1, int(env))
    return max(1, int(cpu_description().get("cores") or 1))


_PRELUDE = r"""
#include <cstdint>
#include <cstring>
#include <algorithm>
typedef float tw_sv __attribute__((vector_size(VW * 4)));
typedef float tw_svu __attribute__((vector_size(VW * 4), aligned(4)));
static inline tw_sv tw_sload(const float* p) { return *(const tw_svu*)p; }
static inline void tw_sstore(float* p, tw_sv v) { *(tw_svu*)p = v; }
"""


def bsr_source(name: str, bn: int, bk: int, mr: int, mc: int, vw: int) -> str:
    """C++ of a block-sparse GEMM for ``bn x bk`` blocks, ``mr``-row register tiles, ``mc``-row tasks."""
    if bn % vw:
        raise ValueError(f"block rows ({bn}) must be a multiple of the vector width ({vw})")
    nv = bn // vw
    cases = "\n".join(f"      case {r}: tile<{r}>(x, ldx, K, vals, cols, b0, b1, bias_p, y, ldy, nvalid); break;"
                      for r in range(1, mr + 1))
    return _PRELUDE.replace("VW", str(vw)) + f"""
namespace {name}_ns {{
constexpr int BN = {bn}, BK = {bk}, NV = {nv}, W = {vw};
template <int R, int KL>
static inline void steps(tw_sv (&acc)[R][NV], const float* x, int64_t ldx, const float* blk, int kl) {{
  const int n = KL > 0 ? KL : kl;
  for (int k = 0; k < n; ++k) {{
    tw_sv w[NV];
    for (int v = 0; v < NV; ++v) w[v] = tw_sload(blk + k * BN + v * W);
    for (int r = 0; r < R; ++r) {{
      const float a = x[r * ldx + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * w[v];
    }}
  }}
}}
template <int R>
static void tile(const float* x, int64_t ldx, int64_t K, const float* vals, const int32_t* cols, int32_t b0,
                 int32_t b1, const float* bias, float* y, int64_t ldy, int64_t nvalid) {{
  tw_sv acc[R][NV];
  for (int v = 0; v < NV; ++v) {{
    tw_sv b0v = {{}};
    if (bias) {{
      float tmp[W];
      for (int l = 0; l < W; ++l) tmp[l] = v * W + l < nvalid ? bias[v * W + l] : 0.f;
      b0v = tw_sload(tmp);
    }}
    for (int r = 0; r < R; ++r) acc[r][v] = b0v;
  }}
  for (int32_t b = b0; b < b1; ++b) {{
    const int64_t c0 = (int64_t)cols[b] * BK;
    const float* blk = vals + (int64_t)b * BK * BN;
    if (c0 + BK <= K) steps<R, BK>(acc, x + c0, ldx, blk, BK);
    else steps<R, 0>(acc, x + c0, ldx, blk, (int)(K - c0));
  }}
  for (int r = 0; r < R; ++r) {{
    if (nvalid == BN) {{
      for (int v = 0; v < NV; ++v) tw_sstore(y + r * ldy + v * W, acc[r][v]);
    }} else {{
      float tmp[BN];
      for (int v = 0; v < NV; ++v) tw_sstore(tmp + v * W, acc[r][v]);
      std::memcpy(y + r * ldy, tmp, sizeof(float) * nvalid);
    }}
  }}
}}
}}  // namespace
extern "C" void {name}(const float* X, const float* vals, const int32_t* cols, const int32_t* row_ptr,
                       const float* bias, float* Y, int64_t M, int64_t N, int64_t K, int64_t ldx, int64_t ldy,
                       int64_t threads) {{
  using namespace {name}_ns;
  const int64_t nbr = (N + BN - 1) / BN, mt = (M + {mc} - 1) / {mc};
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(tw_nthreads(threads)) if(tw_nthreads(threads) > 1)
  for (int64_t mi = 0; mi < mt; ++mi)
    for (int64_t br = 0; br < nbr; ++br) {{
      const int32_t b0 = row_ptr[br], b1 = row_ptr[br + 1];
      const int64_t n0 = br * BN, nvalid = std::min<int64_t>(BN, N - n0);
      const float* bias_p = bias ? bias + n0 : nullptr;
      const int64_t m_end = std::min<int64_t>(M, (mi + 1) * {mc});
      for (int64_t m0 = mi * {mc}; m0 < m_end; m0 += {mr}) {{
        const float* x = X + m0 * ldx;
        float* y = Y + m0 * ldy + n0;
        switch ((int)std::min<int64_t>({mr}, m_end - m0)) {{
{cases}
        }}
      }}
    }}
}}
"""


def nm_source(name: str, mv: int, vw: int) -> str:
    """C++ of a 2:4 GEMM over ``x`` packed as ``[Mp / (mv*vw), Kp, mv*vw]`` panels writing ``y^T [N, Mp]``."""
    return _PRELUDE.replace("VW", str(vw)) + f"""
extern "C" void {name}(const float* XT, const float* vals, const uint8_t* meta, const float* bias, float* YT,
                       int64_t Mp, int64_t N, int64_t G, int64_t threads) {{
  constexpr int MV = {mv}, W = {vw};
  const int64_t mt = Mp / (MV * W);
#pragma omp parallel for collapse(2) schedule(static) num_threads(tw_nthreads(threads)) if(tw_nthreads(threads) > 1)
  for (int64_t mi = 0; mi < mt; ++mi)
    for (int64_t n = 0; n < N; ++n) {{
      const int64_t m0 = mi * MV * W;
      const float* xc = XT + mi * (4 * G) * (MV * W);  // this chunk's [Kp, MV*W] panel
      tw_sv acc[MV];
      const float b = bias ? bias[n] : 0.f;
      for (int j = 0; j < MV; ++j) acc[j] = tw_sv{{}} + b;
      const float* v = vals + n * G * 2;
      const uint8_t* mt_ = meta + n * G;
      for (int64_t g = 0; g < G; ++g) {{
        const uint8_t byte = mt_[g];
        const float* x0 = xc + (4 * g + (byte & 3)) * (MV * W);
        const float* x1 = xc + (4 * g + ((byte >> 2) & 3)) * (MV * W);
        const float w0 = v[2 * g], w1 = v[2 * g + 1];
        for (int j = 0; j < MV; ++j) acc[j] += w0 * tw_sload(x0 + j * W) + w1 * tw_sload(x1 + j * W);
      }}
      for (int j = 0; j < MV; ++j) tw_sstore(YT + n * Mp + m0 + j * W, acc[j]);
    }}
}}
"""


_fns: dict[tuple[Any, ...], Any] = {}


def _function(key: tuple[Any, ...], source: str, name: str, argtypes: list[Any]) -> Any:
    fn = _fns.get(key)
    if fn is None:
        from .build import build_library, load_library

        lib = load_library(build_library(source, name))
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = argtypes
        _fns[key] = fn
    return fn


#: rows of x per register tile and per task of the block-sparse kernel
BSR_MR, BSR_MC = 8, 64


def _bsr_fn(bn: int, bk: int) -> Any:
    vw = vector_width()
    name = f"tw_bsr_{bn}x{bk}_v{vw}"
    p, i = ctypes.c_void_p, ctypes.c_int64
    return _function(("bsr", bn, bk, vw), bsr_source(name, bn, bk, BSR_MR, BSR_MC, vw), name,
                     [p, p, p, p, p, p, i, i, i, i, i, i])


def bsr_linear(x: Tensor, values: Tensor, col_idx: Tensor, row_ptr: Tensor, bias: Tensor | None,
               n: int, k: int, block: tuple[int, int]) -> Tensor:
    """``x [..., K] @ W^T + bias`` with ``W`` block-sparse (``values [nnzb, bk, bn]`` float32, see module doc)."""
    bn, bk = block
    if x.shape[-1] != k:
        raise ValueError(f"block-sparse linear: input has {x.shape[-1]} features, the weight expects {k}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    out_dtype = x.dtype
    if x2.dtype != torch.float32:
        x2 = x2.float()
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < k):
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=torch.float32)
    if m and n:
        b = None if bias is None else bias.float().contiguous()
        if k == 0 or values.numel() == 0:
            y.copy_((b if b is not None else torch.zeros(n)).expand(m, n))
        else:
            fn = _bsr_fn(bn, bk)
            fn(x2.data_ptr(), values.data_ptr(), col_idx.data_ptr(), row_ptr.data_ptr(),
               None if b is None else b.data_ptr(), y.data_ptr(), m, n, k, x2.stride(0), n, _threads())
    y = y.reshape(*lead, n)
    return y if out_dtype == torch.float32 else y.to(out_dtype)


#: vectors of x rows per 2:4 tile
NM_MV = 8


def _nm_fn() -> Any:
    vw = vector_width()
    name = f"tw_nm24_v{vw}_{NM_MV}"
    p, i = ctypes.c_void_p, ctypes.c_int64
    return _function(("nm", vw, NM_MV), nm_source(name, NM_MV, vw), name, [p, p, p, p, p, i, i, i, i])


def nm_linear(x: Tensor, values: Tensor, meta: Tensor, bias: Tensor | None, n: int, k: int) -> Tensor:
    """``x [..., K] @ W^T + bias`` with ``W`` in 2:4 form (``values [N, G*2]``, ``meta [N, G]`` uint8)."""
    if x.shape[-1] != k:
        raise ValueError(f"2:4 linear: input has {x.shape[-1]} features, the weight expects {k}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    g = meta.shape[1]
    unit = NM_MV * vector_width()
    mp = -(-m // unit) * unit if m else 0
    # x in panels of ``unit`` rows, each transposed: [Mp / unit, Kp, unit], contiguous per panel
    xt = torch.zeros(mp, g * 4, dtype=torch.float32)
    xt[:m, :k] = x2
    xt = xt.reshape(-1, unit, g * 4).transpose(1, 2).contiguous()
    yt = torch.empty(n, mp, dtype=torch.float32)
    if m and n:
        b = None if bias is None else bias.float().contiguous()
        _nm_fn()(xt.data_ptr(), values.data_ptr(), meta.data_ptr(), None if b is None else b.data_ptr(),
                 yt.data_ptr(), mp, n, g, _threads())
    y = yt[:, :m].t().reshape(*lead, n)
    return y.contiguous() if x.dtype == torch.float32 else y.to(x.dtype)
