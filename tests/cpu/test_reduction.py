"""The native CPU target's reduction kernels against torch, in strict mode (a fallback fails the test)."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from tilewright.report import collect

from .helpers import run_compiled

pytestmark = pytest.mark.usefixtures("cpu_target")


CASES: list[tuple[str, Callable[..., Any], Callable[[], tuple[torch.Tensor, ...]]]] = [
    ("softmax", lambda x: torch.softmax(x, -1), lambda: (torch.randn(7, 33) * 4,)),
    ("softmax_dim1_of_3d", lambda x: torch.softmax(x, 1), lambda: (torch.randn(3, 19, 5),)),
    ("log_softmax", lambda x: torch.log_softmax(x, -1), lambda: (torch.randn(6, 11, 13),)),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, (33,), w, b),
     lambda: (torch.randn(5, 7, 33), torch.randn(33), torch.randn(33))),
    ("rms_norm", lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w,
     lambda: (torch.randn(4, 29), torch.randn(29))),
    ("sum_two_dims", lambda x: x.sum((0, 2)) + 1, lambda: (torch.randn(4, 6, 5),)),
    ("mean_all", lambda x: (x * 2).mean(), lambda: (torch.randn(17, 3),)),
    ("max_minus_min", lambda x: x.amax(1) - x.amin(1), lambda: (torch.randn(9, 40),)),
    ("keepdim_epilogue", lambda x: x - x.mean(-1, keepdim=True), lambda: (torch.randn(10, 21),)),
    ("strided_input", lambda x: x.t().sum(-1), lambda: (torch.randn(23, 9),)),
    ("broadcast_input", lambda x, y: (x * y).sum(-1), lambda: (torch.randn(8, 15), torch.randn(15))),
    ("float64", lambda x: torch.softmax(x, -1), lambda: (torch.randn(5, 12, dtype=torch.float64),)),
    ("int_sum", lambda a: a.sum(-1) * 2, lambda: (torch.randint(-9, 9, (6, 14)),)),
    ("any_all", lambda x: torch.stack([(x > 1).any(-1), (x > -3).all(-1)]), lambda: (torch.randn(7, 10),)),
    ("long_rows", lambda x: x.sum(-1), lambda: (torch.randn(3, 100_003),)),
]


@pytest.mark.parametrize("name,fn,make", CASES, ids=[c[0] for c in CASES])
def test_reduction_matches_torch(name: str, fn: Callable[..., Any], make: Callable[[], tuple[torch.Tensor, ...]]) -> None:
    torch.manual_seed(0)
    inputs = make()
    out, report = run_compiled(fn, *inputs)
    want = fn(*inputs)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-4)
    assert any(k["kind"] == "reduction" and k["status"] == "ran" for k in report.kernels), report.kernels
    assert all(k["status"] == "ran" for k in report.kernels)


def test_max_propagates_nan_like_torch() -> None:
    x = torch.randn(4, 6)
    x[1, 3] = float("nan")
    out, _ = run_compiled(lambda x: x.amax(-1) + x.amin(-1), x)
    torch.testing.assert_close(out, x.amax(-1) + x.amin(-1), equal_nan=True)


def test_softmax_and_layer_norm_fuse_into_one_kernel_each() -> None:
    fn = lambda x, w, b: torch.softmax(F.layer_norm(x, (16,), w, b), -1)  # noqa: E731
    x, w, b = torch.randn(6, 16), torch.randn(16), torch.randn(16)
    out, report = run_compiled(fn, x, w, b)
    torch.testing.assert_close(out, fn(x, w, b), rtol=1e-5, atol=1e-5)
    assert [k["kind"] for k in report.kernels] == ["reduction"], report.kernels
    assert report.coverage == 1.0


def test_layer_norm_training_matches_float64() -> None:
    model = torch.nn.Sequential(torch.nn.LayerNorm(24), torch.nn.Softmax(-1))
    x = torch.randn(5, 24, requires_grad=True)
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report:
        compiled(x).pow(2).sum().backward()
    torch._dynamo.reset()
    x64 = x.detach().double().requires_grad_()
    ref = torch.nn.Sequential(torch.nn.LayerNorm(24), torch.nn.Softmax(-1)).double()
    ref.load_state_dict(model.state_dict())
    ref(x64).pow(2).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model[0].weight.grad.double(), ref[0].weight.grad, rtol=1e-4, atol=1e-6)
    assert any(k["kind"] == "reduction" for k in report.kernels)
    assert all(k["status"] == "ran" for k in report.kernels)
