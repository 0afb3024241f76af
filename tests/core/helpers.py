"""Shared helpers for core tests: compile with tilewright, compare with eager, read the report."""
from __future__ import annotations

from typing import Any, Callable

import torch

from tilewright.report import Report, collect


def compile_and_run(fn: Callable[..., Any], *inputs: Any) -> tuple[Any, Report]:
    """Run ``fn`` compiled by tilewright on ``inputs``; returns (outputs, report)."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="tilewright")
    with collect() as report:
        out = compiled(*inputs)
    return out, report


def assert_close(got: Any, want: Any, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """Compare nested outputs (tensors exactly in dtype, shape and value within tolerance)."""
    if isinstance(want, (tuple, list)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_close(g, w, rtol, atol)
        return
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if want.is_floating_point():
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
    else:
        assert torch.equal(got, want), (got, want)


def kernel_ops(report: Report) -> list[str]:
    """Every op that ran inside a generated kernel."""
    return [op for k in report.kernels for op in k["ops"]]
