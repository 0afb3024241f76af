"""In-place writes (``aten.copy_`` of a mutated graph input) on the native CPU target: the kernel writes the
input's own memory through its strides; checked against eager on fresh copies of the inputs."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from .helpers import run_compiled

pytestmark = pytest.mark.usefixtures("cpu_target")


def _add_then_scale(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x.add_(y)
    return x * 2


def _sgd_step(p: torch.Tensor, g: torch.Tensor) -> None:
    p.add_(g, alpha=-0.1)
    g.mul_(0.9)


def _returns_the_mutated_input(x: torch.Tensor) -> torch.Tensor:
    return x.mul_(3).sigmoid_()


def _copy_from_float32(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x.copy_(y * 2 + 1)
    return y.sum(-1)


def _strided(shape: tuple[int, int]) -> torch.Tensor:
    return torch.randn(shape[1], shape[0]).t()  # a transposed destination


def _sliced(shape: tuple[int, int]) -> torch.Tensor:
    return torch.randn(shape[0], shape[1] + 5)[:, 2:2 + shape[1]]  # an offset, padded-row destination


CASES: list[tuple[str, Callable[..., Any], Callable[[], tuple[torch.Tensor, ...]]]] = [
    ("add_broadcast", _add_then_scale, lambda: (torch.randn(37, 45), torch.randn(45))),
    ("transposed_destination", _add_then_scale, lambda: (_strided((19, 23)), torch.randn(19, 23))),
    ("sliced_destination", _add_then_scale, lambda: (_sliced((6, 33)), torch.randn(33))),
    ("two_inputs_written", _sgd_step, lambda: (torch.randn(7, 41), torch.randn(7, 41))),
    ("output_is_the_input", _returns_the_mutated_input, lambda: (torch.randn(11, 35),)),
    ("float16_destination", _copy_from_float32, lambda: (torch.randn(5, 37, dtype=torch.float16), torch.randn(5, 37))),
]


@pytest.mark.parametrize("name,fn,make", CASES, ids=[c[0] for c in CASES])
def test_inplace_writes_match_eager(name: str, fn: Callable[..., Any], make: Callable[[], tuple[torch.Tensor, ...]]) -> None:
    torch.manual_seed(0)
    inputs = make()
    eager_inputs = [t.clone() for t in inputs]
    want = fn(*eager_inputs)
    strides = [t.stride() for t in inputs]
    out, report = run_compiled(fn, *inputs)
    for got, ref, stride in zip(inputs, eager_inputs, strides):
        assert got.stride() == stride  # written in place, layout kept
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    if want is not None:
        torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    assert any("aten.copy_" in op for k in report.kernels for op in k["ops"]), report.kernels
    assert all(k["status"] == "ran" for k in report.kernels)
    assert not [f for f in report.fallbacks if "copy_" in f["op"]], report.fallbacks


def test_output_aliasing_the_input_is_the_input() -> None:
    x = torch.randn(9, 20)
    expected = torch.sigmoid(x * 3)
    out, _ = run_compiled(_returns_the_mutated_input, x)
    torch.testing.assert_close(x, expected)
    out.add_(1)  # eager returns x itself: so must the compiled function
    torch.testing.assert_close(x, expected + 1)
