"""The unrolled, blocked vector loops of the CPU reduction kernels (``reduction_vector.py``): float
partial sums flushed into double per block, the shifted variance, max/min over several runs.

Row widths cover every part of a pass: one unrolled iteration (64 floats with AVX-512), exactly one
block (512), blocks plus single vectors plus a scalar tail (565, 1100, 2053)."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from .helpers import run_compiled

pytestmark = pytest.mark.usefixtures("cpu_target")

WIDTHS = [64, 512, 565, 1100, 2053]


def _worst(got: torch.Tensor, ref: torch.Tensor) -> float:
    return (got.double() - ref).abs().max().item()


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("offset", [0.0, 1e5])
def test_layer_norm_and_variance_match_float64_at_every_loop_shape(width: int, offset: float) -> None:
    """No worse than eager float32 against float64 (a mean far from zero: the variance's shift by the
    float mean and its correction ``sum(t)^2 / N`` must cancel the mean's rounding)."""
    torch.manual_seed(width)
    x = torch.randn(7, width) * 0.5 + offset
    w, b = torch.randn(width), torch.randn(width)

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return F.layer_norm(x, (width,), w, b), x.var(-1, unbiased=False), x.sum(-1), x.mean(-1)

    out, report = run_compiled(fn, x, w, b)
    want = fn(x.double(), w.double(), b.double())
    eager = fn(x, w, b)
    for got, ref, eag in zip(out, want, eager):
        assert _worst(got, ref) <= 1.5 * _worst(eag, ref) + 1e-6 * ref.abs().max().item(), (_worst(got, ref), _worst(eag, ref))
    assert report.kernels and all(k["kind"] == "reduction" and k["status"] == "ran" for k in report.kernels)


def test_layer_norm_rows_with_inf_or_nan_are_nan_like_torch() -> None:
    x, w, b = torch.randn(4, 700), torch.randn(700), torch.randn(700)
    x[0, 3], x[1, 600], x[2, 699] = float("inf"), float("nan"), -float("inf")
    fn = lambda x, w, b: F.layer_norm(x, (700,), w, b)
    out, _ = run_compiled(fn, x, w, b)
    torch.testing.assert_close(out, fn(x, w, b), equal_nan=True)
    assert out[:3].isnan().all() and not out[3].isnan().any()


def test_max_and_min_over_outer_dims_keep_every_run() -> None:
    """A reduction over (N, H, W) walks H*W as a vectorised run inside a loop over N: the extremum of
    an earlier run must survive the later ones (it was overwritten by the last run's)."""
    x = torch.randn(3, 4, 40, 40)
    x[0, 2, 3, 4], x[1, 1, 0, 0], x[0, 3, 39, 39] = 50.0, -60.0, float("nan")
    fn = lambda x: (x.amax((0, 2, 3)), x.amin((0, 2, 3)))
    out, report = run_compiled(fn, x)
    for got, want in zip(out, fn(x)):
        torch.testing.assert_close(got, want, equal_nan=True, rtol=0, atol=0)
    assert all(k["status"] == "ran" for k in report.kernels)


@pytest.mark.parametrize("where", [0, 17, 33, 50, 511, 530, 1100])
def test_softmax_nan_and_inf_in_each_unrolled_copy(where: int) -> None:
    """NaN, +inf and -inf in unrolled copies 0..3, the single-vector loop and the scalar tail."""
    x = torch.randn(4, 1107) * 3
    x[0, where] = float("nan")
    x[1, where] = float("inf")
    x[2, where] = -float("inf")
    out, _ = run_compiled(lambda x: torch.softmax(x, -1), x)
    torch.testing.assert_close(out, torch.softmax(x, -1), equal_nan=True)


@pytest.mark.parametrize("isa_off", [["-mno-avx512f"], ["-mno-avx512f", "-mno-avx2"]], ids=["avx2", "scalar"])
def test_wide_rows_on_each_simd_path_match_float64(isa_off: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The AVX2 (8-float blocks of 256) and portable paths over rows spanning several blocks."""
    from tilewright.targets.cpu import build, toolchain

    monkeypatch.setattr(build, "compile_flags", lambda c: toolchain.compile_flags(c) + isa_off)
    torch.manual_seed(3)
    x, w = torch.randn(5, 601) + 100.0, torch.randn(601)

    def fn(x: torch.Tensor, w: torch.Tensor) -> tuple[Any, ...]:
        return (F.layer_norm(x, (601,), w), torch.log_softmax(x, -1),
                x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w, x.amax(-1))

    out, report = run_compiled(fn, x, w)
    want = fn(x.double(), w.double())
    for got, ref in zip(out, want):
        torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=2e-5)
    assert report.kernels and all(k["status"] == "ran" for k in report.kernels)


def test_float64_variance_keeps_double_precision() -> None:
    """float64 rows with a spread of 1e-11 around 1 (the scalar path: a float shift left uncorrected
    would swamp the variance)."""
    torch.manual_seed(5)
    x = torch.randn(5, 300, dtype=torch.float64) * 1e-11 + 1.0
    fn = lambda x: (x.var(-1, unbiased=False), F.layer_norm(x, (300,)))
    out, report = run_compiled(fn, x)
    for got, want in zip(out, fn(x)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert all(k["status"] == "ran" for k in report.kernels)
