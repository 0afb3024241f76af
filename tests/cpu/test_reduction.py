"""The native CPU target's reduction kernels against torch, in strict mode (a fallback fails the test)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    fn = lambda x, w, b: torch.softmax(F.layer_norm(x, (16,), w, b), -1)
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


def test_explicit_simd_exp_matches_float64_over_its_range() -> None:
    # rows of 16k + 5 elements: whole vectors (explicit SIMD) and a scalar tail, the same checks on both
    special = [float("nan"), float("inf"), -float("inf"), 88.72, 88.73, 89.0, -87.3, -95.0, -103.9, -104.0, -200.0, 0.0]
    body = torch.cat([torch.linspace(-110.0, 90.0, 3 * 37 - len(special)), torch.tensor(special)])
    x = body[torch.randperm(body.numel(), generator=torch.Generator().manual_seed(0))].reshape(3, 37)
    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = torch.exp(x)  # an element value of a reduction kernel, stored
        return e, e.amax(-1)

    (got, _), report = run_compiled(fn, x)
    assert [k["kind"] for k in report.kernels] == ["reduction"], report.kernels
    want = torch.exp(x.double())
    finite = (want < torch.finfo(torch.float32).max) & (want > 0)  # float32 results that are finite
    rel = ((got.double() - want).abs() / want.clamp_min(1e-300))[finite & (want > 1.2e-38)]
    assert rel.max().item() < 3e-7  # ~2.5 ulp
    assert torch.allclose(got.double()[finite], want[finite], rtol=3e-7, atol=3e-45)  # subnormal results too
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.float().isinf())
    assert (got[want < 7e-46] == 0).all()


def test_softmax_nan_inf_rows_like_torch() -> None:
    x = torch.randn(6, 40) * 3
    x[0, :] = -float("inf")          # a fully masked row: NaN, as torch
    x[1, ::3] = -float("inf")        # masked scores in the vector part and the tail
    x[2, 35] = float("nan")          # NaN in the scalar tail
    x[3, 4] = float("nan")           # NaN in a whole vector
    x[4, 7] = float("inf")
    out, report = run_compiled(lambda x: torch.softmax(x, -1), x)
    torch.testing.assert_close(out, torch.softmax(x, -1), equal_nan=True)
    assert [k["kind"] for k in report.kernels] == ["reduction"]


@pytest.mark.parametrize("width", [16, 67])
def test_softmax_layer_norm_rms_training_wide_rows_match_float64(width: int) -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Softmax(-1))
    w = torch.randn(width, requires_grad=True)

    def step(m: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = m(x)
        return (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + 1e-6) * w).pow(2).sum()

    x = torch.randn(9, width, requires_grad=True)
    with collect() as report:
        torch.compile(step, backend="tilewright")(model, x, w).backward()
    torch._dynamo.reset()
    ref = torch.nn.Sequential(torch.nn.LayerNorm(width), torch.nn.Softmax(-1)).double()
    ref.load_state_dict(model.state_dict())
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    step(ref, x64, w64).backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model[0].weight.grad.double(), ref[0].weight.grad, rtol=1e-4, atol=1e-6)
    assert sum(k["kind"] == "reduction" for k in report.kernels) >= 2
    assert all(k["status"] == "ran" for k in report.kernels)


@pytest.mark.parametrize("isa_off", [[], ["-mno-avx512f"], ["-mno-avx512f", "-mno-avx2"]], ids=["native", "avx2", "scalar"])
def test_each_simd_path_matches_float64(isa_off: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The AVX-512, AVX2 and portable scalar paths of one kernel (the flags switch them off on this machine)."""
    from tilewright.targets.cpu import build, toolchain

    monkeypatch.setattr(build, "compile_flags", lambda c: toolchain.compile_flags(c) + isa_off)
    torch.manual_seed(2)
    x, w, b = torch.randn(5, 37) * 3, torch.randn(37), torch.randn(37)
    x[1, 3], x[2, 36], x[3, ::4] = float("nan"), float("inf"), -float("inf")
    fn = lambda x, w, b: (torch.softmax(x, -1), F.layer_norm(x, (37,), w, b), x.amax(-1))
    out, report = run_compiled(fn, x, w, b)
    want = fn(x.double(), w.double(), b.double())
    for got, ref in zip(out, want):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert report.kernels and all(k["kind"] == "reduction" and k["status"] == "ran" for k in report.kernels)


@pytest.mark.parametrize("offset", [1e3, 1e5])
def test_variance_of_large_mean_rows_matches_float64(offset: float) -> None:
    """Mean first, then squared deviations (two passes, sums in double): no cancellation when the
    mean dwarfs the spread (one-pass sum-of-squares in float loses every digit). Judged against
    float64, no worse than eager float32 (whose mean is a float32 too)."""
    torch.manual_seed(4)
    x = torch.randn(6, 300) * 0.5 + offset
    w, b = torch.randn(300), torch.randn(300)

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return F.layer_norm(x, (300,), w, b), x.var(-1, unbiased=False), (x - x.mean(-1, keepdim=True)).pow(2).mean(-1)

    out, report = run_compiled(fn, x, w, b)
    want = fn(x.double(), w.double(), b.double())
    eager = fn(x, w, b)
    for got, ref, eag in zip(out, want, eager):
        err = (got.double() - ref).abs().max().item()
        eager_err = (eag.double() - ref).abs().max().item()
        assert err <= 1.5 * eager_err + 1e-6 * ref.abs().max().item(), (err, eager_err)
    sums_of_squares = (x * x).mean(-1) - x.mean(-1) ** 2  # the one-pass formula in float32: cancels
    assert (sums_of_squares.double() - want[1]).abs().max() > 10 * (out[1].double() - want[1]).abs().max()
    assert all(k["status"] == "ran" for k in report.kernels)


COLUMN_CASES: list[tuple[str, Callable[..., Any], Callable[[], tuple[torch.Tensor, ...]]]] = [
    ("sum_mul", lambda x, y: (x * y).sum(0), lambda: (torch.randn(37, 45), torch.randn(37, 45))),
    ("mean_3d_two_dims", lambda x: x.mean((0, 1)) * 2, lambda: (torch.randn(3, 13, 50),)),
    ("max_min_nan_inf", lambda x: x.amax(0) - x.amin(0), lambda: (_with_specials(torch.randn(29, 40)),)),
    ("broadcast_row_operand", lambda x, w: (x * w).sum(1), lambda: (torch.randn(4, 21, 33), torch.randn(33))),
    ("keepdim_epilogue", lambda x: torch.sigmoid(x.sum(0, keepdim=True)) + 1, lambda: (torch.randn(17, 19),)),
    ("int_any", lambda a: (a.sum(0), (a > 5).any(0)), lambda: (torch.randint(-9, 9, (11, 24)),)),
    ("strided_falls_back_to_rows", lambda x: x.t().sum(0), lambda: (torch.randn(23, 40),)),
]


def _with_specials(x: torch.Tensor) -> torch.Tensor:
    x[3, 5], x[7, 33], x[2, 39] = float("nan"), float("inf"), -float("inf")
    return x


@pytest.mark.parametrize("name,fn,make", COLUMN_CASES, ids=[c[0] for c in COLUMN_CASES])
def test_column_reductions_match_float64(name: str, fn: Callable[..., Any],
                                         make: Callable[[], tuple[torch.Tensor, ...]]) -> None:
    """Reductions over outer dims (column blocks with one accumulator per column)."""
    torch.manual_seed(5)
    inputs = make()
    out, report = run_compiled(fn, *inputs)
    want = fn(*[t.double() if t.is_floating_point() else t for t in inputs])
    for got, ref in zip(out if isinstance(out, tuple) else (out,), want if isinstance(want, tuple) else (want,)):
        torch.testing.assert_close(got.double() if got.is_floating_point() else got,
                                   ref, rtol=1e-5, atol=1e-5, equal_nan=True, check_dtype=False)
    assert report.kernels and all(k["kind"] == "reduction" and k["status"] == "ran" for k in report.kernels)
