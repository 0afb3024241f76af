"""Schedule spaces of generated kernels: defaults feasible, constraints enforced, hashes stable."""
from __future__ import annotations

import itertools

import pytest

from tilewright.schedule.space import config_hash
from tilewright.targets.triton.spaces import matmul_space, pointwise_space, reduction_space

SIZES = [1, 2, 7, 8, 16, 33, 100, 1000, 4097, 65536, 10**6]


@pytest.mark.parametrize("numel", SIZES)
def test_pointwise_default_is_feasible(numel: int) -> None:
    space = pointwise_space(numel)
    assert space.check(space.default_config()) is None
    assert space.size() > 0


@pytest.mark.parametrize("rows,rnumel", list(itertools.product([1, 3, 128, 4096], [1, 5, 64, 768, 5000, 50000])))
def test_reduction_default_is_feasible(rows: int, rnumel: int) -> None:
    space = reduction_space(rows, rnumel)
    assert space.check(space.default_config()) is None


@pytest.mark.parametrize("m,n,k,elem", [(1, 1, 1, 4), (8, 8, 8, 4), (13, 17, 19, 2), (4096, 4096, 4096, 2),
                                        (1, 50257, 768, 2), (128, 96, 3072, 4)])
def test_matmul_default_is_feasible_and_constraints_hold(m: int, n: int, k: int, elem: int) -> None:
    space = matmul_space(m, n, k, elem)
    assert space.check(space.default_config()) is None
    for config in space.enumerate():
        smem = (config["BLOCK_M"] * config["BLOCK_K"] + config["BLOCK_K"] * config["BLOCK_N"]) * elem * config["num_stages"]
        assert smem + config["BLOCK_M"] * config["BLOCK_N"] * 4 <= 227 * 1024  # pipeline + epilogue scratch
        assert config["BLOCK_M"] * config["BLOCK_N"] / (32 * config["num_warps"]) <= 128
        if m >= 64:  # the tiles wgmma runs: a multiple of 64 rows per warpgroup of 4 warps
            assert config["num_warps"] in (4, 8) and config["BLOCK_M"] >= 16 * config["num_warps"]


def test_infeasible_configs_are_reported() -> None:
    space = matmul_space(4096, 4096, 4096, 4)
    bad = dict(space.default_config(), BLOCK_M=256, BLOCK_N=256, BLOCK_K=128, num_stages=5)
    assert "shared memory" in (space.check(bad) or "")
    assert config_hash(bad) == config_hash(dict(reversed(list(bad.items()))))


def test_schedules_that_cannot_be_good_are_rejected() -> None:
    """Issue #16: idle warps on a small reduction tile, accumulators that leave no registers, tiles
    that rule out wgmma, shared memory without the epilogue's scratch."""
    red = reduction_space(4096, 64)
    assert "idle" in (red.check({"XBLOCK": 1, "RBLOCK": 64, "num_warps": 16, "num_stages": 1}) or "")
    assert red.check({"XBLOCK": 1, "RBLOCK": 64, "num_warps": 2, "num_stages": 1}) is None
    mm = matmul_space(4096, 4096, 4096, 2)
    base = {"BLOCK_K": 32, "GROUP_M": 8, "num_stages": 3, "extern": False}
    assert "registers" in (mm.check(dict(base, BLOCK_M=256, BLOCK_N=128, num_warps=4)) or "")
    assert mm.check(dict(base, BLOCK_M=256, BLOCK_N=128, num_warps=8)) is None
    assert "wgmma" in (mm.check(dict(base, BLOCK_M=32, BLOCK_N=64, num_warps=2)) or "")
    assert "wgmma" in (mm.check(dict(base, BLOCK_M=32, BLOCK_N=64, num_warps=4)) or "")
    assert "wgmma" not in (matmul_space(32, 4096, 4096, 2).check(dict(base, BLOCK_M=32, BLOCK_N=64,
                                                                      num_warps=2)) or "")
    # 128x256 tiles, K=64, 4 stages of bf16: 196,608 B of pipeline fits 227 KiB; the 131,072 B
    # fp32 epilogue scratch on top does not
    big = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4, extern=False)
    assert "shared memory" in (mm.check(big) or "")
