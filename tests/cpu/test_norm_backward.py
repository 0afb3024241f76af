"""Layer norm's and RMS norm's backward as one CPU kernel: the weight/bias gradients' column sums
are folded into the row kernel's output pass (``targets/cpu/reduction_fold.py``; the fusion pass
merges complementary reductions, ``passes/fusion.py``), so the incoming gradient is read once and
the normalised input is never stored. Results against float64 on odd sizes, 1 and 2 threads."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from tilewright.report import collect

pytestmark = pytest.mark.usefixtures("cpu_target")


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), w, b)


def _rms_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def _grads(fn: Callable[..., torch.Tensor], leaves: list[torch.Tensor], g: torch.Tensor,
           compiled: bool) -> tuple[list[torch.Tensor | None], Any]:
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    with collect() as report:
        (torch.compile(fn, backend="tilewright") if compiled else fn)(*leaves).backward(g)
    torch._dynamo.reset()
    return [t.grad for t in leaves], report


def _worst(got: torch.Tensor, ref: torch.Tensor) -> float:
    return (got.double() - ref).abs().max().item()


@pytest.mark.parametrize("fn", [_layer_norm, _rms_norm], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape", [(7, 33), (3, 5, 67), (37, 1100), (2, 9, 16), (1, 3, 2053)])
@pytest.mark.parametrize("threads", [1, 2])
def test_norm_backward_is_one_kernel_and_matches_float64(fn: Callable[..., torch.Tensor], shape: tuple[int, ...],
                                                         threads: int) -> None:
    torch.manual_seed(sum(shape))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        d = shape[-1]
        leaves = [torch.randn(*shape) * 2 + 0.5, torch.randn(d), torch.randn(d)]
        g = torch.randn(*shape)
        got, report = _grads(fn, leaves, g, compiled=True)
        want, _ = _grads(fn, [t.double() for t in leaves], g.double(), compiled=False)
        eager, _ = _grads(fn, leaves, g, compiled=False)
    finally:
        torch.set_num_threads(old)
    for a, ref, e in zip(got, want, eager):
        if ref is None:
            continue
        assert a is not None
        assert _worst(a, ref) <= 2 * _worst(e, ref) + 1e-6 * ref.abs().max().item(), (_worst(a, ref), _worst(e, ref))
    assert all(k["status"] == "ran" for k in report.kernels), report.kernels
    # the forward kernel and one backward kernel: input gradient, weight (and bias) gradient
    assert [k["kind"] for k in report.kernels] == ["reduction", "reduction"], [k["ops"] for k in report.kernels]
    backward = [op.split(".")[1] for op in report.kernels[1]["ops"]]
    assert backward.count("sum") == (4 if fn is _layer_norm else 2), backward


def test_folded_column_sums_are_deterministic_and_exact_over_many_rows() -> None:
    """Thousands of rows (many flushes of the float partials, several row blocks): the bias gradient
    of a constant gradient is exact, and two runs agree bit for bit."""
    x, w, b = torch.randn(3001, 40), torch.randn(40), torch.randn(40)
    g = torch.full((3001, 40), 0.25)
    first, _ = _grads(_layer_norm, [x, w, b], g, compiled=True)
    second, _ = _grads(_layer_norm, [x, w, b], g, compiled=True)
    assert first[2] is not None and torch.equal(first[2], torch.full((40,), 0.25 * 3001))
    for a, c in zip(first, second):
        assert a is not None and c is not None and torch.equal(a, c)


def test_column_sum_read_inside_the_group_is_not_folded() -> None:
    """A column sum that the row kernel itself reads cannot be folded (it is not known until every
    row ran): the result stays right."""
    def fn(x: torch.Tensor) -> torch.Tensor:
        col = x.sum(0, keepdim=True)
        return torch.softmax(x * col, -1)

    x = torch.randn(9, 21)
    with collect() as report:
        out = torch.compile(fn, backend="tilewright")(x)
    torch._dynamo.reset()
    torch.testing.assert_close(out.double(), fn(x.double()), rtol=1e-5, atol=1e-6)
    assert all(k["status"] == "ran" for k in report.kernels)


@pytest.mark.parametrize("fn", [_layer_norm, _rms_norm], ids=["layer_norm", "rms_norm"])
def test_square_rows_match_float64(fn: Callable[..., torch.Tensor]) -> None:
    """As many rows as features: the row and column sums have equal row counts (the fusion pass
    merges them only through a producer edge there); the gradients stay right."""
    torch.manual_seed(3)
    leaves = [torch.randn(24, 24), torch.randn(24), torch.randn(24)]
    g = torch.randn(24, 24)
    got, report = _grads(fn, leaves, g, compiled=True)
    want, _ = _grads(fn, [t.double() for t in leaves], g.double(), compiled=False)
    for a, ref in zip(got, want):
        if ref is not None:
            assert a is not None
            torch.testing.assert_close(a.double(), ref, rtol=1e-4, atol=1e-5)
    assert all(k["status"] == "ran" for k in report.kernels), report.kernels
