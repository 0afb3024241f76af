"""Calibration of sparse attention: (params, density, error) per candidate setting, and input capture.

:func:`calibrate_attention` runs each candidate setting of a method on calibration q, k, v and
measures its density (kept over visible blocks) and its error against exact attention (relative
L2 of the outputs), so a plan's gate can keep the sparsest setting within its budget
(:func:`sparsest_within`). :func:`capture_attention_inputs` records the q, k, v of every
``scaled_dot_product_attention`` call an eager model makes, in call order (the order the attention
rewrite numbers the sites).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor

from .op import block_sparse_attention, build_index, method_params

log = logging.getLogger(__name__)

#: default candidate grids (from the sparsest up)
#: (the dense ends, window 32 / threshold 0.995 / 32 lines, are for small budgets at a few
#: thousand tokens; the gate drops settings not expected to pay)
GRIDS: dict[str, list[dict[str, Any]]] = {
    "sinks_window": [{"sinks": 1, "window": w} for w in (1, 2, 4, 8, 16, 24, 32)],
    "vertical_slash": [{"vertical": [0], "slash": list(range(w))} for w in (1, 2, 4, 8, 16)],
    "xattention": [{"threshold": t, "stride": 8} for t in (0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995)],
    "minference": [{"vertical": n, "slash": n} for n in (2, 4, 8, 16, 24, 32)],
}


def relative_error(out: Tensor, exact: Tensor) -> float:
    """||out - exact|| / ||exact|| in float64."""
    diff = (out.double() - exact.double()).norm()
    ref = exact.double().norm()
    return float(diff / ref) if float(ref) > 0 else float(diff)


def _exact(q: Tensor, k: Tensor, v: Tensor, scale: float | None, causal: bool, causal_offset: int,
           backend: str) -> Tensor:
    if backend in ("cpu", "auto") and q.device.type == "cpu":
        from ...targets.cpu.attention import cpu_attention_forward

        return cpu_attention_forward(q, k, v, scale=scale, causal=causal, causal_offset=causal_offset)[0]
    from ...ops.attention import attention_reference

    return attention_reference(q, k, v, None, None, scale, causal, causal_offset)[0]


def calibrate_attention(q: Tensor, k: Tensor, v: Tensor, method: str,
                        candidates: Sequence[dict[str, Any]] | None = None, scale: float | None = None,
                        causal: bool = False, causal_offset: int = 0, block: int | None = None,
                        backend: str = "auto") -> list[tuple[dict[str, Any], float, float]]:
    """(params, density, error) for each candidate setting of ``method``, sparsest first.

    ``candidates`` default to :data:`GRIDS`; ``block`` (when given) overrides each candidate's.
    ``backend``: the kernels that run each setting (``cpu``, ``triton``, ``reference``, ``auto``).
    """
    grid = list(candidates) if candidates is not None else GRIDS.get(method)
    if grid is None:
        raise ValueError(f"no candidate grid for method {method!r}; pass candidates")
    exact = _exact(q, k, v, scale, causal, causal_offset, backend)
    results: list[tuple[dict[str, Any], float, float]] = []
    for cand in grid:
        params = method_params(method, dict(cand, **({"block": block} if block else {})))
        index = build_index(method, params, q, k, scale, causal, causal_offset,
                            backend="cpu" if backend in ("cpu", "auto") and q.device.type == "cpu" else "torch")
        out = block_sparse_attention(q, k, v, index, scale, causal, causal_offset, backend=backend)[0]
        results.append((params, index.density(), relative_error(out, exact)))
    results.sort(key=lambda r: (r[1], r[2]))
    return results


def sparsest_within(results: Sequence[tuple[dict[str, Any], float, float]], budget: float
                    ) -> tuple[dict[str, Any], float, float] | None:
    """The lowest-density result whose error is at most ``budget`` (None: none is)."""
    ok = [r for r in results if r[2] <= budget]
    return min(ok, key=lambda r: (r[1], r[2])) if ok else None


@contextlib.contextmanager
def capture_attention_inputs(limit: int | None = None) -> Iterator[list[dict[str, Any]]]:
    """Record every eager ``F.scaled_dot_product_attention`` call's inputs while the block runs.

    Yields a list filled with ``{"q", "k", "v", "causal", "scale", "has_mask", "dropout_p"}``
    (detached tensors), one per call in order (at most ``limit``).
    """
    import torch.nn.functional as F

    calls: list[dict[str, Any]] = []
    original = F.scaled_dot_product_attention

    def recording(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                  dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                  **kwargs: Any) -> Tensor:
        if limit is None or len(calls) < limit:
            calls.append({"q": query.detach(), "k": key.detach(), "v": value.detach(), "causal": bool(is_causal),
                          "scale": scale, "has_mask": attn_mask is not None, "dropout_p": float(dropout_p)})
        return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                        scale=scale, **kwargs)

    F.scaled_dot_product_attention = recording
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = original
