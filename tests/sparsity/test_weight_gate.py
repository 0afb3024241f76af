"""The accuracy gate: a too-lossy layer stays exact, the whole-model check backs off, metrics."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tilewright.sparsity.api import evaluate_plan, sparsify
from tilewright.sparsity.candidates import compress, materialize


class TwoLayers(nn.Module):
    """``compressible``: all signal in its first 32 input columns (pruning 3/4 of its blocks is nearly free);
    ``lossy``: dense random weights (any pruning or rank cut loses a lot)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.compressible = nn.Linear(128, 64)
        self.lossy = nn.Linear(64, 48)
        with torch.no_grad():
            self.compressible.weight.copy_(torch.randn(64, 128, generator=g) * 0.1)
            self.compressible.weight[:, 32:] *= 1e-4
            self.lossy.weight.copy_(torch.randn(48, 64, generator=g) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lossy(torch.tanh(self.compressible(x)))


def _batches(n: int, seed: int, features: int = 128) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 9, features, generator=g) for _ in range(n)]


def test_gate_keeps_a_too_lossy_layer_exact_and_rewrites_the_other() -> None:
    model = TwoLayers().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = sparsify(model, _batches(2, 1), budget=0.01, methods=("block_sparse", "low_rank"),
                    holdout=_batches(2, 2))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not touched
    comp, lossy = plan.entry("compressible"), plan.entry("lossy")
    assert comp.method == "block_sparse" and comp.params["density"] <= 0.25 + 1e-6
    assert comp.error <= 0.01 and comp.expected_speedup > 2
    assert lossy.method == "exact" and lossy.error > 0.01 and "budget" in lossy.note  # reverted by the gate
    assert plan.model_error <= 0.01 and plan.meta["holdout_error"] <= 0.02
    # the recorded error is what the plan does to the model
    assert evaluate_plan(model, plan, _batches(2, 1)) == pytest.approx(plan.model_error, rel=1e-6)


class Parallel(nn.Module):
    """Two equal branches: each pruned alone costs e, both together about e * sqrt(2)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.a, self.b = nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.randn(64, 64, generator=g))
            self.b.weight.copy_(torch.randn(64, 64, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], -1)


def test_whole_model_check_backs_off_until_within_budget() -> None:
    model = Parallel().eval()
    data = _batches(1, 3, features=64)
    loose = sparsify(model, data, budget=10.0, methods=("block_sparse",), densities=(0.5,), block=(16, 16))
    alone = [loose.entry("a").error, loose.entry("b").error]
    assert loose.entry("a").method == loose.entry("b").method == "block_sparse"
    budget = max(alone) * 1.15  # each layer alone passes, both together do not
    plan = sparsify(model, data, budget=budget, methods=("block_sparse",), densities=(0.5,), block=(16, 16))
    methods = sorted(e.method for e in plan.entries)
    assert methods == ["block_sparse", "exact"], methods
    assert plan.meta["backoffs"] == 1 and plan.model_error <= budget
    reverted = next(e for e in plan.entries if e.method == "exact")
    assert "whole model exceeded the budget" in reverted.note


def test_kl_and_custom_metrics_drive_the_gate() -> None:
    model = TwoLayers().eval()
    calls = []

    def never_ok(reference, approx) -> float:
        calls.append(len(reference))
        return 0.0 if all(torch.equal(r, a) for r, a in zip(reference, approx)) else 1.0

    plan = sparsify(model, _batches(1, 1), budget=0.5, metric=never_ok)
    assert plan.metric == "never_ok" and all(e.method == "exact" for e in plan.entries) and calls
    plan = sparsify(model, _batches(1, 1), budget=1e-3, metric="kl", methods=("block_sparse",))
    assert plan.metric == "kl" and plan.entry("compressible").method == "block_sparse"
    with pytest.raises(ValueError, match="unknown sparsity metric"):
        sparsify(model, _batches(1, 1), metric="mse")
    with pytest.raises(ValueError, match="unknown weight methods"):
        sparsify(model, _batches(1, 1), methods=("magic",))


def test_low_rank_is_chosen_for_a_low_rank_weight() -> None:
    g = torch.Generator().manual_seed(2)
    lin = nn.Linear(96, 160, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(160, 12, generator=g) @ torch.randn(12, 96, generator=g) / 10)
    model = nn.Sequential(lin).eval()
    plan = sparsify(model, [torch.randn(7, 96, generator=g)], budget=0.01, methods=("low_rank",))
    e = plan.entry("0")
    assert e.method == "low_rank" and e.params["rank"] <= 16 and e.expected_speedup > 3
    r = e.params["rank"]
    packed = compress(lin.weight, "low_rank", e.params)
    assert packed["u"].shape == (160, r) and packed["v"].shape == (r, 96)
    approx = materialize(lin.weight, "low_rank", e.params)
    torch.testing.assert_close(packed["u"] @ packed["v"], approx, rtol=1e-4, atol=1e-5)
    assert torch.linalg.matrix_rank(approx.double(), rtol=1e-5).item() == min(r, 12)
