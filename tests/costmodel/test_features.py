"""Feature extraction: tile models against hand-computed values, graceful degradation."""
from __future__ import annotations

import math

import pytest

from tilewright.schedule.problem import KernelProblem
from tilewright.costmodel.devices import GENERIC, device_family, device_spec
from tilewright.costmodel.features import FEATURE_NAMES, extract, feature_vector, tile_model

H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sm_count": 132}
MM_CFG = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}


def test_device_lookup_and_overrides() -> None:
    assert device_family("NVIDIA H100 80GB HBM3") == "H100-SXM"
    assert device_family("NVIDIA H100 PCIe") == "H100-PCIe"
    assert device_family("NVIDIA A100-SXM4-40GB") == "A100-40GB"
    assert device_family("NVIDIA H200") == "H200"
    assert device_family("Some Future GPU") == "generic"
    assert device_spec(H100).sm_count == 132
    assert device_spec({"name": "NVIDIA H100 80GB HBM3", "sm_count": 100}).sm_count == 100
    assert device_spec(None) is GENERIC
    # the CPU interpreter's sm_count is a core count and must not leak into GPU features
    assert device_spec({"name": "cpu-interpreter", "sm_count": 2, "is_gpu": False}) is GENERIC


def test_matmul_tile_model_hand_computed() -> None:
    p = KernelProblem("matmul", "fp", {"B": 1, "M": 100, "N": 256, "K": 256}, "float16")
    tm = tile_model(p, MM_CFG, device_spec(H100))
    assert tm.programs == 2 * 4  # cdiv(100, 64) * cdiv(256, 64)
    assert tm.inner_iters == 8  # 256 / 32
    assert tm.padding_waste == pytest.approx(1 - 100 / 128)
    assert tm.smem_bytes == 3 * (64 * 32 + 32 * 64) * 2
    assert tm.flops == 2 * 100 * 256 * 256
    # A (100x256) is read once per column block (4), B (256x256) once per row block (2)
    assert tm.tile_bytes == (100 * 256 * 4 + 256 * 256 * 2) * 2 + 100 * 256 * 2
    f = extract(p, MM_CFG, H100)
    assert f["log2_programs"] == 3.0
    assert f["kind_matmul"] == 1.0 and f["kind_pointwise"] == 0.0
    assert f["log2_BLOCK_M"] == 6.0 and f["log2_XBLOCK"] == 0.0
    # 8 programs on 132 SMs: less than one wave, most of it idle
    assert f["log2_waves"] < 0 and f["sm_fill"] == pytest.approx(8 / 132)


def test_waves_and_tail() -> None:
    p = KernelProblem("pointwise", "fp", {"numel": 1024 * 200}, "float32")
    f = extract(p, {"XBLOCK": 1024, "num_warps": 4, "num_stages": 1}, {**H100, "sm_count": 100})
    per_sm = f["programs_per_sm"]
    waves = 200 / (100 * per_sm)
    assert 2 ** f["log2_waves"] == pytest.approx(waves)
    assert f["tail_fraction"] == pytest.approx((math.ceil(waves) - waves) / math.ceil(waves))
    assert f["padding_waste"] == 0.0


def test_infeasible_shared_memory_and_occupancy() -> None:
    p = KernelProblem("matmul", "fp", {"B": 1, "M": 4096, "N": 4096, "K": 4096}, "float32")
    big = {**MM_CFG, "BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 128, "num_stages": 4}
    f = extract(p, big, H100)
    assert f["feasible"] == 0.0 and f["occupancy"] == 0.0
    ok = extract(p, MM_CFG, H100)
    assert ok["feasible"] == 1.0 and 0 < ok["occupancy"] <= 1


@pytest.mark.parametrize("problem,config", [
    (KernelProblem("pointwise", "f", {"numel": 1000}, "bfloat16"), {"XBLOCK": 128, "num_warps": 4}),
    (KernelProblem("reduction", "f", {"rows": 7, "rnumel": 1000}, "float16", meta={"persistent": True}),
     {"XBLOCK": 2, "RBLOCK": 1024, "num_warps": 4, "num_stages": 1}),
    (KernelProblem("attention", "f", {"B": 2, "H": 4, "M": 300, "N": 300, "D": 64}, "float16",
                   meta={"causal": True}), {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}),
    (KernelProblem("conv", "f", {"N": 2, "C": 3, "H": 17, "W": 17, "K": 8, "R": 3, "S": 3, "stride": 2,
                                 "padding": 1}, "float32"), {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16}),
    (KernelProblem("scan", "f", {"n": 999}, "float32"), {"BLOCK": 64, "mystery": "x"}),
    (KernelProblem("matmul", "f", {}, "int8"), {}),
])
def test_every_kind_gives_finite_features(problem: KernelProblem, config: dict) -> None:
    vec = feature_vector(problem, config, H100)
    assert len(vec) == len(FEATURE_NAMES)
    assert all(math.isfinite(v) for v in vec)
    f = extract(problem, config, None)
    assert f["n_unknown_params"] == sum(1 for k in config if k in ("BLOCK", "mystery"))


def test_attention_causal_halves_work() -> None:
    dims = {"B": 1, "H": 8, "M": 2048, "N": 2048, "D": 64}
    cfg = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    full = tile_model(KernelProblem("attention", "f", dims, "float16"), cfg, device_spec(H100))
    causal = tile_model(KernelProblem("attention", "f", dims, "float16", meta={"causal": True}), cfg,
                        device_spec(H100))
    assert causal.flops == pytest.approx(full.flops / 2)
    assert causal.inner_iters < full.inner_iters
