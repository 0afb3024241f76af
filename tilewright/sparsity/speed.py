"""Measured speedup of one layer's rewrite: the dense layer against its sparse / low-rank kernel."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .candidates import compress

__all__ = ["layer_callable", "layer_speedup", "median_time"]


def median_time(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def layer_callable(weight: torch.Tensor, method: str, params: dict[str, Any], bias: torch.Tensor | None = None
                   ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> y`` of a linear layer rewritten by ``method`` (what the compiled graph's op does)."""
    from . import ops  # noqa: F401  (registers the ops)

    n = weight.shape[0]
    if method == "exact":
        return lambda x: F.linear(x, weight, bias)
    packed = compress(weight, method, params)
    if method == "block_sparse":
        bn, bk = packed["block"]
        return lambda x: torch.ops.tilewright.bsr_linear(x, packed["values"], packed["col_idx"], packed["row_ptr"],
                                                         bias, n, bn, bk)
    if method == "2:4":
        return lambda x: torch.ops.tilewright.nm_linear(x, packed["values"], packed["meta"], bias, n)
    if method == "low_rank":
        u, v = packed["u"], packed["v"]
        return lambda x: F.linear(F.linear(x, v), u, bias)
    raise ValueError(f"unknown method {method!r}")


def layer_speedup(layer: Any, method: str, params: dict[str, Any], repeat: int = 5) -> float | None:
    """Dense ``F.linear`` time over the rewritten layer's time at the calibration row count (linear only)."""
    if layer.kind != "linear":
        return None
    w = layer.weight.detach()
    x = torch.randn(max(1, layer.tokens), w.shape[1], dtype=w.dtype)
    dense = layer_callable(w, "exact", {})
    sparse = layer_callable(w, method, params)
    with torch.no_grad():
        td = median_time(lambda: dense(x), repeat)
        ts = median_time(lambda: sparse(x), repeat)
    return td / ts if ts > 0 else None
