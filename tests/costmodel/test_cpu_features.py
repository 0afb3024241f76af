"""CPU cost-model features and roofline: deterministic, finite, driven by the CPU's description."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tilewright.costmodel import RooflineModel
from tilewright.costmodel.cpu import (CPU_FEATURE_NAMES, cpu_extract, cpu_feature_vector, cpu_roofline_seconds,
                                      cpu_spec, is_cpu_device)
from tilewright.costmodel.dataset import CPU_MODEL_FEATURES, build_dataset, device_key, model_inputs
from tilewright.costmodel.records import read_records
from tilewright.schedule.problem import KernelProblem

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "costmodel_cpu" / "sample.jsonl"
CPU = {"name": "Test CPU", "capability": "cpu:0123456789abcdef", "sm_count": 2, "cores": 2, "simd_bytes": 64,
       "l1d_bytes": 48 << 10, "l2_bytes": 2 << 20, "l3_bytes": 32 << 20, "clock_hz": 2.0e9}
GEMM = KernelProblem("matmul", "cpu-gemm", {"B": 1, "M": 257, "N": 190, "K": 301}, "float32",
                     flops=2.0 * 257 * 190 * 301, bytes=4.0 * (257 * 301 + 301 * 190 + 257 * 190),
                     meta={"target": "cpu", "epilogue_ops": ["bias"]})
GEMM_CONFIG = {"MC": 96, "NC": 384, "KC": 256, "MR": 12, "NR": 32, "threads": 2, "pack": True, "order": "mn",
               "extern": False}


def test_cpu_devices_are_told_apart_from_gpus_and_the_interpreter() -> None:
    assert is_cpu_device(CPU)
    assert not is_cpu_device({"name": "NVIDIA H100", "capability": "9.0"})
    assert not is_cpu_device({"name": "cpu", "capability": "none", "is_gpu": False})
    assert device_key(CPU) == "cpu:Test CPU|cpu:0123456789abcdef"


def test_peak_flops_and_bandwidth_follow_the_description() -> None:
    spec = cpu_spec(CPU)
    assert spec.lanes == 16 and spec.fma_units == 2
    assert spec.peak_flops == pytest.approx(2 * 16 * 2 * 2 * 2.0e9)  # cores x lanes x FMA x units x clock
    assert cpu_spec({**CPU, "cores": 4}).peak_flops == pytest.approx(2 * spec.peak_flops)
    assert cpu_spec({**CPU, "cores": 4}).dram_bw > spec.dram_bw


def test_features_are_deterministic_finite_and_named() -> None:
    a = cpu_feature_vector(GEMM, GEMM_CONFIG, CPU)
    b = cpu_feature_vector(KernelProblem(**json.loads(json.dumps(GEMM.to_dict()))), dict(GEMM_CONFIG), dict(CPU))
    assert a == b and len(a) == len(CPU_FEATURE_NAMES) and all(math.isfinite(x) for x in a)
    feats = cpu_extract(GEMM, GEMM_CONFIG, CPU)
    assert feats["kind_matmul"] == 1.0 and feats["threads_over_cores"] == 1.0
    assert feats["acc_vectors"] == pytest.approx(12 * 32 / 16)
    assert feats["ws_over_l2"] == pytest.approx((96 * 256 + 256 * 32) * 4 / (2 << 20))
    one = cpu_extract(GEMM, {**GEMM_CONFIG, "threads": 1}, CPU)
    assert one["log2_flops_per_thread"] == pytest.approx(feats["log2_flops_per_thread"] + 1)
    unknown = cpu_extract(GEMM, {**GEMM_CONFIG, "novel_knob": 3}, CPU)
    assert sum(unknown[f"unknown_param_bucket_{i}"] for i in range(4)) == 1.0


def test_roofline_uses_the_cpu_description() -> None:
    slow = cpu_roofline_seconds(GEMM, GEMM_CONFIG, {**CPU, "simd_bytes": 16, "clock_hz": 1.0e9})
    fast = cpu_roofline_seconds(GEMM, GEMM_CONFIG, CPU)
    assert math.isfinite(fast) and slow > fast > 0
    assert RooflineModel().predict(GEMM, [GEMM_CONFIG], CPU) == [fast]
    gpu = RooflineModel().predict(GEMM, [GEMM_CONFIG], {"name": "NVIDIA H100", "capability": "9.0", "sm_count": 132})
    assert gpu != [fast]  # a GPU device takes the GPU roofline
    # on a CPU, two threads beat one for a large GEMM, and spilling accumulators costs
    assert cpu_roofline_seconds(GEMM, {**GEMM_CONFIG, "threads": 1}, CPU) > fast
    X, roof = model_inputs(GEMM, [GEMM_CONFIG], CPU)
    assert X.shape == (1, len(CPU_MODEL_FEATURES)) and X[0, -1] == pytest.approx(math.log2(roof[0]))


def test_committed_sample_builds_a_cpu_dataset_deterministically() -> None:
    records = read_records(SAMPLE)
    assert records and all(r.capability.startswith("cpu:") and r.device_extra.get("cores") for r in records)
    a, b = build_dataset(records), build_dataset(list(reversed(records)))
    assert a.feature_set == "cpu" and a.X.shape[1] == len(CPU_MODEL_FEATURES) and len(a) > 20
    order = sorted(range(len(a)), key=lambda i: (a.groups[i], a.records[i].config_hash))
    order_b = sorted(range(len(b)), key=lambda i: (b.groups[i], b.records[i].config_hash))
    assert (a.X[order] == b.X[order_b]).all()
    assert all(str(g).endswith(device_key(records[0].device())) for g in a.groups)
