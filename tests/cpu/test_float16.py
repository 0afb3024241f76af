"""float16 on the native CPU target: stored as half, computed in float32, rounded to half after every op
(as eager does); conversions through F16C where the compiler targets it, else a portable bit-exact path."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from .helpers import run_compiled

F16 = torch.float16

pytestmark = pytest.mark.usefixtures("cpu_target")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def _floats_around_half_range() -> torch.Tensor:
    """float32 values that exercise half rounding: ties, subnormals, overflow, specials."""
    g = torch.Generator().manual_seed(0)
    every_half = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(F16).float()
    finite = every_half[torch.isfinite(every_half)]
    ties = (finite[:-1] + finite[1:]) / 2  # exactly between two halves (where representable)
    scaled = torch.randn(20000, generator=g) * torch.logspace(-9, 5, 20000)
    special = torch.tensor([65504.0, 65519.0, 65520.0, 1e6, -1e6, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0001, 2.0**-26,
                            6.1e-5, 5.96e-8, 0.0, -0.0, float("inf"), -float("inf"), float("nan")])
    return torch.cat([finite, ties, scaled, special])


@pytest.fixture(params=[[], ["-mno-f16c"]], ids=["f16c", "portable"])
def conversions(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Build with the machine's ISA, or without F16C (the portable conversions)."""
    from tilewright.targets.cpu import build, toolchain

    off = list(request.param) + (["-mno-avx512f"] if request.param else [])  # AVX-512 implies F16C
    monkeypatch.setattr(build, "compile_flags", lambda c: toolchain.compile_flags(c) + off)


@pytest.mark.usefixtures("conversions")
def test_conversions_are_bit_exact_both_ways() -> None:
    x = _floats_around_half_range()
    out, _ = run_compiled(lambda x: x.to(F16), x)
    want = x.to(F16)
    assert torch.equal(_bits(out)[~want.isnan()], _bits(want)[~want.isnan()])
    assert torch.equal(out.isnan(), want.isnan())
    h = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(F16)
    back, _ = run_compiled(lambda h: h.float() * 1, h)
    ref = h.float()
    assert torch.equal(back.isnan(), ref.isnan())
    assert torch.equal(back[~ref.isnan()].view(torch.int32), ref[~ref.isnan()].view(torch.int32))


@pytest.mark.parametrize("name,fn,make,bit_exact", [
    ("pointwise", lambda x, y: torch.relu(x * 2 + y) - x * y + y.abs(),
     lambda: (torch.randn(37, 53, dtype=F16), torch.randn(53, dtype=F16)), True),
    ("to_float", lambda x: x.float() * 3 + 1, lambda: (torch.randn(9, 41, dtype=F16),), True),
    ("sum", lambda x: x.sum(-1), lambda: (torch.randn(9, 40, dtype=F16),), False),
    ("softmax", lambda x: torch.softmax(x, -1), lambda: (torch.randn(7, 33, dtype=F16) * 3,), False),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, (33,), w, b),
     lambda: (torch.randn(5, 33, dtype=F16), torch.randn(33, dtype=F16), torch.randn(33, dtype=F16)), False),
    ("gelu_strided", lambda x: F.gelu(x.t()) * 2, lambda: (torch.randn(19, 23, dtype=F16),), False),
    ("specials", lambda x: x.exp() + x.amax(-1, keepdim=True),
     lambda: (torch.tensor([[1.0, float("nan"), float("inf"), -float("inf"), 3.0]], dtype=F16),), False),
], ids=lambda v: v if isinstance(v, str) else "")
def test_float16_kernels_match_float64(name: str, fn: Callable[..., Any], make: Callable[[], tuple[torch.Tensor, ...]],
                                       bit_exact: bool) -> None:
    torch.manual_seed(0)
    inputs = make()
    out, report = run_compiled(fn, *inputs)
    want = fn(*inputs)
    assert out.dtype == want.dtype
    if bit_exact:  # the same per-op rounding to half as eager, no transcendental functions
        assert torch.equal(out, want)
    ref = fn(*[t.double() for t in inputs]).double()
    # half keeps 11 bits: within a few half ulps of the float64 result, like eager
    torch.testing.assert_close(out.double(), ref, rtol=4e-3, atol=4e-3, equal_nan=True)
    assert report.kernels and all(k["status"] == "ran" for k in report.kernels)
