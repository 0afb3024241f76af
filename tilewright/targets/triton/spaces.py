"""Schedule spaces and default (heuristic) configs for the generated kernel kinds.

Parameter names equal the kernels' constexpr names (``XBLOCK``, ``BLOCK_M``...) or launch
options (``num_warps``, ``num_stages``), so a config maps one-to-one onto a launch.
Constraints encode what would fail or waste the machine: register and shared-memory budgets
(sized for Hopper: 228 KiB shared memory per SM, 64K registers), tensor-core minimum tile
shapes, and tiles far larger than the problem.
"""
from __future__ import annotations

from typing import Callable, Mapping

from ...schedule.space import ConfigValue, Constraint, ScheduleSpace, next_pow2

SHARED_MEMORY_BYTES = 227 * 1024
SPACE_VERSION = "2"  # 2: reductions keep every thread busy, matmul accumulators <= 128 per thread,
# wgmma-shaped tiles for problems that fill a warpgroup, epilogue scratch counted in shared memory

#: The number of values a config's program holds, e.g. its accumulator tile.
Count = Callable[[Mapping[str, ConfigValue]], float]


def product_of(*names: str) -> Count:
    """Count: the product of the named parameters (``product_of("BLOCK_M", "BLOCK_N")``: the tile)."""
    def count(c: Mapping[str, ConfigValue]) -> float:
        total = 1
        for name in names:
            total *= int(c[name])
        return total
    return count


def register_budget(values: Count, most: float, too_many: str, least: float = 0.0,
                    too_few: str = "") -> Constraint:
    """Constraint on the registers one thread holds: ``values(config)`` over ``32 * num_warps`` threads.

    Rejects a config whose per-thread share is above ``most`` with ``too_many`` (a format string
    that may name ``{per_thread}``) and one whose share is below ``least`` (warps left idle by a
    small tile) with ``too_few``.
    """
    def check(c: Mapping[str, ConfigValue]) -> str | None:
        per_thread = values(c) / (32 * int(c["num_warps"]))
        if per_thread > most:
            return too_many.format(per_thread=per_thread)
        if per_thread < least:
            return too_few
        return None
    return check


def shared_memory_budget(need: Callable[[Mapping[str, ConfigValue]], int], limit: int,
                         reason: str = "needs {need} B shared memory > {limit}") -> Constraint:
    """Constraint: the ``need(config)`` bytes of shared memory fit in ``limit``; else ``reason``
    (a format string that may name ``{need}`` and ``{limit}``)."""
    def check(c: Mapping[str, ConfigValue]) -> str | None:
        bytes_needed = need(c)
        return None if bytes_needed <= limit else reason.format(need=bytes_needed, limit=limit)
    return check


def tile_within(caps: Mapping[str, int]) -> Constraint:
    """Constraint: no tile parameter exceeds its cap (the padded problem size along that axis)."""
    def check(c: Mapping[str, ConfigValue]) -> str | None:
        if any(int(c[name]) > cap for name, cap in caps.items()):
            return "tile larger than the problem"
        return None
    return check


def pointwise_space(numel: int) -> ScheduleSpace:
    """XBLOCK x num_warps for a flat elementwise kernel over ``numel`` elements."""
    cap = max(64, next_pow2(numel))
    blocks = [b for b in (64, 128, 256, 512, 1024, 2048, 4096) if b <= cap]

    per_thread = register_budget(product_of("XBLOCK"), 32, "more than 32 elements per thread",
                                 least=1 / 4, too_few="fewer than 8 elements per warp")
    xblock = min(1024, cap)
    default = {"XBLOCK": xblock, "num_warps": 4 if xblock >= 512 else (2 if xblock >= 128 else 1), "num_stages": 1}
    return ScheduleSpace("pointwise", {"XBLOCK": blocks, "num_warps": [1, 2, 4, 8], "num_stages": [1]},
                         [per_thread], default, SPACE_VERSION)


def reduction_space(xnumel: int, rnumel: int, outer: bool = False) -> ScheduleSpace:
    """XBLOCK x RBLOCK x num_warps; RBLOCK >= rnumel means a persistent (single-pass) kernel.

    ``outer``: the rows, not the reduced elements, are contiguous in memory (a column
    reduction such as a bias gradient); the default then spreads lanes along the rows so
    loads stay coalesced.
    """
    r_cap = next_pow2(rnumel)
    rblocks = sorted({b for b in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if b <= max(16, r_cap)} |
                     ({r_cap} if r_cap <= 16384 else set()))
    x_cap = next_pow2(xnumel)
    xblocks = [b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b <= max(1, x_cap)]

    def tile_size(c: Mapping[str, ConfigValue]) -> str | None:
        elems = int(c["XBLOCK"]) * int(c["RBLOCK"])
        threads = 32 * int(c["num_warps"])
        if elems > 16384 * 2:
            return f"tile of {elems} elements exceeds the register budget"
        if elems < threads and int(c["num_warps"]) > 1:
            return f"tile of {elems} elements leaves threads of {c['num_warps']} warps idle"
        return None

    per_thread = register_budget(product_of("XBLOCK", "RBLOCK"), 128, "more than 128 elements per thread")

    if outer and x_cap >= 8:
        xblock = min(x_cap, 64)
        rblock = max(16, min(r_cap, 4096 // xblock))
    elif r_cap <= 4096:
        rblock = max(16, r_cap)
        xblock = max(1, min(x_cap, 64, 4096 // rblock))
    else:
        rblock, xblock = 2048, 1
    elems = rblock * xblock
    warps = 8 if elems >= 4096 else 4 if elems >= 1024 else 2 if elems >= 256 else 1
    default = {"XBLOCK": xblock, "RBLOCK": rblock, "num_warps": warps, "num_stages": 1}
    return ScheduleSpace("reduction", {"XBLOCK": xblocks, "RBLOCK": rblocks, "num_warps": [1, 2, 4, 8, 16],
                                       "num_stages": [1]},
                         [tile_size, per_thread], default, SPACE_VERSION)


#: accumulator values one thread may hold (fp32 registers; the A/B fragments, addresses and the
#: epilogue need the rest of the 255 a thread can address)
ACCUMULATORS_PER_THREAD = 128


#: version of the matmul space (3: ``extern`` cuBLAS candidate, float32 ``PRECISION``)
MATMUL_SPACE_VERSION = "3"


def matmul_space(m: int, n: int, k: int, elem_bytes: int, precisions: list[str] | None = None) -> ScheduleSpace:
    """Tile sizes, group size, warps and stages of the matmul template, its ``tl.dot`` input
    precision (float32 only: ``precisions``, see :mod:`tilewright.schedule.precision`) and ``extern``.

    ``extern=True`` runs torch.mm/bmm (cuBLAS) and then the kernel's epilogue: one config,
    whose other parameters are the defaults (its epilogue's tile).

    Constraints: the pipelined A/B tiles plus the epilogue's fp32 scratch (the accumulator
    converted to the store layout) fit in shared memory; at most 128 accumulators per thread
    (at least 2, or the warps idle); no tile beyond the padded problem; and, when the problem
    fills a Hopper warpgroup (M >= 64), only tiles wgmma can run — BLOCK_M a multiple of 64
    per warpgroup (num_warps 4 or 8, BLOCK_M >= 16 * num_warps) and BLOCK_N >= 16.
    """
    sizes = [16, 32, 64, 128, 256]

    def smem(c: Mapping[str, ConfigValue]) -> int:
        bm, bn, bk = int(c["BLOCK_M"]), int(c["BLOCK_N"]), int(c["BLOCK_K"])
        return (bm * bk + bk * bn) * elem_bytes * int(c["num_stages"]) + bm * bn * 4

    def wgmma_shaped(c: Mapping[str, ConfigValue]) -> str | None:
        if m < 64:
            return None
        warps, bm, bn = int(c["num_warps"]), int(c["BLOCK_M"]), int(c["BLOCK_N"])
        if warps not in (4, 8) or bm < 16 * warps or bn < 16:
            return "tile or warps rule out wgmma (BLOCK_M >= 64 per warpgroup of 4 warps, BLOCK_N >= 16)"
        return None

    def extern_default(c: Mapping[str, ConfigValue]) -> str | None:
        if c["extern"] and any(c[p] != v for p, v in default.items() if p != "extern"):
            return "the extern candidate takes the default values of the other parameters"
        return None

    constraints = [extern_default,
                   shared_memory_budget(smem, SHARED_MEMORY_BYTES, "needs {need} bytes of shared memory"),
                   register_budget(product_of("BLOCK_M", "BLOCK_N"), ACCUMULATORS_PER_THREAD,
                                   f"accumulator exceeds {ACCUMULATORS_PER_THREAD} registers per thread",
                                   least=2, too_few="tile too small for the warps"),
                   tile_within({"BLOCK_M": max(16, next_pow2(m)), "BLOCK_N": max(16, next_pow2(n)),
                                "BLOCK_K": max(16, next_pow2(k))}),
                   wgmma_shaped]
    bm = min(128, max(16, next_pow2(m)))
    bn = min(128, max(16, next_pow2(n)))
    bk = min(64 if elem_bytes <= 2 else 32, max(16, next_pow2(k)))
    warps = 8 if bm * bn >= 128 * 128 else 4 if bm * bn >= 64 * 64 or m >= 64 else 2
    stages = 3 if elem_bytes <= 2 else 2
    default: dict[str, ConfigValue] = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8,
                                       "num_warps": warps, "num_stages": stages, "extern": False}
    params: dict[str, list[ConfigValue]] = {
        "BLOCK_M": sizes, "BLOCK_N": sizes, "BLOCK_K": [16, 32, 64, 128], "GROUP_M": [1, 4, 8],
        "num_warps": [2, 4, 8], "num_stages": [1, 2, 3, 4, 5], "extern": [False, True]}
    if precisions:
        params["PRECISION"] = list(precisions)
        default["PRECISION"] = precisions[0]
    return ScheduleSpace("matmul", params, constraints, default, MATMUL_SPACE_VERSION)
