"""Parameter-only subgraphs (passes/hoist.py, runtime/hoisted.py): computed once, reused until a
parameter or buffer they read changes.

An eval ResNet-style model's batch-norm fold (per-channel scales and shifts from the BN weight,
bias and running statistics) is hoisted: later calls launch fewer kernels, and every way of
changing a parameter (in place, ``.data =``, ``load_state_dict``, a running-stat update, an
optimizer step) gives eager's new result. Training graphs hoist nothing and their gradients
are eager's. Runs on the native CPU target and in Triton's interpreter.
"""
from __future__ import annotations

import copy
import gc
import weakref
from typing import Any

import pytest
import torch
import torch.nn as nn

import tilewright
from tilewright.passes import hoist
from tilewright.report import Report, collect
from tilewright.runtime.hoisted import HoistedGraph
from tilewright.runtime.plan import KernelStep

TARGETS = [pytest.param("cpu", marks=pytest.mark.native_cpu), "interpreter"]


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Compile for the native CPU target or for Triton's interpreter."""
    monkeypatch.setattr(tilewright.config, "target", "cpu" if request.param == "cpu" else "triton")
    torch._dynamo.reset()
    return str(request.param)


@pytest.fixture
def graphs(monkeypatch: pytest.MonkeyPatch) -> list[HoistedGraph]:
    """Every HoistedGraph built while the test runs."""
    made: list[HoistedGraph] = []
    init = HoistedGraph.__init__

    def record(self: HoistedGraph, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(HoistedGraph, "__init__", record)
    return made


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


def resnet(seed: int = 0) -> nn.Module:
    """A small eval ResNet: stem conv+BN+ReLU and two residual blocks, non-trivial BN statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), Block(6), Block(6)).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 2), m.bias.uniform_(-1, 1)
    return model


def _check(compiled: Any, model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        got = compiled(x)
        want = copy.deepcopy(model).double()(x.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def _hoisted_ops(report: Report) -> set[str]:
    """The ops (``aten.name``, no overload) inside hoisted kernels."""
    return {".".join(op.split(".")[:2]) for k in report.kernels if k.get("hoisted") for op in k["ops"]}


def _launches(graph: HoistedGraph, refreshed: bool) -> int:
    """Kernels one call launches: the main plan's, plus the hoisted part's when it ran."""
    main = sum(isinstance(s, KernelStep) for s in graph.main.plan.steps)
    return main + (sum(isinstance(s, KernelStep) for s in graph.hoisted.plan.steps) if refreshed else 0)


def test_resnet_batch_norm_fold_is_hoisted(target: str, graphs: list[HoistedGraph]) -> None:
    model, x = resnet(), torch.randn(2, 3, 11, 13)
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report, torch.no_grad():
        for _ in range(3):
            _check(compiled, model, x)
    (graph,) = graphs
    hoisted = report.graphs[0].hoisted
    assert hoisted is not None and hoisted["recomputed"] == 1  # three calls, one computation
    # every BN's weight, bias, mean and variance is read by the hoisted part (none by the main part)
    assert hoisted["parameters"] >= 20 and hoisted["kernels"] >= 5
    assert hoisted["cached_bytes"] <= 4 * 6 * 5 * 2  # a scale and a shift per channel and BN
    assert _launches(graph, refreshed=False) <= _launches(graph, refreshed=True) - hoisted["kernels"]
    assert {"aten.sqrt", "aten.reciprocal"} <= _hoisted_ops(report) or "aten.rsqrt" in _hoisted_ops(report)
    assert "hoisted:" in str(report) and "5 batch norm" in str(report)


def test_without_hoisting_every_call_launches_the_fold(target: str, monkeypatch: pytest.MonkeyPatch,
                                                         graphs: list[HoistedGraph]) -> None:
    monkeypatch.setattr(hoist.settings, "enabled", False)
    model, x = resnet(), torch.randn(2, 3, 11, 13)
    with collect() as report, torch.no_grad():
        _check(torch.compile(model, backend="tilewright"), model, x)
    assert not graphs and report.graphs[0].hoisted is None
    assert len(report.kernels) > 5  # the fold's kernels run on every call


def _edits(model: nn.Module) -> list[tuple[str, Any]]:
    bn = model[3].b1

    def in_place() -> None:
        with torch.no_grad():
            bn.weight.mul_(2)

    def replace_data() -> None:
        bn.bias.data = torch.randn(6)

    def load_state() -> None:
        model.load_state_dict(resnet(seed=1).state_dict())

    def running_stats() -> None:  # an eager train-mode step updates the running statistics in place
        # (inside the ATen op: their version counters do not move, num_batches_tracked's does)
        model.train()
        with torch.no_grad():
            model(torch.randn(4, 3, 11, 13) * 3 + 1)
        model.eval()

    def buffer_in_place() -> None:
        with torch.no_grad():
            model[1].running_var.add_(1.5)

    return [("in_place", in_place), ("replace_data", replace_data), ("load_state_dict", load_state),
            ("running_stats", running_stats), ("buffer_in_place", buffer_in_place)]


@pytest.mark.parametrize("edit", ["in_place", "replace_data", "load_state_dict", "running_stats", "buffer_in_place"])
def test_a_changed_parameter_recomputes(edit: str, graphs: list[HoistedGraph]) -> None:
    tilewright.config.target = "cpu" if tilewright.targets.native_cpu_problem() is None else "triton"
    model, x = resnet(), torch.randn(2, 3, 11, 13)
    compiled = torch.compile(model, backend="tilewright")
    with torch.no_grad():
        before = compiled(x).clone()
        dict(_edits(model))[edit]()
        _check(compiled, model, x)
        assert not torch.allclose(compiled(x), before)
    graph = next(g for g in graphs if g.hoisted is not None)
    assert graph.stats["recomputed"] == 2  # once before the edit, once after; not on every call


def _optimizer_steps_reach_inference(model: nn.Module, x: torch.Tensor) -> None:
    compiled = torch.compile(model, backend="tilewright")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.no_grad():
        compiled(x)
    model.train()
    compiled(x).square().sum().backward()
    opt.step()
    model.eval()
    _check(compiled, model, x)


def test_training_graphs_hoist_nothing_and_gradients_are_eagers(target: str) -> None:
    model, x = resnet(), torch.randn(2, 3, 11, 13)
    reference = copy.deepcopy(model).double().train()
    model.train()
    with collect() as report:
        torch.compile(model, backend="tilewright")(x).square().sum().backward()
    reference(x.double()).square().sum().backward()
    assert report.graphs and all(g.hoisted is None for g in report.graphs)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad.double(), q.grad, rtol=1e-3, atol=1e-3, msg=name)
    model.zero_grad()
    _optimizer_steps_reach_inference(model.eval(), x)


class Rotary(nn.Module):
    """LLaMA-style attention input: q, k projections rotated by cos/sin tables from ``inv_freq``."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        self.q, self.k = nn.Linear(dim * heads, dim * heads), nn.Linear(dim * heads, dim * heads)
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)), persistent=False)

    @staticmethod
    def rotate(x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        return torch.cat((-b, a), dim=-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, _ = x.shape
        t = torch.arange(s, dtype=torch.float32)
        emb = torch.cat([torch.outer(t, self.inv_freq)] * 2, dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        q = self.q(x).view(b, s, self.heads, self.dim).transpose(1, 2)
        k = self.k(x).view(b, s, self.heads, self.dim).transpose(1, 2)
        return q * cos + self.rotate(q) * sin, k * cos + self.rotate(k) * sin


def test_rotary_tables_are_hoisted(target: str, graphs: list[HoistedGraph]) -> None:
    torch.manual_seed(0)
    model, x = Rotary().eval(), torch.randn(2, 7, 32)
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report, torch.no_grad():
        got = [compiled(x) for _ in range(2)][-1]
        want = copy.deepcopy(model).double()(x.double())
        for g, w in zip(got, want):
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)
        assert {"aten.cos", "aten.sin"} <= _hoisted_ops(report), _hoisted_ops(report)
        assert report.graphs[0].hoisted["recomputed"] == 1
        model.inv_freq.mul_(0.5)  # the buffer changes: the tables are recomputed
        for g, w in zip(compiled(x), copy.deepcopy(model).double()(x.double())):
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)
    assert report.graphs[0].hoisted["recomputed"] == 2


class Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 4))
        self.u, self.v = nn.Parameter(torch.randn(300)), nn.Parameter(torch.randn(300))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = self.w.abs() + 1
        return scale * 2, x @ scale.t(), x.sum() * torch.outer(self.u, self.v)


@pytest.mark.native_cpu
def test_returned_and_large_values_are_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    tilewright.config.target = "cpu"
    monkeypatch.setattr(hoist.settings, "max_value_bytes", 1024)
    torch.manual_seed(0)
    model, x = Scaled(), torch.randn(3, 4)
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report, torch.no_grad():
        first, second = compiled(x), compiled(x)
        for got in (first, second):
            for g, w in zip(got, model(x)):
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    assert first[0].data_ptr() != second[0].data_ptr()  # an output is never the cached tensor
    hoisted = report.graphs[0].hoisted
    assert hoisted is not None and hoisted["cached_bytes"] <= 1024  # |w| + 1, not the 300x300 outer product
    assert "aten.abs" in _hoisted_ops(report) and "aten.mul" not in _hoisted_ops(report)


def _report_line(report: Report) -> str:
    return next(line for line in str(report).splitlines() if "hoisted:" in line)


@pytest.mark.native_cpu
def test_report_says_what_was_hoisted() -> None:
    tilewright.config.target = "cpu"
    model, x = resnet(), torch.randn(1, 3, 9, 9)
    with collect() as report, torch.no_grad():
        torch.compile(model, backend="tilewright")(x)
    line = _report_line(report)
    assert "KiB cached" in line and "parameters/buffers" in line and "ran 1 time" in line
    assert report.to_dict()["graphs"][0]["hoisted"]["parameters"] >= 20


@pytest.mark.native_cpu
def test_the_cache_keeps_no_parameter_alive(graphs: list[HoistedGraph]) -> None:
    tilewright.config.target = "cpu"
    model, x = resnet(), torch.randn(1, 3, 9, 9)
    compiled = torch.compile(model, backend="tilewright")
    with torch.no_grad():
        compiled(x)
        bn = model[3].b1
        weight = weakref.ref(bn.weight)
        bn.weight = nn.Parameter(bn.weight.detach() * 3)  # a new tensor: recomputed, the old one can go
        _check(compiled, model, x)
    gc.collect()
    assert weight() is None
    assert graphs[0].stats["recomputed"] == 2


class WeightNormConv(nn.Module):
    """A convolution whose weight is computed from parameters (weight normalisation)."""

    def __init__(self) -> None:
        super().__init__()
        self.v, self.g = nn.Parameter(torch.randn(8, 3, 3, 3)), nn.Parameter(torch.rand(8, 1, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.g * self.v / self.v.square().sum((1, 2, 3), keepdim=True).sqrt()
        return torch.relu(nn.functional.conv2d(x, w, padding=1))


def test_a_computed_weight_is_hoisted_and_refreshed(target: str, graphs: list[HoistedGraph]) -> None:
    torch.manual_seed(0)
    model, x = WeightNormConv(), torch.randn(2, 3, 10, 9)
    compiled = torch.compile(model, backend="tilewright")
    with torch.no_grad():
        for scale in (1.0, 2.0, 0.5):  # the kernel reading the cached weight sees every new value
            model.g.mul_(scale)
            for _ in range(2):
                torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
        with torch.inference_mode():  # inference tensors have no version counter: never cached
            fresh = WeightNormConv().requires_grad_(False)
            fresh.load_state_dict(model.state_dict())
            torch.testing.assert_close(torch.compile(fresh, backend="tilewright")(x), model(x), rtol=1e-4, atol=1e-4)
    assert graphs[0].stats["recomputed"] == 3
