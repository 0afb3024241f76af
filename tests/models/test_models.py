"""End-to-end: tiny transformers models compiled by tilewright match eager, judged against float64.

A result is accepted when its error against a float64 run is no more than 10x eager float32's
own error (plus a tiny absolute floor for values eager gets exactly right).
"""
from __future__ import annotations

import copy

import pytest
import torch

import tilewright

from .model_zoo import MODELS, main_output

pytestmark = pytest.mark.slow


def _to64(x: object) -> object:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.double()
    return x


def _within(got: torch.Tensor, eager: torch.Tensor, ref64: torch.Tensor, what: str) -> None:
    eager_err = (eager.double() - ref64).abs().max().item()
    err = (got.double() - ref64).abs().max().item()
    bound = 10 * eager_err + 1e-6 * max(1.0, ref64.abs().max().item())
    assert err <= bound, f"{what}: error {err:.3g} vs float64 exceeds 10x eager's {eager_err:.3g}"


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "vit", "resnet"])
def test_inference_matches_eager(name: str) -> None:
    torch.manual_seed(0)
    model, inputs, _ = MODELS[name]()
    model.eval()
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        eager = main_output(model(*inputs))
        ref64 = main_output(model64(*[_to64(i) for i in inputs]))
        got = main_output(torch.compile(model, backend="tilewright")(*inputs))
    _within(got, eager, ref64, f"{name} output")


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "vit", "resnet"])
def test_training_gradients_match_eager(name: str) -> None:
    torch.manual_seed(0)
    model, inputs, _ = MODELS[name]()
    model.train()
    model_c = copy.deepcopy(model)
    model64 = copy.deepcopy(model).double()

    def grads(m: torch.nn.Module, ins: tuple, fn: object = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = main_output((fn if fn is not None else m)(*ins))
        (out.double() * torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        return out.detach(), {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}

    eager_out, eager_g = grads(model, inputs)
    ref_out, ref_g = grads(model64, tuple(_to64(i) for i in inputs))
    got_out, got_g = grads(model_c, inputs, torch.compile(model_c, backend="tilewright"))
    _within(got_out, eager_out, ref_out, f"{name} training output")
    assert set(eager_g) <= set(got_g)
    for pname in set(got_g) - set(eager_g):  # AOTAutograd materialises zero tangents for unused outputs
        assert not got_g[pname].any(), f"{pname} has a nonzero gradient but does not reach the loss"
    for pname in eager_g:
        _within(got_g[pname], eager_g[pname], ref_g[pname], f"{name} grad {pname}")


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "vit", "resnet"])
def test_coverage(name: str) -> None:
    torch.manual_seed(0)
    model, inputs, _ = MODELS[name]()
    model.eval()
    report = tilewright.explain(model, *inputs)
    data = report.to_dict()
    assert data["coverage"] >= 0.9, str(report)
    assert data["kernels"], "no kernels generated"
    assert all(k["kind"] in ("pointwise", "reduction", "matmul", "conv", "template") for k in data["kernels"])
    if name != "resnet":
        assert data["attention_fused"] == MODELS[name]()[2], "every attention layer is fused"


def test_dynamic_sequence_lengths_gpt2() -> None:
    from tilewright.report import collect

    torch.manual_seed(0)
    model, _, layers = MODELS["gpt2"]()
    model.eval()
    compiled = torch.compile(model, backend="tilewright")  # Dynamo makes the length dynamic on the 2nd call
    with torch.no_grad(), collect() as report:
        for n in (5, 9, 17):
            ids = torch.randint(0, 101, (2, n))
            torch.testing.assert_close(main_output(compiled(ids)), main_output(model(ids)), rtol=1e-4, atol=1e-5)
    assert report.coverage == 1.0 and not report.fallbacks, str(report)
    assert any(g.specialized for g in report.graphs), "the dynamic graph is specialised per length"
    assert all(g.attention_fused == layers for g in report.graphs), [g.attention_fused for g in report.graphs]
