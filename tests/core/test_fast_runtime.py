"""The runtime's fast path with Triton kernels (in the interpreter) and the generated input guard.

The CPU target's fast path (C launches on data pointers, reused buffers, fallbacks) is tested in
tests/cpu/test_fast_runtime.py; here the Triton target's prebound launcher runs the same graph
as the general interpreter, and the guard agrees with the frontend's signature.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.testing import assert_close

import tilewright
from tilewright.frontend.backend import _signature
from tilewright.runtime import fastpath
from tilewright.runtime.graph import CompiledGraph
from tilewright.runtime.guard import make_guard


def _fn(x: torch.Tensor, y: torch.Tensor) -> Any:
    a = (x * 2).t() + y
    return a, torch.cumsum(a, 1)[1:], a.sum(0)


def test_triton_kernels_run_through_their_prebound_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tilewright.config, "target", "triton")
    x, y = torch.randn(5, 3), torch.randn(3, 5)
    run = tilewright.compile_graph(make_fx(_fn)(x, y), [x, y])
    first = run(x, y)
    graph = next(iter(run.lazy.cache.values())).__self__
    assert isinstance(graph, CompiledGraph) and graph.fast is not None, graph._fast_unsupported
    assert "F" in graph.fast.source and ".launch(" not in graph.fast.source, graph.fast.source
    x2, y2 = torch.randn(5, 3), torch.randn(3, 5)
    fast = run(x2, y2)
    fastpath.settings.enabled = False
    try:
        general = run(x2, y2)
    finally:
        fastpath.settings.enabled = True
    want = _fn(x2.double(), y2.double())
    for f, g, w in zip(fast, general, want):
        assert_close(f, g)
        assert_close(f.double(), w, rtol=1e-5, atol=1e-5)
    assert_close(first[0].double(), _fn(x.double(), y.double())[0], rtol=1e-5, atol=1e-5)


def _variants(inputs: list[Any]) -> list[tuple[list[Any], bool]]:
    """Calls to check against ``inputs``' guard, with whether it must accept them."""
    base = torch.randn(40)
    return [
        ([torch.randn(4, 4), *inputs[1:]], True),                      # same layout, other values
        ([torch.randn(5, 4), *inputs[1:]], False),                     # shape
        ([torch.randn(4, 4).t(), *inputs[1:]], False),                 # strides
        ([torch.randn(4, 4, dtype=torch.float64), *inputs[1:]], False),  # dtype
        ([base[1:17].view(4, 4), *inputs[1:]], False),                 # storage offset
        ([inputs[0], 4, *inputs[2:]], False),                          # scalar value
        ([inputs[0], 3.0, *inputs[2:]], False),                        # scalar type (stricter than the signature)
        ([*inputs[:2], None, inputs[3]], False),                       # tensor -> None
        (inputs[:3], False),                                           # arity
    ]


def test_the_guard_is_never_looser_than_the_signature() -> None:
    inputs: list[Any] = [torch.randn(4, 4), 3, torch.randn(2), torch.ones(3, dtype=torch.int64)]
    guard = make_guard(inputs)
    assert guard is not None and guard(inputs)
    for other, accepted in _variants(inputs):
        assert guard(other) == accepted, [type(o) for o in other]
        if accepted:
            assert _signature(other) == _signature(inputs)
    assert make_guard([torch.randn(2), object()]) is None
