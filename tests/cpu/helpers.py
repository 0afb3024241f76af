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


def assert_configs_match(kernel: Any, configs: list[dict[str, Any]], tensors: list[torch.Tensor], want: torch.Tensor,
                         rtol: float, atol: float) -> None:
    """Run ``kernel`` under each config (its output poisoned with NaN first, so a config that writes
    nothing fails) and compare the output with the float64 ``want``; the message names the config."""
    for config in configs:
        tensors[-1].fill_(float("nan"))
        kernel.runner(config)(tensors)
        torch.testing.assert_close(tensors[-1].double(), want, rtol=rtol, atol=atol,
                                   msg=lambda m, c=config: f"{c}: {m}")
