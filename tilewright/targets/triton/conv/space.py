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

from ....schedule.space import Config, ConfigValue, Constraint, ScheduleSpace, next_pow2
from ..spaces import product_of, register_budget, shared_memory_budget, tile_within
from .problem import _DTYPES, SPACE_VERSION, ConvProblem


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
    cap_m, cap_n = max(16, next_pow2(m)), max(16, next_pow2(n_gemm))

    def fits_k_step(c: Mapping[str, ConfigValue]) -> str | None:
        k_cap = max(16, next_pow2(p.cg if c["K_ORDER"] == "tap" else k_gemm))
        if int(c["BLOCK_K"]) > k_cap:
            return "BLOCK_K larger than the reduction step"
        if c["K_ORDER"] == "tap" and p.cg < 16 and p.taps > 1:
            return "tap order with few channels wastes most of each K block"
        return None

    def shared_memory(c: Mapping[str, ConfigValue]) -> int:
        stage = (int(c["BLOCK_M"]) + int(c["BLOCK_N"])) * int(c["BLOCK_K"]) * esize
        return stage * int(c["num_stages"])  # NOTE: conservative: one buffer per stage

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
                          constraints=[tile_within({"BLOCK_M": cap_m, "BLOCK_N": cap_n}), fits_k_step,
                                       layouts, shared_memory_budget(shared_memory, p.smem_bytes),
                                       _accumulator_registers(128, 4), tensor_cores],
                          version=SPACE_VERSION)
    default: Config = {
        "BLOCK_M": min(128 if m >= 4096 else 64, cap_m), "BLOCK_N": min(64, cap_n),
        "BLOCK_K": 32 if (p.cg >= 32 or (p.cg < 16 and k_gemm >= 32)) else 16,
        "GROUP_M": 8, "K_ORDER": "tap" if p.cg >= 16 or p.taps == 1 else "flat",
        "X_LAYOUT": "as_is", "W_LAYOUT": "as_is", "num_warps": 4, "num_stages": 3}
    return with_default(space, default)


def _direct_space(p: ConvProblem) -> ScheduleSpace:
    m = p.gemm[0]
    cap_m, cap_n = max(16, next_pow2(m)), max(4, next_pow2(p.c_out))
    params: dict[str, list[ConfigValue]] = {
        "BLOCK_M": [16, 32, 64, 128, 256], "BLOCK_N": [4, 8, 16, 32, 64],
        "num_warps": [1, 2, 4, 8], "num_stages": [1, 2]}
    space = ScheduleSpace(kind="conv", params=params,
                          constraints=[tile_within({"BLOCK_M": cap_m, "BLOCK_N": cap_n}),
                                       _accumulator_registers(64, 1)],
                          version=SPACE_VERSION)
    default: Config = {"BLOCK_M": min(64, cap_m), "BLOCK_N": min(32, cap_n), "num_warps": 4,
                       "num_stages": 1}
    return with_default(space, default)


def _accumulator_registers(most: int, least: int) -> Constraint:
    """Register budget of the [BLOCK_M, BLOCK_N] float32 accumulator, per thread."""
    return register_budget(product_of("BLOCK_M", "BLOCK_N"), most,
                           "{per_thread:.0f} accumulator registers per thread",
                           least=least, too_few="too many warps for the tile")


def with_default(space: ScheduleSpace, want: Config) -> ScheduleSpace:
    """Set ``space``'s default to ``want``, or to the feasible config closest to it (fewest
    differing parameters, first in enumeration order) when ``want`` is infeasible."""
    def distance(c: Config) -> int:
        return sum(0 if c[k] == v else 1 for k, v in want.items())
    space.default = want if space.is_feasible(want) else min(space.enumerate(), key=distance)
    return space
