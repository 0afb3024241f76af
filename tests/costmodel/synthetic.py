"""SYNTHETIC measurement records for the cost-model tests — made up, not GPU timings.

The "true" time is the roofline estimate distorted by effects the roofline does not model
(a preferred warp count per kind, a penalty on deep pipelines for fp32, a GROUP_M bonus on
large matmuls) plus noise, so a learned model has something to learn. Every record carries
``synthetic=True`` and "SYNTHETIC" in its device name; none of it is ever committed as data
or used for a shipped model.
"""
from __future__ import annotations

import itertools
import math
import random
from typing import Any

from tilewright.schedule.problem import KernelProblem
from tilewright.schedule.space import ScheduleSpace
from tilewright.costmodel.devices import device_spec
from tilewright.costmodel.records import Record
from tilewright.costmodel.roofline import roofline_seconds

DEVICES = {
    "H100": {"name": "SYNTHETIC NVIDIA H100 80GB HBM3", "capability": "9.0", "sm_count": 132},
    "A100": {"name": "SYNTHETIC NVIDIA A100-SXM4-80GB", "capability": "8.0", "sm_count": 108},
}

SPACES = {
    "matmul": ScheduleSpace("matmul", {"BLOCK_M": [32, 64, 128], "BLOCK_N": [32, 64, 128],
                                       "BLOCK_K": [32, 64], "GROUP_M": [1, 8],
                                       "num_warps": [4, 8], "num_stages": [2, 3, 4]}),
    "pointwise": ScheduleSpace("pointwise", {"XBLOCK": [128, 256, 512, 1024, 2048, 4096],
                                             "num_warps": [1, 2, 4, 8], "num_stages": [1]}),
    "reduction": ScheduleSpace("reduction", {"XBLOCK": [1, 2, 4, 8], "RBLOCK": [128, 512, 2048],
                                             "num_warps": [2, 4, 8], "num_stages": [1]}),
}


def problem(kind: str, rng: random.Random, index: int) -> KernelProblem:
    """A random problem of ``kind``; ``index`` makes the fingerprint (kernel identity)."""
    dtype = rng.choice(["float16", "float32"])
    if kind == "matmul":
        dims = {"B": 1, "M": rng.choice([128, 384, 1000, 2048, 4096]), "N": rng.choice([256, 768, 3072]),
                "K": rng.choice([256, 768, 4096])}
    elif kind == "pointwise":
        dims = {"numel": rng.choice([10_000, 1 << 18, 3_000_000, 1 << 24])}
    else:
        dims = {"rows": rng.choice([8, 512, 8192]), "rnumel": rng.choice([100, 768, 4096])}
    return KernelProblem(kind, f"synthetic-{kind}-{index}", dims, dtype)


def true_time(p: KernelProblem, config: dict[str, Any], device: dict[str, Any], rng: random.Random) -> float:
    """The made-up "measured" time."""
    base = roofline_seconds(p, config, device_spec(device))
    preferred = {"matmul": 8, "pointwise": 4, "reduction": 4}[p.kind]
    factor = 1.0 + 0.35 * abs(math.log2(config["num_warps"] / preferred))
    if p.dtype == "float32" and config.get("num_stages", 1) >= 4:
        factor *= 1.5
    if p.kind == "matmul" and config.get("GROUP_M", 1) > 1 and p.dims["M"] >= 2048:
        factor *= 0.85
    if "A100" in device["name"] and p.kind == "matmul" and config.get("BLOCK_N") == 128:
        factor *= 1.3
    return base * factor * math.exp(rng.gauss(0.0, 0.03))


def make_records(n_problems: int = 30, configs_per_problem: int = 16, seed: int = 0,
                 devices: tuple[str, ...] = ("H100",)) -> list[Record]:
    """SYNTHETIC records: ``n_problems`` problems (kinds cycled) x sampled configs x devices."""
    rng = random.Random(seed)
    out = []
    kinds = list(SPACES)
    for i in range(n_problems):
        kind = kinds[i % len(kinds)]
        p = problem(kind, rng, i)
        space = SPACES[kind]
        all_configs = [dict(zip(space.params, v)) for v in itertools.product(*space.params.values())]
        configs = rng.sample(all_configs, min(configs_per_problem, len(all_configs)))
        for dev_key in devices:
            device = DEVICES[dev_key]
            for config in configs:
                t = true_time(p, config, device, rng)
                if not math.isfinite(t):
                    out.append(Record.measured(p, config, device, failure="out of resources: shared memory",
                                               synthetic=True, source="synthetic"))
                    continue
                times = [t * math.exp(rng.gauss(0, 0.01)) for _ in range(5)]
                out.append(Record.measured(p, config, device, times_s=times, triton_version="synthetic",
                                           source="synthetic", synthetic=True))
    return out
