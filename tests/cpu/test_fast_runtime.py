"""The runtime's fast path (runtime/fastpath.py) against its general interpreter, on the CPU target.

The first call of a specialisation runs the plan step by step; later calls run the generated
straight-line function. Both must give the same results on graphs with views, extern calls,
in-place updates, several outputs and outputs aliasing inputs or views of intermediates; reused
buffers must never change an output already returned; a failing kernel falls back (or raises in
strict mode) on the fast path as on the general one.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.testing import assert_close

import tilewright
from tilewright.errors import StrictModeError
from tilewright.report import collect
from tilewright.runtime import fastpath
from tilewright.runtime.graph import CompiledGraph

pytestmark = pytest.mark.usefixtures("cpu_target")


def _mixed(x: torch.Tensor, y: torch.Tensor) -> Any:
    a = (x * 1.5).t() + y                 # kernel reading a view of a kernel output
    b = torch.cumsum(a, 0)                # extern call
    c = (b.view(-1)[1:] * 2).sigmoid()    # kernel over a view of an extern result
    d = a[1] - 3                          # kernel over a view of an intermediate
    return a, b.t(), c, d, x, y[0]        # outputs: views, an input, a view of an input


def _compiled(fn: Callable[..., Any], *inputs: torch.Tensor) -> tuple[Any, CompiledGraph]:
    run = tilewright.compile_graph(make_fx(fn)(*inputs), list(inputs))
    run(*inputs)
    graph = next(iter(run.lazy.cache.values())).__self__
    assert isinstance(graph, CompiledGraph)
    return run, graph


def _f64(fn: Callable[..., Any], *inputs: torch.Tensor) -> Any:
    return fn(*(t.double() for t in inputs))


def _assert_outputs(got: Any, want: Any) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.stride() == w.stride()
        assert_close(g.double(), w.double(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def mixed() -> tuple[Any, CompiledGraph]:
    import tilewright as tw

    saved = tw.config.target
    tw.config.target = "cpu"
    try:
        return _compiled(_mixed, torch.randn(5, 3), torch.randn(3, 5))
    finally:
        tw.config.target = saved


def test_fast_path_matches_the_general_path(mixed: tuple[Any, CompiledGraph]) -> None:
    run, graph = mixed
    assert graph.fast is not None, graph._fast_unsupported
    x, y = torch.randn(5, 3), torch.randn(3, 5)
    fast = run(x, y)
    fastpath.settings.enabled = False
    try:
        general = run(x, y)
    finally:
        fastpath.settings.enabled = True
    _assert_outputs(fast, general)
    _assert_outputs(fast, _f64(_mixed, x, y))
    assert fast[4] is x and fast[5].data_ptr() == y.data_ptr()


def test_outputs_survive_later_calls(mixed: tuple[Any, CompiledGraph]) -> None:
    run, graph = mixed
    x1, y1 = torch.randn(5, 3), torch.randn(3, 5)
    first = run(x1, y1)
    kept = [t.clone() for t in first]
    for _ in range(3):
        run(torch.randn(5, 3), torch.randn(3, 5))
    _assert_outputs(first, kept)
    _assert_outputs(first, _f64(_mixed, x1, y1))
    assert graph.fast is not None and graph.fast.persistent_bytes > 0, "intermediates live in reused slots"


def test_the_general_path_runs_only_the_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = CompiledGraph._run_plan
    monkeypatch.setattr(CompiledGraph, "_run_plan", lambda self, *a: calls.append(1) or original(self, *a))
    fn = lambda x: ((x * 2).t() + 1).exp()
    x = torch.randn(4, 7)
    run, _graph = _compiled(fn, x)
    for _ in range(3):
        assert_close(run(x), fn(x))
    assert len(calls) == 1
    fastpath.settings.enabled = False
    try:
        assert_close(run(x), fn(x))
    finally:
        fastpath.settings.enabled = True
    assert len(calls) == 2, "the switch sends calls to the general path"


def test_boxed_calls_release_the_input_list() -> None:
    fn = lambda x, y: (x.sin() * 2).sum(0) + y
    x, y = torch.randn(6, 5), torch.randn(5)
    _run, graph = _compiled(fn, x, y)
    args = [x, y]
    out = graph.run_boxed(args)
    assert args == [], "the fast path drops the list's references once an input is dead"
    assert_close(out, fn(x, y))


def test_in_place_updates_apply_once_per_call() -> None:
    def fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x.mul_(2).add_(y)
        return x.t() * 3

    x, y = torch.randn(4, 6), torch.randn(4, 6)
    xe = x.clone()
    compiled = torch.compile(fn, backend="tilewright")
    for _ in range(3):
        out = compiled(x, y)
        want = fn(xe, y)
        assert_close(x, xe)
        assert_close(out, want)


def test_training_matches_eager_over_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = CompiledGraph._run_plan
    monkeypatch.setattr(CompiledGraph, "_run_plan", lambda self, *a: calls.append(1) or original(self, *a))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    twin.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="tilewright")
    for _ in range(3):
        x = torch.randn(5, 7)
        loss = (compiled(x) ** 2).mean()
        want = (twin(x) ** 2).mean()
        loss.backward()
        want.backward()
        assert_close(loss, want, rtol=1e-5, atol=1e-6)
        for p, q in zip(model.parameters(), twin.parameters()):
            assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2, "forward and backward ran the general path once each"


def _break_first_kernel(graph: CompiledGraph) -> Any:
    """Rebuild the fast path with the first kernel's C function replaced by one that raises."""
    kernel = next(s.kernel for s in graph.plan.steps if hasattr(s, "kernel") and s.kernel is not None)

    def failing(*args: Any) -> None:
        raise RuntimeError("injected launch failure")

    kernel.function = failing
    graph.fast = fastpath.build_fast_path(graph.graph, graph.plan, graph)
    return kernel


@pytest.mark.fallback
def test_a_failing_launch_on_the_fast_path_falls_back() -> None:
    fn = lambda x: (x * 2).t().contiguous().sigmoid() - 1
    x = torch.randn(6, 3)
    with collect() as report:
        run, graph = _compiled(fn, x)
        kernel = _break_first_kernel(graph)
        assert_close(run(x), fn(x))
        assert kernel.broken is not None and "injected" in kernel.broken
        assert_close(run(x), fn(x))  # the broken kernel's reference from now on
    entry = next(k for k in report.kernels if k["name"] == kernel.name)
    assert entry["status"] == "fell back"
    assert any("injected launch failure" in f["reason"] for f in report.fallbacks)


def test_a_failing_launch_on_the_fast_path_raises_in_strict_mode() -> None:
    fn = lambda x: (x * 2).t().contiguous().sigmoid() - 1
    x = torch.randn(6, 3)
    run, graph = _compiled(fn, x)
    _break_first_kernel(graph)
    with pytest.raises(StrictModeError, match="injected launch failure"):
        run(x)


def test_a_changed_config_takes_the_slow_launch_then_rebuilds() -> None:
    fn = lambda x: (x + 1).t() * 2
    x = torch.randn(5, 6)
    run, graph = _compiled(fn, x)
    run(x)
    kernel = graph.fast.kernels[0]  # type: ignore[union-attr]
    kernel.config = dict(kernel.config)
    assert_close(run(x), fn(x))
    assert graph.fast is None, "a config the fast path was not built for drops it"
    assert_close(run(x), fn(x))
    assert graph.fast is not None and graph.fast.kernels[0].config is kernel.config


def test_verify_runs_before_the_fast_path() -> None:
    tilewright.config.verify = True
    fn = lambda x: torch.cumsum(x.exp(), 1).t() + 1
    x = torch.randn(3, 4)
    run, graph = _compiled(fn, x)
    assert graph.fast is not None and graph.fast.verified
    assert all(k.verified for k in graph.fast.kernels)
    assert_close(run(x), fn(x))
