"""Schedule spaces of the convolution kernels (kind ``"conv"``), with their constraints.

Parameter names equal the kernels' constexpr names (``BLOCK_M``...) or launch options
(``num_warps``, ``num_stages``); ``K_ORDER`` selects the GEMM template's reduction loop;
``X_LAYOUT`` / ``W_LAYOUT`` are the launcher's layout choices (GEMM only): run on the input
as it is or on a channels-last copy, and on the weight as it is or on a copy whose output
channel is innermost (``k_inner``: the B tile loads contiguously along N).
"""
from __future__ import annotations

import functools
from typing import Mapping

import torch

from ....schedule.space import Config, ConfigValue, ScheduleSpace
from .problem import _DTYPES, SPACE_VERSION, ConvProblem, _next_pow2

@functools.lru_cache(maxsize=1024)
def conv_schedule_space(problem: ConvProblem) -> ScheduleSpace:
    """The schedule space of ``problem``'s kernel (its algorithm decides which one).

    Cached per problem: treat the returned space as read-only.
    """
    if problem.algorithm == "direct":
        return _direct_space(problem)
    return _igemm_space(problem)


def _igemm_space(p: ConvProblem) -> ScheduleSpace:
    m, n_gemm, k_gemm = p.gemm
    esize = _DTYPES.get(getattr(torch, p.dtype, torch.float32), 4)
    cap_m, cap_n = max(16, _next_pow2(m)), max(16, _next_pow2(n_gemm))

    def fits_problem(c: Mapping[str, ConfigValue]) -> str | None:
        if int(c["BLOCK_M"]) > cap_m or int(c["BLOCK_N"]) > cap_n:
            return "tile larger than the problem"
        k_cap = max(16, _next_pow2(p.cg if c["K_ORDER"] == "tap" else k_gemm))
        if int(c["BLOCK_K"]) > k_cap:
            return "BLOCK_K larger than the reduction step"
        if c["K_ORDER"] == "tap" and p.cg < 16 and p.taps > 1:
            return "tap order with few channels wastes most of each K block"
        return None

    def shared_memory(c: Mapping[str, ConfigValue]) -> str | None:
        stage = (int(c["BLOCK_M"]) + int(c["BLOCK_N"])) * int(c["BLOCK_K"]) * esize
        need = stage * int(c["num_stages"])  # NOTE: conservative: one buffer per stage
        return None if need <= p.smem_bytes else f"needs {need} B shared memory > {p.smem_bytes}"

    def registers(c: Mapping[str, ConfigValue]) -> str | None:
        per_thread = int(c["BLOCK_M"]) * int(c["BLOCK_N"]) / (int(c["num_warps"]) * 32)
        if per_thread > 128:
            return f"{per_thread:.0f} accumulator registers per thread"
        if per_thread < 4:
            return "too many warps for the tile"
        return None

    def tensor_cores(c: Mapping[str, ConfigValue]) -> str | None:
        # NOTE: mma needs 16-multiples; with 8 warps a 16-row tile leaves warps idle.
        if int(c["num_warps"]) >= 8 and min(int(c["BLOCK_M"]), int(c["BLOCK_N"])) < 32:
            return "8 warps need tiles of at least 32x32"
        if esize == 4 and int(c["BLOCK_K"]) > 32 and int(c["num_stages"]) > 3:
            return "float32 K=64 with deep pipelining spills"
        return None

    def layouts(c: Mapping[str, ConfigValue]) -> str | None:
        if c["X_LAYOUT"] == "channels_last" and p.channels_last:
            return "input is already channels-last"
        if c["X_LAYOUT"] == "channels_last" and p.cg * p.groups == 1:
            return "one input channel: layouts coincide"
        return None

    params: dict[str, list[ConfigValue]] = {
        "BLOCK_M": [16, 32, 64, 128], "BLOCK_N": [16, 32, 64, 128], "BLOCK_K": [16, 32, 64],
        "GROUP_M": [1, 8], "K_ORDER": ["tap", "flat"], "X_LAYOUT": ["as_is", "channels_last"],
        "W_LAYOUT": ["as_is", "k_inner"], "num_warps": [2, 4, 8], "num_stages": [2, 3, 4]}
    space = ScheduleSpace(kind="conv", params=params,
                          constraints=[fits_problem, layouts, shared_memory, registers,
                                       tensor_cores],
                          version=SPACE_VERSION)
    default: Config = {
        "BLOCK_M": min(128 if m >= 4096 else 64, cap_m), "BLOCK_N": min(64, cap_n),
        "BLOCK_K": 32 if (p.cg >= 32 or (p.cg < 16 and k_gemm >= 32)) else 16,
        "GROUP_M": 8, "K_ORDER": "tap" if p.cg >= 16 or p.taps == 1 else "flat",
        "X_LAYOUT": "as_is", "W_LAYOUT": "as_is", "num_warps": 4, "num_stages": 3}
    space.default = default if space.is_feasible(default) else None
    if space.default is None:
        space.default = _closest_feasible(space, default)
    return space


def _direct_space(p: ConvProblem) -> ScheduleSpace:
    m = p.gemm[0]
    cap_m, cap_n = max(16, _next_pow2(m)), max(4, _next_pow2(p.c_out))

    def fits_problem(c: Mapping[str, ConfigValue]) -> str | None:
        if int(c["BLOCK_M"]) > cap_m or int(c["BLOCK_N"]) > cap_n:
            return "tile larger than the problem"
        return None

    def registers(c: Mapping[str, ConfigValue]) -> str | None:
        per_thread = int(c["BLOCK_M"]) * int(c["BLOCK_N"]) / (int(c["num_warps"]) * 32)
        if per_thread > 64:
            return f"{per_thread:.0f} accumulator registers per thread"
        if per_thread < 1:
            return "too many warps for the tile"
        return None

    params: dict[str, list[ConfigValue]] = {
        "BLOCK_M": [16, 32, 64, 128, 256], "BLOCK_N": [4, 8, 16, 32, 64],
        "num_warps": [1, 2, 4, 8], "num_stages": [1, 2]}
    space = ScheduleSpace(kind="conv", params=params, constraints=[fits_problem, registers],
                          version=SPACE_VERSION)
    default: Config = {"BLOCK_M": min(64, cap_m), "BLOCK_N": min(32, cap_n), "num_warps": 4,
                       "num_stages": 1}
    space.default = default if space.is_feasible(default) else _closest_feasible(space, default)
    return space


def _closest_feasible(space: ScheduleSpace, want: Config) -> Config:
    def distance(c: Config) -> int:
        return sum(0 if c[k] == v else 1 for k, v in want.items())
    return min(space.enumerate(), key=distance)
