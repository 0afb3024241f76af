"""Shared helpers of the CPU-target tests."""
from __future__ import annotations

from typing import Any, Callable

import torch

from tilewright.report import collect


def run_compiled(fn: Callable[..., Any], *inputs: torch.Tensor) -> tuple[Any, Any]:
    """``fn`` compiled with tilewright and run once on ``inputs``: (output, explain report)."""
    with collect() as report:
        out = torch.compile(fn, backend="tilewright")(*inputs)
    torch._dynamo.reset()
    return out, report
