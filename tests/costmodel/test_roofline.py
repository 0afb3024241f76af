"""The analytical roofline model: sanity of its estimates and orderings."""
from __future__ import annotations

import math

from tilewright.schedule.problem import KernelProblem
from tilewright.costmodel.base import CostModel
from tilewright.costmodel.roofline import RooflineModel

H100 = {"name": "NVIDIA H100 80GB HBM3"}


def test_constructs_without_arguments() -> None:
    model = RooflineModel()
    assert isinstance(model, CostModel)
    assert model.predict(KernelProblem("pointwise", "f", {"numel": 10}, "float32"), []) == []


def test_memory_bound_estimate_is_near_bandwidth_limit() -> None:
    n = 1 << 26
    p = KernelProblem("pointwise", "f", {"numel": n}, "float32", bytes=3 * 4 * n)
    (t,) = RooflineModel().predict(p, [{"XBLOCK": 1024, "num_warps": 4, "num_stages": 1}], H100)
    ideal = 3 * 4 * n / 3.35e12
    assert ideal <= t <= 3 * ideal


def test_compute_bound_matmul_near_peak_for_good_tiles() -> None:
    p = KernelProblem("matmul", "f", {"B": 1, "M": 8192, "N": 8192, "K": 8192}, "float16")
    good = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
    tiny = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 1, "num_warps": 4, "num_stages": 2}
    t_good, t_tiny = RooflineModel().predict(p, [good, tiny], H100)
    ideal = 2 * 8192 ** 3 / 989e12
    assert ideal <= t_good <= 2 * ideal
    assert t_tiny > 3 * t_good


def test_infeasible_config_is_infinite_and_ranked_last() -> None:
    p = KernelProblem("matmul", "f", {"B": 1, "M": 4096, "N": 4096, "K": 4096}, "float32")
    ok = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "num_warps": 4, "num_stages": 3}
    huge = {"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 128, "num_warps": 4, "num_stages": 5}
    model = RooflineModel()
    scores = model.predict(p, [huge, ok], H100)
    assert math.isinf(scores[0]) and math.isfinite(scores[1])
    assert model.rank(p, [huge, ok], H100) == [1, 0]


def test_bigger_problems_take_longer_and_tiny_blocks_lose() -> None:
    cfg = {"XBLOCK": 1024, "num_warps": 4}
    small, big = (KernelProblem("pointwise", "f", {"numel": n}, "float16") for n in (1 << 12, 1 << 24))
    model = RooflineModel()
    assert model.predict(big, [cfg])[0] > model.predict(small, [cfg])[0]
    narrow = {"XBLOCK": 32, "num_warps": 8}  # 1 element per thread: short loads, many programs
    assert model.predict(big, [narrow], H100)[0] > model.predict(big, [cfg], H100)[0]
