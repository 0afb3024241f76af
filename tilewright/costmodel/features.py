"""Features of (kernel problem, config, device) for the cost models.

Each kernel kind has a small *tile model* that says, for one config, how many programs run,
how many inner-loop iterations each does, how many bytes the tiles move, how much work is
padding, and how much shared memory and how many registers a program needs. Device limits then
give occupancy, waves over the SMs and the tail of the last wave. Everything is plain floats
with fixed names (:data:`FEATURE_NAMES`); unknown kinds and unknown config parameters degrade
to a generic tile model and zeros instead of failing.

Bump :data:`FEATURE_VERSION` whenever the meaning of any feature changes: saved models record
it and refuse to load against different features.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

from ..schedule.problem import KernelProblem
from ..schedule.space import ConfigValue
from .devices import DEVICE_SPECS, GENERIC, DeviceSpec, device_family, device_spec  # noqa: F401 (re-exported)

FEATURE_VERSION = "2"  # 2: float32 matmuls score their dot precision (ieee: no tensor cores, FMA peak)

KINDS = ("pointwise", "reduction", "matmul", "attention", "conv")

#: Config parameters the tile models understand; anything else counts in ``n_unknown_params``.
KNOWN_PARAMS = frozenset({"XBLOCK", "RBLOCK", "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M",
                          "num_warps", "num_stages"})

_DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1,
                "uint8": 1, "int32": 4, "int64": 8, "bool": 1}


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of a dtype name (``torch.float16`` and ``float16`` both work)."""
    name = str(dtype).replace("torch.", "")
    if name.startswith("float8"):
        return 1
    return _DTYPE_BYTES.get(name, 4)


@dataclass(frozen=True)
class TileModel:
    """What one config does with one problem, before the device is considered.

    Attributes:
        programs: programs in the launch grid.
        inner_iters: inner-loop trips per program (K loop, reduction loop, KV loop).
        flops: floating-point operations of the launch.
        min_bytes: compulsory DRAM traffic (each operand once).
        tile_bytes: bytes the tiles load and store (re-reads included), L2 level.
        dram_bytes: estimated DRAM traffic after L2 reuse.
        padding_waste: fraction of the work in tiles that falls outside the problem.
        smem_bytes: shared memory per program.
        regs_per_thread: estimated registers per thread (before the 255 cap).
        elems_per_thread: tile elements each thread owns.
        tensor_cores: whether the inner product runs on tensor cores.
        warp_tile: output elements per warp (matmul-like kinds), else 0.
        precision: float32 ``tl.dot`` input precision ("ieee", "tf32", "tf32x3"); "" otherwise.
    """

    programs: float
    inner_iters: float
    flops: float
    min_bytes: float
    tile_bytes: float
    dram_bytes: float
    padding_waste: float
    smem_bytes: float
    regs_per_thread: float
    elems_per_thread: float
    tensor_cores: bool = False
    warp_tile: float = 0.0
    precision: str = ""


def _cdiv(a: float, b: float) -> int:
    return int(-(-int(a) // max(int(b), 1)))


def _int(config: Mapping[str, ConfigValue], name: str, default: int) -> int:
    value = config.get(name, default)
    try:
        return max(int(value), 1)
    except (TypeError, ValueError):
        return default


def _dim(dims: Mapping[str, int], *names: str, default: int = 1) -> int:
    for name in names:
        if name in dims:
            return max(int(dims[name]), 1)
    return default


def _pointwise(p: KernelProblem, c: Mapping[str, ConfigValue]) -> TileModel:
    e = dtype_bytes(p.dtype)
    numel = _dim(p.dims, "numel", "xnumel", default=max(int(p.bytes // (2 * e)), 1))
    xb, warps = _int(c, "XBLOCK", 1024), _int(c, "num_warps", 4)
    programs = _cdiv(numel, xb)
    nbytes = p.bytes or 2.0 * numel * e
    operands = max(nbytes / (numel * e), 1.0)
    ept = xb / (32 * warps)
    return TileModel(programs, 1, p.flops or float(numel), nbytes, nbytes, nbytes,
                     1 - numel / (programs * xb), 0.0, 16 + ept * operands * max(e / 4, 1), ept)


def _reduction(p: KernelProblem, c: Mapping[str, ConfigValue]) -> TileModel:
    e = dtype_bytes(p.dtype)
    rows, rnumel = _dim(p.dims, "rows", "xnumel"), _dim(p.dims, "rnumel", "cols")
    xb, rb, warps = _int(c, "XBLOCK", 1), _int(c, "RBLOCK", 1024), _int(c, "num_warps", 4)
    persistent = bool(p.meta.get("persistent", False)) or rb >= rnumel
    iters = 1 if persistent else _cdiv(rnumel, rb)
    programs = _cdiv(rows, xb)
    nbytes = p.bytes or float(rows * rnumel * e + rows * e)
    passes = 1.0 if persistent else float(p.meta.get("loop_passes", 1))
    waste = 1 - rows * rnumel / (programs * xb * iters * rb)
    ept = xb * rb / (32 * warps)
    # uncoalesced access: lanes along the contiguous axis fill fewer 32-byte sectors
    along = xb if p.meta.get("contiguous_axis") == "x" else rb
    sector = max(1, 32 // e)
    sectors = float(sector) / max(1, min(along, sector))
    return TileModel(programs, iters, p.flops or float(rows * rnumel), nbytes, nbytes * passes * sectors,
                     nbytes * passes * sectors, waste, float(xb * 4 * warps), 16 + 2 * ept, ept)


def _gemm_like(batch: int, m: int, n: int, k: int, e: int, c: Mapping[str, ConfigValue],
               spec: DeviceSpec, flops: float, extra_bytes: float, dtype: str,
               precision: str = "tf32") -> TileModel:
    """Tile model shared by matmul and implicit-GEMM convolution (``precision``: float32 dots
    without a ``PRECISION`` parameter)."""
    bm, bn, bk = _int(c, "BLOCK_M", 64), _int(c, "BLOCK_N", 64), _int(c, "BLOCK_K", 32)
    group, warps, stages = _int(c, "GROUP_M", 1), _int(c, "num_warps", 4), _int(c, "num_stages", 2)
    gm, gn, iters = _cdiv(m, bm), _cdiv(n, bn), _cdiv(k, bk)
    programs = batch * gm * gn
    min_operands = batch * (m * k + k * n) * e
    tile_operands = batch * (m * k * gn + k * n * gm) * e
    # L2 reuse: programs resident together share A row-blocks and B column-blocks (GROUP_M
    # swizzle widens the row span); DRAM sees each distinct tile once per wave.
    concurrent = max(min(programs, spec.sm_count * 2), 1)
    if group <= 1:
        cols = min(gn, concurrent)
        rows = min(gm, _cdiv(concurrent, cols))
    else:
        rows = min(group, gm, concurrent)
        cols = min(gn, _cdiv(concurrent, rows))
    per_wave = (rows * bm + cols * bn) * k * e
    dram_operands = max(min_operands, min(tile_operands, programs / concurrent * per_wave))
    padded = (gm * bm) * (gn * bn) * (iters * bk)
    regs = 24 + bm * bn / (32 * warps) + (bm * bk + bk * bn) * e / 4 / (32 * warps)
    precision = str(c.get("PRECISION", precision)) if dtype == "float32" else ""
    tc = dtype in ("float16", "bfloat16") or (dtype == "float32" and precision != "ieee") or dtype.startswith("float8")
    tc = tc and min(bm, bn) >= 16 and bk >= 16
    return TileModel(programs, iters, flops, min_operands + extra_bytes, tile_operands + extra_bytes,
                     dram_operands + extra_bytes, 1 - m * n * k / padded,
                     float(stages * (bm * bk + bk * bn) * e), regs, bm * bn / (32 * warps), tc,
                     bm * bn / warps, precision)


def _matmul(p: KernelProblem, c: Mapping[str, ConfigValue], spec: DeviceSpec) -> TileModel:
    e = dtype_bytes(p.dtype)
    b, m, n, k = (_dim(p.dims, "B"), _dim(p.dims, "M"), _dim(p.dims, "N"), _dim(p.dims, "K"))
    out_bytes = b * m * n * e
    extra = max(p.bytes - b * (m * k + k * n) * e, out_bytes) if p.bytes else out_bytes
    precision = str(p.meta.get("precision") or "tf32")  # the policy: tf32, or ieee without PRECISION
    return _gemm_like(b, m, n, k, e, c, spec, p.flops or 2.0 * b * m * n * k, extra, p.dtype, precision)


def _conv(p: KernelProblem, c: Mapping[str, ConfigValue], spec: DeviceSpec) -> TileModel:
    d, e = p.dims, dtype_bytes(p.dtype)
    if {"M", "GEMM_N", "GEMM_K"} <= set(d):
        # tilewright.targets.triton.conv.forward states its implicit GEMM (per group) directly
        groups = _dim(d, "G", "groups")
        gm, gn, gk = _dim(d, "M"), _dim(d, "GEMM_N"), _dim(d, "GEMM_K")
        flops = p.flops or 2.0 * gm * gn * gk * groups
        out_bytes = groups * gm * gn * e
        extra = max(p.bytes - groups * (gm * gk + gk * gn) * e, out_bytes) if p.bytes else out_bytes
        cfg = c if p.meta.get("algorithm") != "direct" else {**c, "BLOCK_K": 1}
        tm = _gemm_like(groups, gm, gn, gk, e, cfg, spec, flops, extra, p.dtype)
        return tm if p.meta.get("algorithm") != "direct" else replace(tm, tensor_cores=False)
    n, ch, h, w = _dim(d, "N"), _dim(d, "C"), _dim(d, "H"), _dim(d, "W")
    k, r, s = _dim(d, "K"), _dim(d, "R"), _dim(d, "S")
    groups = _dim(d, "groups")
    sh, sw = _dim(d, "stride_h", "stride"), _dim(d, "stride_w", "stride")
    ph = int(d.get("pad_h", d.get("padding", 0)))
    pw = int(d.get("pad_w", d.get("padding", 0)))
    dh, dw = _dim(d, "dil_h", "dilation"), _dim(d, "dil_w", "dilation")
    out_p = d.get("P") or max((h + 2 * ph - dh * (r - 1) - 1) // sh + 1, 1)
    out_q = d.get("Q") or max((w + 2 * pw - dw * (s - 1) - 1) // sw + 1, 1)
    gm, gn, gk = n * int(out_p) * int(out_q), k, ch * r * s // groups
    flops = p.flops or 2.0 * gm * gn * gk
    out_bytes = gm * gn * e
    extra = max(p.bytes - (n * ch * h * w + k * gk) * e, out_bytes) if p.bytes else out_bytes
    return _gemm_like(1, gm, gn, max(gk, 1), e, c, spec, flops, extra, p.dtype)


def _attention(p: KernelProblem, c: Mapping[str, ConfigValue]) -> TileModel:
    e = dtype_bytes(p.dtype)
    b, h = _dim(p.dims, "B"), _dim(p.dims, "H")
    m, n, dh = _dim(p.dims, "M"), _dim(p.dims, "N", "M"), _dim(p.dims, "D")
    bm, bn = _int(c, "BLOCK_M", 64), _int(c, "BLOCK_N", 64)
    warps, stages = _int(c, "num_warps", 4), _int(c, "num_stages", 2)
    causal = bool(p.meta.get("causal", False))
    frac = 0.5 + 0.5 * bm / max(n, bm) if causal else 1.0  # share of KV blocks visited
    gm, gn = _cdiv(m, bm), _cdiv(n, bn)
    programs = b * h * gm
    qo = 2 * b * h * m * dh * e
    kv_once = 2 * b * h * n * dh * e
    kv_tiles = b * h * gm * gn * bn * dh * 2 * e * frac
    tile_bytes = qo + kv_tiles
    # NOTE: one head's K/V usually stays in L2 while its query blocks run; assume 10% misses.
    dram = qo + kv_once + 0.1 * max(kv_tiles - kv_once, 0.0)
    flops = p.flops or 4.0 * b * h * m * n * dh * (0.5 if causal else 1.0)
    regs = 32 + (2 * bm * dh + bm * bn) / (32 * warps)
    return TileModel(programs, gn * frac, flops, qo + kv_once, tile_bytes, dram,
                     1 - m * n / (gm * bm * gn * bn), float((stages * bn * 2 + bm) * dh * e),
                     regs, bm * bn / (32 * warps), dh >= 16 and min(bm, bn) >= 16, bm * dh / warps)


def _generic(p: KernelProblem, c: Mapping[str, ConfigValue]) -> TileModel:
    e = dtype_bytes(p.dtype)
    numel = math.prod(max(int(v), 1) for v in p.dims.values()) if p.dims else max(int(p.bytes // e), 1)
    block = math.prod(_int(c, k, 1) for k in c if "BLOCK" in k.upper()) or 1024
    warps = _int(c, "num_warps", 4)
    programs = _cdiv(numel, block)
    nbytes = p.bytes or 2.0 * numel * e
    ept = block / (32 * warps)
    return TileModel(programs, 1, p.flops or float(numel), nbytes, nbytes, nbytes,
                     1 - numel / (programs * block), 0.0, 16 + 2 * ept, ept)


def tile_model(problem: KernelProblem, config: Mapping[str, ConfigValue], spec: DeviceSpec) -> TileModel:
    """The :class:`TileModel` of ``config`` for ``problem`` (generic for unknown kinds)."""
    if problem.kind == "pointwise":
        return _pointwise(problem, config)
    if problem.kind == "reduction":
        return _reduction(problem, config)
    if problem.kind == "matmul":
        return _matmul(problem, config, spec)
    if problem.kind == "attention":
        return _attention(problem, config)
    if problem.kind == "conv":
        return _conv(problem, config, spec)
    return _generic(problem, config)


def occupancy(tm: TileModel, warps: int, spec: DeviceSpec) -> tuple[int, float]:
    """Resident programs per SM and the occupancy (resident warps / max warps); 0 if infeasible."""
    if tm.smem_bytes > spec.smem_per_block:
        return 0, 0.0
    regs = min(math.ceil(max(tm.regs_per_thread, 16) / 8) * 8, 255)
    limits = [spec.max_warps_per_sm // warps, spec.max_blocks_per_sm,
              spec.regs_per_sm // (regs * 32 * warps)]
    if tm.smem_bytes > 0:
        limits.append(int(spec.smem_per_sm // tm.smem_bytes))
    per_sm = max(min(limits), 0)
    return per_sm, per_sm * warps / spec.max_warps_per_sm


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else 0.0


#: Names of the features :func:`extract` returns, in the order of :func:`feature_vector`.
FEATURE_NAMES: tuple[str, ...] = (
    *(f"kind_{k}" for k in KINDS), "kind_other", "dtype_bytes", "is_fp32",
    "log2_flops", "log2_min_bytes", "log2_tile_bytes", "log2_dram_bytes", "log2_intensity",
    "log2_dram_intensity", "log2_programs", "log2_inner_iters", "log2_waves", "tail_fraction",
    "wave_efficiency", "sm_fill", "padding_waste", "smem_kb", "smem_fraction", "regs_per_thread",
    "reg_spill", "programs_per_sm", "occupancy", "feasible", "num_warps", "num_stages",
    "log2_BLOCK_M", "log2_BLOCK_N", "log2_BLOCK_K", "log2_GROUP_M", "log2_XBLOCK", "log2_RBLOCK",
    "log2_elems_per_thread", "vector_bytes", "tensor_cores", "log2_warp_tile", "persistent",
    "causal", "epilogue_ops", "n_unknown_params", "sm_count", "log2_dram_bw", "log2_peak_flops",
    "capability_major", "log2_ridge", *(f"unknown_param_bucket_{i}" for i in range(4)),
)


def _bucket(name: str, value: ConfigValue) -> int:
    """Stable bucket (0-3) of an unknown ``name=value`` pair (the hashing trick)."""
    return hashlib.sha256(f"{name}={value!r}".encode()).digest()[0] % 4


def extract(problem: KernelProblem, config: Mapping[str, ConfigValue],
            device: Mapping[str, object] | None = None) -> dict[str, float]:
    """All features (see :data:`FEATURE_NAMES`) of one config of ``problem`` on ``device``."""
    spec = device_spec(device)
    tm = tile_model(problem, config, spec)
    warps, stages = _int(config, "num_warps", 4), _int(config, "num_stages", 1)
    per_sm, occ = occupancy(tm, warps, spec)
    concurrent = max(per_sm, 1) * spec.sm_count
    waves = tm.programs / concurrent
    full = math.ceil(waves) if waves > 0 else 1
    peak = spec.peak_flops(problem.dtype, tm.tensor_cores, tm.precision or "tf32")
    e = dtype_bytes(problem.dtype)
    epilogue = problem.meta.get("epilogue_ops", 0)
    feats: dict[str, float] = {f"kind_{k}": float(problem.kind == k) for k in KINDS}
    feats.update({
        "kind_other": float(problem.kind not in KINDS),
        "dtype_bytes": float(e),
        "is_fp32": float(e == 4),
        "log2_flops": _log2(tm.flops),
        "log2_min_bytes": _log2(tm.min_bytes),
        "log2_tile_bytes": _log2(tm.tile_bytes),
        "log2_dram_bytes": _log2(tm.dram_bytes),
        "log2_intensity": _log2(tm.flops / max(tm.tile_bytes, 1.0)),
        "log2_dram_intensity": _log2(tm.flops / max(tm.dram_bytes, 1.0)),
        "log2_programs": _log2(tm.programs),
        "log2_inner_iters": _log2(tm.inner_iters),
        "log2_waves": math.log2(max(waves, 1e-9)),
        "tail_fraction": (full - waves) / full,
        "wave_efficiency": waves / full,
        "sm_fill": min(1.0, tm.programs / spec.sm_count),
        "padding_waste": tm.padding_waste,
        "smem_kb": tm.smem_bytes / 1024,
        "smem_fraction": tm.smem_bytes / spec.smem_per_block,
        "regs_per_thread": min(tm.regs_per_thread, 255.0),
        "reg_spill": max(tm.regs_per_thread - 255.0, 0.0),
        "programs_per_sm": float(per_sm),
        "occupancy": occ,
        "feasible": float(per_sm > 0),
        "num_warps": float(warps),
        "num_stages": float(stages),
        "log2_elems_per_thread": _log2(tm.elems_per_thread),
        "vector_bytes": min(tm.elems_per_thread * e, 16.0),
        "tensor_cores": float(tm.tensor_cores),
        "log2_warp_tile": _log2(tm.warp_tile),
        "persistent": float(bool(problem.meta.get("persistent", False))),
        "causal": float(bool(problem.meta.get("causal", False))),
        "epilogue_ops": float(len(epilogue) if isinstance(epilogue, (list, tuple)) else epilogue or 0),
        "n_unknown_params": float(sum(1 for k in config if k not in KNOWN_PARAMS)),
        "sm_count": float(spec.sm_count),
        "log2_dram_bw": _log2(spec.dram_bw),
        "log2_peak_flops": _log2(peak),
        "capability_major": float(spec.capability.split(".")[0] or 0),
        "log2_ridge": _log2(peak / spec.dram_bw),
    })
    # NOTE: parameters no tile model knows (K_ORDER, ...) still reach the learned model
    # through hashed buckets, so their effect can be learned without a feature-version bump.
    for i in range(4):
        feats[f"unknown_param_bucket_{i}"] = 0.0
    for name, value in config.items():
        if name not in KNOWN_PARAMS:
            feats[f"unknown_param_bucket_{_bucket(name, value)}"] += 1.0
    for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "XBLOCK", "RBLOCK"):
        feats[f"log2_{name}"] = _log2(_int(config, name, 1)) if name in config else 0.0
    return feats


def feature_vector(problem: KernelProblem, config: Mapping[str, ConfigValue],
                   device: Mapping[str, object] | None = None) -> list[float]:
    """:func:`extract` as a list ordered like :data:`FEATURE_NAMES`."""
    feats = extract(problem, config, device)
    return [feats[name] for name in FEATURE_NAMES]


def describe(problem: KernelProblem, config: Mapping[str, ConfigValue],
             device: Mapping[str, object] | None = None) -> dict[str, Any]:
    """Features plus the raw tile model, for debugging and ``explain`` output."""
    spec = device_spec(device)
    return {"device": spec.family, "tile": tile_model(problem, config, spec).__dict__,
            "features": extract(problem, config, device)}
