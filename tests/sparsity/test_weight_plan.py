"""Sparsity plans: JSON round trip, version check, model fingerprint mismatch."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from tilewright.sparsity import (
    PlanEntry,
    PlanError,
    PlanMismatchError,
    SparsityPlan,
    model_fingerprint,
)


def _model(hidden: int = 24) -> nn.Module:
    return nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, 7), nn.Conv2d(3, 5, 3))


def _plan(model: nn.Module) -> SparsityPlan:
    entries = [
        PlanEntry("0", "linear", "block_sparse", {"density": 0.25, "block": [16, 16], "mask": "AQ==",
                                                  "mask_shape": [2, 1]}, 0.004, 2.4, 1.9),
        PlanEntry("2", "linear", "low_rank", {"rank": 3, "full_rank": 7}, 0.008, 1.3, None),
        PlanEntry("3", "conv", "exact", {}, math.nan, 1.0, None, note="gate: best candidate error 0.2 > budget"),
        PlanEntry("attention:0", "attention", "xattention", {"threshold": 0.9}, 0.001, 3.0, None),
    ]
    return SparsityPlan(entries, 0.01, "kl", model_fingerprint(model, attention_sites=1), 0.009, {"seed": 1})


def test_plan_round_trips_through_json_file(tmp_path) -> None:
    model = _model()
    plan = _plan(model)
    path = plan.save(tmp_path / "sub" / "plan.json")
    data = json.loads(path.read_text())  # plain JSON, nothing pickled
    assert data["version"] == 1 and data["metric"] == "kl" and len(data["entries"]) == 4
    assert data["entries"][2]["error"] is None  # NaN is stored as null
    loaded = SparsityPlan.load(path)
    assert loaded.to_dict() == plan.to_dict()
    assert [e.site for e in loaded.applied()] == ["0", "2", "attention:0"]
    assert [e.site for e in loaded.applied("attention")] == ["attention:0"]
    assert math.isnan(loaded.entry("3").error) and loaded.entry("0").measured_speedup == 1.9
    loaded.check_model(_model(), attention_sites=1)  # the same architecture passes


def test_unknown_version_and_bad_entries_are_clear_errors(tmp_path) -> None:
    data = _plan(_model()).to_dict()
    with pytest.raises(PlanError, match="version 99 is not supported"):
        SparsityPlan.from_dict({**data, "version": 99})
    bad = {**data, "entries": [{"site": "0", "kind": "linear", "method": "magic"}]}
    with pytest.raises(PlanError, match="method 'magic'"):
        SparsityPlan.from_dict(bad)
    with pytest.raises(PlanError, match="does not exist"):
        SparsityPlan.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        SparsityPlan.load(tmp_path / "broken.json")


def test_plan_refuses_a_model_with_different_layer_shapes() -> None:
    plan = _plan(_model(hidden=24))
    with pytest.raises(PlanMismatchError, match=r"0: plan has linear \[24, 10\], model has linear \[32, 10\]"):
        plan.check_model(_model(hidden=32), attention_sites=1)
    with pytest.raises(PlanMismatchError, match="attention sites: plan has 1, model has 2"):
        plan.check_model(_model(), attention_sites=2)
    with pytest.raises(PlanMismatchError, match="missing from this model"):
        plan.check_model(nn.Sequential(nn.Linear(10, 24)))


def test_compiling_with_a_plan_for_another_model_fails_clearly(tmp_path) -> None:
    import tilewright  # noqa: F401  (registers the backend)

    plan = _plan(_model(hidden=24))
    path = plan.save(tmp_path / "plan.json")
    other = _model(hidden=32)[:3].eval()
    torch._dynamo.reset()
    compiled = torch.compile(other, backend="tilewright", options={"sparsity": {"plan": str(path)}})
    with torch.no_grad(), pytest.raises(Exception, match="made for a different model") as info:
        compiled(torch.randn(3, 10))
    assert "recalibrate" in str(info.value)
    torch._dynamo.reset()
