"""Hugging Face models (tiny configs, random weights) on the native CPU target, judged against float64."""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from tilewright.report import collect

from ..models.model_zoo import MODELS, main_output

pytestmark = pytest.mark.usefixtures("cpu_target")


def _float64(model: torch.nn.Module, inputs: tuple[Any, ...]) -> torch.Tensor:
    ref = copy.deepcopy(model).double()
    return main_output(ref(*[i.double() if i.is_floating_point() else i for i in inputs]))


@pytest.mark.parametrize("name", list(MODELS))
def test_model_inference_on_the_cpu_target(name: str) -> None:
    torch.manual_seed(0)
    model, inputs, _ = MODELS[name]()
    model.eval()
    with torch.no_grad(), collect() as report:
        got = main_output(torch.compile(model, backend="tilewright")(*inputs)).double()
    torch._dynamo.reset()
    with torch.no_grad():
        want = _float64(model, inputs)
        eager = main_output(model(*inputs)).double()
    eager_err = (eager - want).abs().max().item()
    assert (got - want).abs().max().item() <= 10 * eager_err + 1e-5
    assert all(g.mode == "cpu" for g in report.graphs)
    assert report.kernels and all(k["status"] == "ran" for k in report.kernels)
    assert report.coverage > 0.5, report.coverage
    assert any(k["kind"] == "reduction" for k in report.kernels), "softmax / norms run as C++ reductions"


def test_gpt2_training_step_on_the_cpu_target() -> None:
    torch.manual_seed(0)
    model, inputs, _ = MODELS["gpt2"]()
    model.train()
    ref = copy.deepcopy(model).double()
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report:
        loss = main_output(compiled(*inputs)).float().pow(2).mean()
        loss.backward()
    torch._dynamo.reset()
    ref_loss = main_output(ref(*inputs)).pow(2).mean()
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) <= 1e-4 * abs(ref_loss.item()) + 1e-6
    worst = max((p.grad.double() - r.grad).abs().max().item() / (r.grad.abs().max().item() + 1e-12)
                for p, r in zip(model.parameters(), ref.parameters()) if r.grad is not None)
    assert worst < 1e-3, worst
    assert {g.name.split("_")[-1] for g in report.graphs} >= {"forward", "backward"}
    assert all(k["status"] == "ran" for k in report.kernels)
