"""Hugging Face models (tiny configs, random weights) on the native CPU target, judged against float64."""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from tilewright.report import collect

from ..models.model_zoo import MODELS, main_output, more_models

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


@pytest.mark.parametrize("name", list(MODELS))
def test_training_step_on_the_cpu_target(name: str) -> None:
    """Forward and backward graphs on the C++ target: loss and every gradient against float64."""
    torch.manual_seed(0)
    model, inputs, _ = MODELS[name]()
    model.train()
    ref = copy.deepcopy(model).double()
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report:
        out = main_output(compiled(*inputs)).float()
        # NOTE: a fixed random projection, not a mean of squares: after a final layer norm the
        # latter is nearly constant and leaves every gradient ~0
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        loss = (out * weight).mean()
        loss.backward()
    torch._dynamo.reset()
    ref_loss = (main_output(ref(*[i.double() if i.is_floating_point() else i for i in inputs])) * weight).mean()
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) <= 1e-4 * abs(ref_loss.item()) + 1e-6
    pairs = [(p, r) for p, r in zip(model.parameters(), ref.parameters()) if r.grad is not None]
    assert pairs and all(p.grad is not None for p, _ in pairs)
    # NOTE: relative per parameter, with a floor from the largest gradient: some gradients are 0 in
    # exact arithmetic (a key projection's bias under softmax) and only rounding noise in both runs
    scale = max(r.grad.abs().max().item() for _, r in pairs)
    worst = max((p.grad.double() - r.grad).abs().max().item() / (r.grad.abs().max().item() + 1e-3 * scale)
                for p, r in pairs)
    assert worst < 1e-3, worst
    assert {g.name.split("_")[-1] for g in report.graphs} >= {"forward", "backward"}
    assert all(g.mode == "cpu" for g in report.graphs)
    assert not any(k["status"] == "fell back" for k in report.kernels)
    assert report.coverage > 0.5, report.coverage


@pytest.mark.parametrize("name", ["t5", "mistral", "distilbert", "bart", "convnext"])
def test_more_architectures_on_the_cpu_target(name: str) -> None:
    torch.manual_seed(0)
    make, inputs, _ = more_models()[name]
    model = make().eval()
    with torch.no_grad(), collect() as report:
        got = main_output(torch.compile(model, backend="tilewright")(*inputs)).double()
    torch._dynamo.reset()
    with torch.no_grad():
        eager = main_output(model(*inputs)).double()
        want = _float64(model, inputs)
    assert (got - want).abs().max().item() <= 10 * (eager - want).abs().max().item() + 1e-6
    assert all(g.mode == "cpu" for g in report.graphs)
    assert report.kernels and not any(k["status"] == "fell back" for k in report.kernels)
