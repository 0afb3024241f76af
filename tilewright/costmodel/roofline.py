"""The analytical cost model: a roofline with wave quantization and occupancy penalties.

It needs no training data, so it is the default whenever no trained model fits the GPU, and
its estimate is also an input feature of the learned model. For one config it estimates, in
seconds::

    compute = flops / (peak * tensor_core_eff * (1 - padding) * wave_eff * latency_hiding)
    memory  = max(dram_bytes / dram_bw, tile_bytes / l2_bw) / (parallelism * vector_eff * hiding)
    time    = max(compute, memory) + inner_iters * ceil(waves) * load_latency / stages + launch

multiplied by a register-spill penalty; configs that cannot fit (shared memory over the
per-program limit) get ``inf``. Only the order of estimates within one problem is meant to be
right; absolute values are rough.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from ..schedule.problem import KernelProblem
from ..schedule.space import ConfigValue
from .base import CostModel
from .cpu import cpu_roofline_seconds, is_cpu_device
from .devices import DeviceSpec, device_spec
from .features import TileModel, _int, dtype_bytes, occupancy, tile_model

#: Seconds to launch a kernel.
LAUNCH_S = 3e-6
#: Seconds of one exposed global-load round trip inside a loop.
LOAD_LATENCY_S = 6e-7
#: Resident warps per SM needed to saturate compute / memory.
WARPS_FOR_COMPUTE = 8
WARPS_FOR_MEMORY = 16
#: Share of the FMA peak a Triton float32 ``tl.dot`` with ``input_precision="ieee"`` reaches: it is
#: lowered to scalar FMAs from registers, 2-4x slower than cuBLAS's SGEMM on the same units.
TRITON_IEEE_DOT_EFF = 0.35
#: Share of the peak the vendor library (cuBLAS) reaches on large GEMMs, and its output tile.
VENDOR_GEMM_EFF = 0.8
VENDOR_TILE = 128


def extern_gemm_seconds(problem: KernelProblem, spec: DeviceSpec) -> float:
    """Estimated seconds of a matmul's ``extern`` config: torch.mm/bmm (cuBLAS) at the precision
    torch's flags give it (``problem.meta["precision"]`` for float32), then, unless the product is
    the only output, the generated epilogue as a second pass over the product."""
    dims = problem.dims
    b, m, n, k = (max(int(dims.get(x, 1)), 1) for x in ("B", "M", "N", "K"))
    e = dtype_bytes(problem.dtype)
    precision = str(problem.meta.get("precision") or "tf32")
    peak = spec.peak_flops(problem.dtype, True, precision)
    tile = VENDOR_TILE if min(m, n) >= VENDOR_TILE else 64
    programs = b * math.ceil(m / tile) * math.ceil(n / tile)
    waves = programs / spec.sm_count
    wave_eff = waves / math.ceil(waves)
    flops = 2.0 * b * m * n * k
    compute = flops / (peak * VENDOR_GEMM_EFF * wave_eff)
    memory = b * (m * k + k * n + m * n) * e / spec.dram_bw
    seconds = max(compute, memory) + LAUNCH_S
    if not problem.meta.get("extern_direct"):
        product = b * m * n * e
        rest = max(problem.bytes - b * (m * k + k * n) * e, product) if problem.bytes else product
        seconds += (product + rest) / spec.dram_bw + LAUNCH_S
    return seconds


def roofline_seconds(problem: KernelProblem, config: Mapping[str, ConfigValue],
                     spec: DeviceSpec) -> float:
    """Estimated run time of ``config`` for ``problem`` on ``spec`` in seconds (``inf`` if infeasible).

    A matmul's ``extern`` config is scored as the vendor library (:func:`extern_gemm_seconds`);
    float32 dots at their input precision (ieee: FMA peak at :data:`TRITON_IEEE_DOT_EFF`,
    tf32: the TF32 tensor-core peak, tf32x3: a third of it).
    """
    if problem.kind == "matmul" and config.get("extern"):
        return extern_gemm_seconds(problem, spec)
    tm: TileModel = tile_model(problem, config, spec)
    warps, stages = _int(config, "num_warps", 4), _int(config, "num_stages", 1)
    per_sm, _ = occupancy(tm, warps, spec)
    if per_sm <= 0 or tm.programs <= 0:
        return math.inf
    slots = spec.sm_count * per_sm
    waves = tm.programs / slots
    full_waves = math.ceil(waves)
    wave_eff = waves / full_waves
    resident = per_sm * warps if waves >= 1 else max(tm.programs / spec.sm_count, 1 / spec.sm_count) * warps
    pipelined = stages if problem.kind in ("matmul", "attention", "conv") else 1
    hide_c = min(1.0, resident / WARPS_FOR_COMPUTE)
    hide_m = min(1.0, resident * pipelined * max(tm.elems_per_thread, 1) ** 0.5 / WARPS_FOR_MEMORY)

    peak = spec.peak_flops(problem.dtype, tm.tensor_cores, tm.precision or "tf32")
    tc_eff = min(1.0, math.sqrt(tm.warp_tile / 4096.0)) if tm.tensor_cores else 1.0
    if tm.precision == "ieee":
        tc_eff = TRITON_IEEE_DOT_EFF
    useful = max(1.0 - tm.padding_waste, 1e-3)
    compute = tm.flops / (peak * max(tc_eff, 0.05) * useful * wave_eff * max(hide_c, 0.05))

    vector_eff = 1.0
    if problem.kind in ("pointwise", "reduction"):
        vector_eff = max(min(tm.elems_per_thread * dtype_bytes(problem.dtype) / 16.0, 1.0), 0.25)
    active = min(1.0, tm.programs / spec.sm_count)
    parallel = min(1.0, 0.25 + active)
    memory = max(tm.dram_bytes / spec.dram_bw, tm.tile_bytes / spec.l2_bw)
    memory /= parallel * vector_eff * max(hide_m, 0.05)

    latency = tm.inner_iters * full_waves * LOAD_LATENCY_S / pipelined
    spill = 1.0 + max(tm.regs_per_thread - 255.0, 0.0) / 64.0
    return (max(compute, memory) + latency + LAUNCH_S) * spill


class RooflineModel(CostModel):
    """Analytical cost model; ``predict`` returns estimated seconds (lower is faster).

    Needs no arguments and no data. Stateless and thread safe.
    """

    def predict(self, problem: KernelProblem, configs: Sequence[Mapping[str, ConfigValue]],
                device: Mapping[str, object] | None = None) -> list[float]:
        """Estimated seconds for each config of ``problem`` on ``device`` (``inf`` when infeasible)."""
        if is_cpu_device(device):  # the native C++ target: cores, SIMD, caches (costmodel.cpu)
            return [cpu_roofline_seconds(problem, config, device) for config in configs]
        spec = device_spec(device)
        gpu = not device or device.get("is_gpu") is not False
        # NOTE: the interpreter has no cuBLAS to score: its runs exist to exercise generated code
        return [math.inf if config.get("extern") and not gpu else roofline_seconds(problem, config, spec)
                for config in configs]

    def __repr__(self) -> str:
        return "RooflineModel()"
