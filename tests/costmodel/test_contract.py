"""One contract every CostModel kind must meet, run against each kind."""
from __future__ import annotations

import math

import pytest

from tilewright.schedule.problem import KernelProblem
from tilewright.costmodel import DeviceDispatchModel
from tilewright.costmodel.base import CostModel
from tilewright.costmodel.dataset import build_dataset
from tilewright.costmodel.gbm import GBMCostModel
from tilewright.costmodel.roofline import RooflineModel

H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sm_count": 132}
PROBLEM = KernelProblem("matmul", "contract", {"B": 1, "M": 1000, "N": 768, "K": 768}, "float16")
CONFIGS = [{"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": w, "num_stages": 3}
           for bm in (32, 64, 128) for bn in (32, 128) for w in (4, 8)]
HUGE = {"BLOCK_M": 256, "BLOCK_N": 256, "BLOCK_K": 256, "GROUP_M": 8, "num_warps": 8, "num_stages": 6}


def _kinds(records) -> dict[str, CostModel]:
    gbm = GBMCostModel.fit(build_dataset(records), n_estimators=20, max_depth=3)
    return {"roofline": RooflineModel(), "gbm": gbm, "dispatch": DeviceDispatchModel(gbm)}


@pytest.mark.parametrize("kind", ["roofline", "gbm", "dispatch"])
def test_cost_model_contract(kind: str, synthetic_records) -> None:
    model = _kinds(synthetic_records)[kind]
    for device in (H100, None, {"name": "cpu-interpreter", "is_gpu": False, "sm_count": 2}):
        scores = model.predict(PROBLEM, CONFIGS + [HUGE], device)
        assert len(scores) == len(CONFIGS) + 1 and all(isinstance(s, float) for s in scores)
        assert all(math.isfinite(s) for s in scores[:-1]) and math.isinf(scores[-1])
        assert model.predict(PROBLEM, CONFIGS, device) == scores[:-1]  # deterministic, per config
        order = model.rank(PROBLEM, CONFIGS + [HUGE], device)
        assert sorted(order) == list(range(len(CONFIGS) + 1)) and order[-1] == len(CONFIGS)
    assert model.predict(PROBLEM, [], H100) == []
