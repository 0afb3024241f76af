"""The native CPU target's pointwise kernels against torch, in strict mode (a fallback fails the test)."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright.report import collect

from .helpers import run_compiled

pytestmark = pytest.mark.usefixtures("cpu_target")


def _ran_in_kernels(report: Any) -> None:
    assert report.kernels, "no kernel was generated"
    assert all(k["status"] == "ran" for k in report.kernels), report.kernels
    assert all(g.mode == "cpu" for g in report.graphs)


CASES: list[tuple[str, Callable[..., Any], Callable[..., tuple[torch.Tensor, ...]]]] = [
    ("chain", lambda x, y: torch.relu(x * 2.5 + y).sigmoid() - x.exp() / (1 + y.abs()),
     lambda: (torch.randn(37, 53), torch.randn(53))),
    ("broadcast_3d", lambda x, y, z: (x - y) * z + torch.tanh(x),
     lambda: (torch.randn(3, 1, 17), torch.randn(5, 1), torch.randn(3, 5, 17))),
    ("transposed_input", lambda x, y: torch.erf(x.t()) * y + 1,
     lambda: (torch.randn(19, 23), torch.randn(19))),
    ("activations", lambda x: F.gelu(x) + F.gelu(x, approximate="tanh") + F.silu(x) + F.leaky_relu(x, 0.2)
     + F.hardtanh(x) + torch.clamp(x, -0.3, 0.7),
     lambda: (torch.randn(7, 31) * 3,)),
    ("math", lambda x: torch.log1p(x.abs()) + torch.expm1(x * 0.1) + torch.rsqrt(x.abs() + 1) + torch.sqrt(x.abs())
     + x.pow(2) + x.pow(3) + torch.sin(x) * torch.cos(x) + torch.reciprocal(x.abs() + 2),
     lambda: (torch.randn(129),)),
    ("rounding", lambda x: torch.round(x) + torch.floor(x) * 2 + torch.ceil(x) * 3 + torch.trunc(x) * 5 + torch.sign(x),
     lambda: (torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.3, 2.7, 0.0, -0.0, 3.49]),)),
    ("compare_where", lambda x, y: torch.where(x > y, x, y * 2) + (x <= 0).float() + x.masked_fill(y < 0, -1.0)
     + (x > -0.5).float() + (y != 1).float(),
     lambda: (torch.randn(11, 13), torch.randn(11, 13))),
    ("float64", lambda x, y: (x * y + 1).exp() / (1 + x * x), lambda: (torch.randn(9, 10, dtype=torch.float64),
                                                                       torch.randn(10, dtype=torch.float64))),
    ("int64", lambda a, b: (a * 3 + b) // 4 - (a % 1) + torch.maximum(a, b) + (a > 2.5).long() + (a >= -3).long(),
     lambda: (torch.randint(-50, 50, (6, 7)), torch.randint(-50, 50, (7,)))),
    ("bool_logic", lambda a, b: torch.logical_and(a, ~b) | torch.logical_not(a),
     lambda: (torch.rand(5, 9) > 0.5, torch.rand(5, 9) > 0.5)),
    ("cast", lambda x: (x * 10).to(torch.int64).to(torch.float32) + x.to(torch.float64).float(),
     lambda: (torch.randn(8, 3),)),
    ("scalar_tensor", lambda x: x * 3 - 1, lambda: (torch.randn(()),)),
    ("large_parallel", lambda x, y: torch.sigmoid(x) * y + x, lambda: (torch.randn(301, 257), torch.randn(301, 257))),
]


@pytest.mark.parametrize("name,fn,make", CASES, ids=[c[0] for c in CASES])
def test_pointwise_matches_torch(name: str, fn: Callable[..., Any], make: Callable[[], tuple[torch.Tensor, ...]]) -> None:
    torch.manual_seed(0)
    inputs = make()
    out, report = run_compiled(fn, *inputs)
    want = fn(*inputs)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5, equal_nan=True)
    _ran_in_kernels(report)


def test_nan_and_inf_propagate_like_torch() -> None:
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 2.0])
    y = torch.tensor([1.0, float("nan"), 0.0, float("nan"), -2.0, 3.0])
    fn = lambda x, y: torch.stack([torch.relu(x), torch.maximum(x, y), torch.minimum(x, y), x.clamp(-1, 1),
                                   torch.isnan(x + y).float(), torch.sigmoid(x), torch.exp(x)])
    out, report = run_compiled(fn, x, y)
    torch.testing.assert_close(out, fn(x, y), equal_nan=True)
    assert any(k["status"] == "ran" for k in report.kernels)


def test_outputs_keep_their_strides_and_intermediates_stay_in_registers() -> None:
    x = torch.randn(12, 20)
    fn = lambda x: ((x + 1).t() * 2, (x * x).cumsum(0))
    (a, s), report = run_compiled(fn, x)
    wa, ws = fn(x)
    torch.testing.assert_close(a, wa)
    torch.testing.assert_close(s, ws)
    assert any("cumsum" in f["op"] for f in report.fallbacks), "unsupported ops are shown as ATen calls"


def test_training_step_on_the_cpu_target() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(13, 21), torch.nn.GELU(), torch.nn.Linear(21, 5), torch.nn.Tanh())
    x = torch.randn(9, 13)
    ref = [p.detach().clone().double().requires_grad_() for p in model.parameters()]
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report:
        loss = compiled(x).square().mean()
        loss.backward()
    torch._dynamo.reset()

    w1, b1, w2, b2 = ref
    h = F.gelu(x.double() @ w1.t() + b1)
    want = torch.tanh(h @ w2.t() + b2).square().mean()
    want.backward()
    assert math.isclose(loss.item(), want.item(), rel_tol=1e-5)
    for p, r in zip(model.parameters(), ref):
        torch.testing.assert_close(p.grad.double(), r.grad, rtol=1e-4, atol=1e-6)
    assert {g.name.split("_")[-1] for g in report.graphs} == {"forward", "backward"}
    _ran_in_kernels(report)


def test_library_is_cached_across_compiles() -> None:
    from tilewright.targets.cpu import build

    fn = lambda x: torch.exp(x) * 3 + x
    x = torch.randn(17, 4)
    run_compiled(fn, x)
    calls: list[Any] = []
    original = build._run_compiler

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return original(*args, **kwargs)

    build._run_compiler = counting  # type: ignore[assignment]
    try:
        out, report = run_compiled(fn, x)
    finally:
        build._run_compiler = original  # type: ignore[assignment]
    torch.testing.assert_close(out, fn(x))
    assert calls == [], "the second compile of the same graph reuses the built library"
    _ran_in_kernels(report)


def test_unknown_target_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from tilewright.targets import target_for

    monkeypatch.setattr(tilewright.config, "target", "tpu")
    with pytest.raises(ValueError, match="TILEWRIGHT_TARGET must be one of auto, triton, cpu"):
        target_for("cpu")


@pytest.mark.parametrize("isa_off", [[], ["-mno-avx512f"], ["-mno-avx512f", "-mno-avx2"]], ids=["native", "avx2", "scalar"])
def test_explicit_simd_paths_keep_nan_inf_semantics(isa_off: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole vectors (AVX-512 or AVX2 ``tw_vf``) and the scalar tail: specials where each lands."""
    from tilewright.targets.cpu import build, toolchain

    monkeypatch.setattr(build, "compile_flags", lambda c: toolchain.compile_flags(c) + isa_off)
    torch.manual_seed(3)
    x, y = torch.randn(3, 45) * 4, torch.randn(45)
    x[0, 2], x[0, 44], x[1, 17], x[2, 40] = float("nan"), float("nan"), float("inf"), -float("inf")
    y[5], y[43] = float("nan"), -float("inf")

    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (torch.maximum(x, y) + torch.minimum(y, x) * torch.sigmoid(x) - torch.exp(x * 0.5)
                + torch.clamp(x, -1.0, 2.0) * torch.relu(y) + torch.rsqrt(x.abs() + 1) - x.abs() / (1 + y * y))

    out, report = run_compiled(fn, x, y)
    want = fn(x.double(), y.double())
    torch.testing.assert_close(out.double(), want, rtol=2e-6, atol=1e-6, equal_nan=True)
    _ran_in_kernels(report)
