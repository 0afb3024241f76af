"""Schedule spaces and default (heuristic) configs for the generated kernel kinds.

Parameter names equal the kernels' constexpr names (``XBLOCK``, ``BLOCK_M``...) or launch
options (``num_warps``, ``num_stages``), so a config maps one-to-one onto a launch.
Constraints encode what would fail or waste the machine: register and shared-memory budgets
(sized for Hopper: 228 KiB shared memory per SM, 64K registers), tensor-core minimum tile
shapes, and tiles far larger than the problem.
"""
from __future__ import annotations

from typing import Mapping

from ...schedule.space import ConfigValue, ScheduleSpace

SHARED_MEMORY_BYTES = 227 * 1024
SPACE_VERSION = "1"


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def pointwise_space(numel: int) -> ScheduleSpace:
    """XBLOCK x num_warps for a flat elementwise kernel over ``numel`` elements."""
    cap = max(64, next_pow2(numel))
    blocks = [b for b in (64, 128, 256, 512, 1024, 2048, 4096) if b <= cap]

    def fits(c: Mapping[str, ConfigValue]) -> str | None:
        if int(c["XBLOCK"]) < 32 * int(c["num_warps"]) // 4:
            return "fewer than 8 elements per warp"
        if int(c["XBLOCK"]) // (32 * int(c["num_warps"])) > 32:
            return "more than 32 elements per thread"
        return None

    xblock = min(1024, cap)
    default = {"XBLOCK": xblock, "num_warps": 4 if xblock >= 512 else (2 if xblock >= 128 else 1), "num_stages": 1}
    return ScheduleSpace("pointwise", {"XBLOCK": blocks, "num_warps": [1, 2, 4, 8], "num_stages": [1]},
                         [fits], default, SPACE_VERSION)


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

    def fits(c: Mapping[str, ConfigValue]) -> str | None:
        elems = int(c["XBLOCK"]) * int(c["RBLOCK"])
        threads = 32 * int(c["num_warps"])
        if elems > 16384 * 2:
            return f"tile of {elems} elements exceeds the register budget"
        if elems // threads > 128:
            return "more than 128 elements per thread"
        if elems < threads // 2 and elems < 64:
            return "tile smaller than half the threads"
        return None

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
                                       "num_stages": [1]}, [fits], default, SPACE_VERSION)


def matmul_space(m: int, n: int, k: int, elem_bytes: int) -> ScheduleSpace:
    """Tile sizes, group size, warps and stages of the matmul template."""
    sizes = [16, 32, 64, 128, 256]

    def fits(c: Mapping[str, ConfigValue]) -> str | None:
        bm, bn, bk = int(c["BLOCK_M"]), int(c["BLOCK_N"]), int(c["BLOCK_K"])
        warps, stages = int(c["num_warps"]), int(c["num_stages"])
        smem = (bm * bk + bk * bn) * elem_bytes * stages
        if smem > SHARED_MEMORY_BYTES:
            return f"needs {smem} bytes of shared memory"
        if bm * bn // (32 * warps) > 256:
            return "accumulator exceeds 256 registers per thread"
        if bm * bn < 64 * warps:
            return "tile too small for the warps"
        if bm > max(16, next_pow2(m)) or bn > max(16, next_pow2(n)) or bk > max(16, next_pow2(k)):
            return "tile larger than the problem"
        return None

    bm = min(128, max(16, next_pow2(m)))
    bn = min(128, max(16, next_pow2(n)))
    bk = min(64 if elem_bytes <= 2 else 32, max(16, next_pow2(k)))
    warps = 8 if bm * bn >= 128 * 128 else 4 if bm * bn >= 64 * 64 else 2
    default = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps,
               "num_stages": 3 if elem_bytes <= 2 else 2}
    return ScheduleSpace("matmul", {"BLOCK_M": sizes, "BLOCK_N": sizes, "BLOCK_K": [16, 32, 64, 128],
                                    "GROUP_M": [1, 4, 8], "num_warps": [2, 4, 8], "num_stages": [1, 2, 3, 4, 5]},
                         [fits], default, SPACE_VERSION)
