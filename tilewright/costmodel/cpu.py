"""Cost-model features and a roofline for the native CPU target's kernels.

A CPU is described by the device-info dict of :func:`tilewright.schedule.device.native_cpu_info`
(records keep it in ``device_extra``): cores, SIMD width in bytes, cache sizes, clock. From it
:class:`CpuSpec` derives:

- **peak FLOP/s** = cores × (SIMD bytes / 4 fp32 lanes) × 2 (an FMA is two flops) × FMA units
  × clock. FMA units: 2 on AVX-512 server cores, 2 for AVX2, 1 otherwise (an assumption: the
  OS does not say). The clock is the "cpu MHz" of ``/proc/cpuinfo`` stored with the records,
  2.5 GHz when unknown.
- **DRAM bandwidth** ≈ 12 GB/s per core, at most 100 GB/s (a per-core streaming estimate typical
  of server cores; not measured). Cache bandwidths: L1 64 B/cycle, L2 32 B/cycle, L3 16 B/cycle
  per core.

Per kernel kind a small *loop-nest model* says how a config splits the work (tasks over
threads, blocks, GEMM cache and register blocks) and what each block keeps live (its
working set), from which the features (:data:`CPU_FEATURE_NAMES`) and the roofline estimate
(:func:`cpu_roofline_seconds`) follow. Unknown kinds and parameters degrade to a generic model.
Bump :data:`CPU_FEATURE_VERSION` whenever a feature's meaning changes.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..schedule.problem import KernelProblem
from ..schedule.space import ConfigValue

CPU_FEATURE_VERSION = "cpu-1"

CPU_KINDS = ("pointwise", "reduction", "matmul", "attention", "gather", "scatter")

_DEFAULT_CLOCK = 2.5e9


def is_cpu_device(device: Mapping[str, object] | None) -> bool:
    """True for a native CPU's device info (capability ``cpu:...``), not the GPU interpreter."""
    return bool(device) and str(device.get("capability", "")).startswith("cpu:")  # type: ignore[union-attr]


@dataclass(frozen=True)
class CpuSpec:
    """What the CPU cost model knows of a CPU (see the module docstring for the estimates)."""

    cores: int
    simd_bytes: int
    l1_bytes: int
    l2_bytes: int
    l3_bytes: int
    clock_hz: float
    fma_units: int

    @property
    def lanes(self) -> int:
        """fp32 lanes of one vector register."""
        return max(self.simd_bytes // 4, 1)

    @property
    def peak_flops_core(self) -> float:
        """Peak fp32 FLOP/s of one core."""
        return self.lanes * 2 * self.fma_units * self.clock_hz

    @property
    def peak_flops(self) -> float:
        """Peak fp32 FLOP/s of the whole CPU."""
        return self.peak_flops_core * self.cores

    @property
    def dram_bw(self) -> float:
        """Estimated DRAM bandwidth of the CPU (bytes/s)."""
        return min(12e9 * self.cores, 100e9)

    def cache_bw_core(self, level: int) -> float:
        """Bytes/s one core reads from cache ``level`` (1, 2 or 3)."""
        return {1: 64, 2: 32, 3: 16}.get(level, 16) * self.clock_hz


def cpu_spec(device: Mapping[str, object] | None) -> CpuSpec:
    """The :class:`CpuSpec` of a CPU device-info dict (missing fields get typical values)."""
    d = dict(device or {})

    def num(key: str, default: float) -> float:
        value = d.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else default

    simd = int(num("simd_bytes", 32))
    cores = int(num("cores", num("sm_count", 1)))
    fma = 2 if simd >= 32 else 1
    return CpuSpec(cores, simd, int(num("l1d_bytes", 32 << 10)), int(num("l2_bytes", 1 << 20)),
                   int(num("l3_bytes", 16 << 20)), num("clock_hz", _DEFAULT_CLOCK), fma)


def _cdiv(a: float, b: float) -> int:
    return -(-int(a) // max(int(b), 1))


def _int(config: Mapping[str, ConfigValue], name: str, default: int) -> int:
    try:
        return max(int(config.get(name, default)), 1)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def _dim(dims: Mapping[str, int], *names: str, default: int = 1) -> int:
    for name in names:
        if name in dims:
            return max(int(dims[name]), 1)
    return default


@dataclass(frozen=True)
class LoopNest:
    """How one config runs one problem on a CPU.

    Attributes:
        tasks: independent parallel work items (blocks, row blocks, GEMM tiles, query blocks).
        threads: threads the config asks for.
        flops, bytes: work of the whole kernel (bytes: compulsory memory traffic).
        traffic: bytes moved including re-reads (packing, re-streamed panels).
        working_set: bytes one task keeps live in its inner loop.
        inner: length of the innermost contiguous (vectorized) loop.
        waste: fraction of the inner work that is padding or scalar tail.
        acc_vectors: vector accumulators a micro-kernel keeps in registers (0: not a GEMM).
    """

    tasks: float
    threads: int
    flops: float
    bytes: float
    traffic: float
    working_set: float
    inner: float
    waste: float
    acc_vectors: float = 0.0


def _elem(problem: KernelProblem) -> int:
    from .features import dtype_bytes

    return dtype_bytes(problem.dtype)


def _numel(p: KernelProblem, e: int) -> int:
    return _dim(p.dims, "numel", default=max(int(p.bytes // (2 * e)), 1))


def _rows_cols(p: KernelProblem) -> tuple[int, int]:
    """Rows and reduced length of a reduction, from its first input's shape (signature)."""
    numel = _dim(p.dims, "numel")
    try:
        shape = [int(s) for s in p.signature[0][0]]
    except (IndexError, TypeError, ValueError):
        shape = []
    cols = shape[-1] if shape else numel
    return max(numel // max(cols, 1), 1), max(cols, 1)


def loop_nest(p: KernelProblem, c: Mapping[str, ConfigValue], spec: CpuSpec) -> LoopNest:
    """The :class:`LoopNest` of config ``c`` for problem ``p``."""
    e = _elem(p)
    threads = _int(c, "threads", 1)
    flops = p.flops or float(_numel(p, e))
    nbytes = p.bytes or 2.0 * _numel(p, e) * e
    if p.kind == "matmul":
        b, m, n, k = (_dim(p.dims, "B"), _dim(p.dims, "M"), _dim(p.dims, "N"), _dim(p.dims, "K"))
        mc, nc, kc = _int(c, "MC", 96), _int(c, "NC", 384), _int(c, "KC", 256)
        mr, nr = _int(c, "MR", 6), _int(c, "NR", 32)
        pack = bool(c.get("pack", True))
        tasks = b * _cdiv(m, mc) * _cdiv(n, nc)
        # A is packed once per NC block, B once per (MC, KC) block row when packing
        traffic = b * (m * k * _cdiv(n, nc) + k * n * (1 if pack else _cdiv(m, mc)) + 2 * m * n * _cdiv(k, kc)) * e
        ws = (mc * kc + kc * nr) * e
        waste = 1 - (m * n) / (_cdiv(m, mr) * mr * _cdiv(n, nr) * nr)
        return LoopNest(tasks, threads, flops, nbytes, float(traffic), float(ws), float(nr), waste,
                        mr * nr / spec.lanes)
    if p.kind == "attention":
        b, h, m = _dim(p.dims, "B"), _dim(p.dims, "H"), _dim(p.dims, "M")
        n, d = _dim(p.dims, "N", "M"), _dim(p.dims, "D")
        bm, bn = _int(c, "BLOCK_M", 64), _int(c, "BLOCK_N", 64)
        tasks = b * h * _cdiv(m, bm)
        traffic = b * h * (2 * m * d + _cdiv(m, bm) * 2 * n * d) * e
        ws = (bm * d + 2 * bn * d + bm * bn) * e
        waste = 1 - (m * n) / (_cdiv(m, bm) * bm * _cdiv(n, bn) * bn)
        return LoopNest(tasks, threads, flops, nbytes, float(traffic), float(ws), float(d), waste)
    if p.kind == "reduction":
        rows, cols = _rows_cols(p)
        return LoopNest(rows, threads, flops, nbytes, nbytes * max(p.meta.get("ops", 1), 1) ** 0.5,
                        float(cols * e), float(cols), (cols % spec.lanes) / max(cols, 1))
    # pointwise, gather, scatter, copies and anything else: blocks of BLOCK elements
    numel = _numel(p, e)
    block = _int(c, "BLOCK", 4096)
    parts = _int(c, "parts_per_thread", 1)
    tasks = _cdiv(numel, block) if "BLOCK" in c else max(threads * parts, 1)
    operands = max(nbytes / max(numel * e, 1), 1.0)
    return LoopNest(tasks, threads, flops, nbytes, nbytes, min(block, numel) * e * operands,
                    float(min(block, numel)), (numel % spec.lanes) / max(numel, 1))


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else 0.0


def _lg(config: Mapping[str, ConfigValue], name: str) -> float:
    return _log2(_int(config, name, 1)) if name in config else 0.0


#: Names of the CPU features, in the order of :func:`cpu_feature_vector`.
CPU_FEATURE_NAMES: tuple[str, ...] = (
    *(f"kind_{k}" for k in CPU_KINDS), "kind_other", "dtype_bytes", "log2_flops", "log2_bytes",
    "log2_intensity", "log2_traffic", "traffic_over_bytes", "threads", "threads_over_cores",
    "oversubscribed", "log2_tasks", "tasks_per_thread", "imbalance", "idle_threads",
    "log2_flops_per_thread", "log2_bytes_per_thread", "log2_working_set", "ws_over_l1", "ws_over_l2",
    "ws_over_l3", "total_over_l2", "total_over_l3", "simd_lanes", "log2_inner", "vector_fill", "waste",
    "acc_vectors", "acc_over_regs", "log2_BLOCK", "log2_BLOCK_M", "log2_BLOCK_N", "log2_MC", "log2_NC",
    "log2_KC", "log2_MR", "log2_NR", "pack", "order_nm", "extern", "log2_parts_per_thread",
    "log2_M", "log2_N", "log2_K", "log2_D", "log2_B", "log2_numel", "causal", "n_ops", "epilogue_ops",
    "cores", "log2_peak_flops", "log2_dram_bw", "log2_roofline_compute", "log2_roofline_memory",
    *(f"unknown_param_bucket_{i}" for i in range(4)),
)

_KNOWN = frozenset({"threads", "BLOCK", "BLOCK_M", "BLOCK_N", "MC", "NC", "KC", "MR", "NR", "pack", "order",
                    "extern", "parts_per_thread"})


def _bucket(name: str, value: ConfigValue) -> int:
    return hashlib.sha256(f"{name}={value!r}".encode()).digest()[0] % 4


def _times(ln: LoopNest, spec: CpuSpec) -> tuple[float, float, float]:
    """(compute seconds, memory seconds, fork/imbalance factor) of a loop nest."""
    used = max(min(ln.threads, spec.cores, max(int(math.ceil(ln.tasks)), 1)), 1)
    per_thread_tasks = math.ceil(ln.tasks / used) if ln.tasks > 0 else 1
    imbalance = per_thread_tasks * used / max(ln.tasks, 1)
    vector = min(1.0, ln.inner / spec.lanes) if ln.inner > 0 else 1.0
    eff = 0.7 if ln.acc_vectors else 0.25  # a register-blocked GEMM reaches far more of the peak
    if ln.acc_vectors:
        eff *= min(1.0, ln.acc_vectors / 12.0) if ln.acc_vectors <= 28 else 0.3  # too few or spilled accumulators
    compute = ln.flops / (spec.peak_flops_core * used * max(vector, 1 / spec.lanes) * eff * max(1 - ln.waste, 0.05))
    if ln.working_set <= spec.l1_bytes:
        level = 1
    elif ln.working_set <= spec.l2_bytes:
        level = 2
    else:
        level = 3
    cache = ln.traffic / (spec.cache_bw_core(level) * used)
    dram = ln.bytes / (spec.dram_bw * min(1.0, used / spec.cores + 0.5))
    return compute, max(cache, dram), imbalance


def cpu_roofline_seconds(problem: KernelProblem, config: Mapping[str, ConfigValue],
                         device: Mapping[str, object] | None) -> float:
    """Roofline estimate of one config: max(compute, memory) × imbalance + threading overheads."""
    spec = cpu_spec(device)
    ln = loop_nest(problem, config, spec)
    compute, memory, imbalance = _times(ln, spec)
    fork = 3e-6 if ln.threads > 1 else 0.0
    oversub = 1.0 + max(ln.threads - spec.cores, 0) / spec.cores
    per_task = 5e-8 * ln.tasks / max(min(ln.threads, spec.cores), 1)
    return (max(compute, memory) * imbalance + fork + per_task) * oversub + 1e-6


def cpu_extract(problem: KernelProblem, config: Mapping[str, ConfigValue],
                device: Mapping[str, object] | None) -> dict[str, float]:
    """All CPU features (:data:`CPU_FEATURE_NAMES`) of one config of ``problem`` on ``device``."""
    spec = cpu_spec(device)
    ln = loop_nest(problem, config, spec)
    compute, memory, imbalance = _times(ln, spec)
    used = max(min(ln.threads, spec.cores), 1)
    d = problem.dims
    feats = {f"kind_{k}": float(problem.kind == k) for k in CPU_KINDS}
    feats.update({
        "kind_other": float(problem.kind not in CPU_KINDS), "dtype_bytes": float(_elem(problem)),
        "log2_flops": _log2(ln.flops), "log2_bytes": _log2(ln.bytes),
        "log2_intensity": _log2(ln.flops / max(ln.bytes, 1.0)), "log2_traffic": _log2(ln.traffic),
        "traffic_over_bytes": ln.traffic / max(ln.bytes, 1.0), "threads": float(ln.threads),
        "threads_over_cores": ln.threads / spec.cores, "oversubscribed": float(ln.threads > spec.cores),
        "log2_tasks": _log2(ln.tasks), "tasks_per_thread": ln.tasks / ln.threads, "imbalance": imbalance,
        "idle_threads": float(max(ln.threads - ln.tasks, 0)),
        "log2_flops_per_thread": _log2(ln.flops / used), "log2_bytes_per_thread": _log2(ln.bytes / used),
        "log2_working_set": _log2(ln.working_set), "ws_over_l1": ln.working_set / spec.l1_bytes,
        "ws_over_l2": ln.working_set / spec.l2_bytes, "ws_over_l3": ln.working_set / spec.l3_bytes,
        "total_over_l2": ln.bytes / spec.l2_bytes, "total_over_l3": ln.bytes / spec.l3_bytes,
        "simd_lanes": float(spec.lanes), "log2_inner": _log2(ln.inner),
        "vector_fill": min(1.0, ln.inner / spec.lanes), "waste": ln.waste, "acc_vectors": ln.acc_vectors,
        "acc_over_regs": ln.acc_vectors / 32.0,
        **{f"log2_{k}": _lg(config, k) for k in ("BLOCK", "BLOCK_M", "BLOCK_N", "MC", "NC", "KC", "MR", "NR",
                                                 "parts_per_thread")},
        "pack": float(bool(config.get("pack", False))), "order_nm": float(config.get("order") == "nm"),
        "extern": float(bool(config.get("extern", False))),
        "log2_M": _log2(_dim(d, "M")), "log2_N": _log2(_dim(d, "N")), "log2_K": _log2(_dim(d, "K")),
        "log2_D": _log2(_dim(d, "D")), "log2_B": _log2(_dim(d, "B")), "log2_numel": _log2(_dim(d, "numel")),
        "causal": float(bool(problem.meta.get("causal", False))), "n_ops": float(problem.meta.get("ops", 0) or 0),
        "epilogue_ops": float(len(problem.meta.get("epilogue_ops", []) or [])), "cores": float(spec.cores),
        "log2_peak_flops": _log2(spec.peak_flops), "log2_dram_bw": _log2(spec.dram_bw),
        "log2_roofline_compute": _log2(compute), "log2_roofline_memory": _log2(memory),
    })
    for i in range(4):
        feats[f"unknown_param_bucket_{i}"] = 0.0
    for name, value in config.items():
        if name not in _KNOWN:
            feats[f"unknown_param_bucket_{_bucket(name, value)}"] += 1.0
    return feats


def cpu_feature_vector(problem: KernelProblem, config: Mapping[str, ConfigValue],
                       device: Mapping[str, object] | None) -> list[float]:
    """:func:`cpu_extract` as a list in :data:`CPU_FEATURE_NAMES` order."""
    feats = cpu_extract(problem, config, device)
    return [float(feats[name]) for name in CPU_FEATURE_NAMES]
