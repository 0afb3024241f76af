"""New batch and sequence sizes on the native CPU target reuse the built library (no C++ build).

Pointwise, reduction and GEMM kernels take their sizes and strides as run-time arguments, so a
graph recompiled for another size generates byte-identical sources and its library comes from
the build cache. Checked on a model run at several sizes (against eager, float64 as judge), on
single kernels at odd sizes with strided and broadcast operands, and in explain.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright.report import collect
from tilewright.targets.cpu.build import compiler_runs

pytestmark = pytest.mark.usefixtures("cpu_target")


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty build cache: the first size must build, so later sizes prove the reuse."""
    monkeypatch.setattr(tilewright.config, "cache_dir", tmp_path / "cache")
    monkeypatch.delenv("TILEWRIGHT_CPU_SIZES", raising=False)


class Block(torch.nn.Module):
    """SiLU, linear + GELU + layer norm + linear, a softmax over features, one over the sequence and a
    sum over the sequence (a column reduction): every size-dependent kernel kind."""

    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(24, 40)
        self.norm = torch.nn.LayerNorm(40)
        self.down = torch.nn.Linear(40, 24)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.down(self.norm(F.gelu(self.up(F.silu(x)))))
        p = torch.softmax(h, -1) + torch.softmax(h, 1)
        return p, (h * x).sum(1)


def _judge(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(o.double() for o in copy.deepcopy(model).double()(x.double()))


def test_new_batch_and_sequence_sizes_build_nothing() -> None:
    torch.manual_seed(0)
    model = Block().eval()
    compiled = torch.compile(model, backend="tilewright")
    builds = []
    with collect() as report:
        for batch, seq in [(2, 5), (3, 9), (5, 13), (4, 7)]:
            x = torch.randn(batch, seq, 24)
            before = compiler_runs()
            with torch.no_grad():
                got = compiled(x)
                eager = model(x)
            builds.append(compiler_runs() - before)
            for g, e, want in zip(got, eager, _judge(model, x)):
                assert g.shape == e.shape
                eager_err = (e.double() - want).abs().max().item()
                assert (g.double() - want).abs().max().item() <= 10 * eager_err + 1e-5
    assert builds[0] >= 1, "the first size builds the library"
    assert builds[1:] == [0, 0, 0], builds
    kinds = {k["kind"] for k in report.kernels if k["status"] == "ran"}
    assert {"matmul", "reduction", "pointwise"} <= kinds, kinds
    assert all(k["status"] == "ran" for k in report.kernels)


def _odd_cases() -> list[tuple[str, Callable[..., Any], Callable[[int, int], tuple[torch.Tensor, ...]]]]:
    return [
        ("pointwise_broadcast_strided", lambda x, y, b: torch.sigmoid(x.transpose(0, 1) * y) + b,
         lambda m, n: (torch.randn(n, m, 13), torch.randn(m, 1, 13), torch.randn(13))),
        ("row_softmax_strided", lambda x: torch.softmax(x.transpose(1, 2), -1),
         lambda m, n: (torch.randn(3, n, m),)),
        ("column_sum", lambda x, w: (x * w).sum(0), lambda m, n: (torch.randn(m, n, 37), torch.randn(37))),
        ("layer_norm_rows", lambda x, w, b: F.layer_norm(x, (29,), w, b),
         lambda m, n: (torch.randn(m, n, 29), torch.randn(29), torch.randn(29))),
        ("linear_bias_gelu_transposed_weight", lambda x, w, b: F.gelu(x @ w.t() + b),
         lambda m, n: (torch.randn(m, n, 19), torch.randn(23, 19), torch.randn(23))),
        ("bmm_strided", lambda a, b: torch.bmm(a, b.transpose(1, 2)) * 0.5,
         lambda m, n: (torch.randn(3, m, 21), torch.randn(3, n, 21))),
    ]


@pytest.mark.parametrize("name,fn,make", _odd_cases(), ids=[c[0] for c in _odd_cases()])
def test_runtime_sized_kernels_at_odd_sizes(name: str, fn: Callable[..., Any],
                                            make: Callable[[int, int], tuple[torch.Tensor, ...]]) -> None:
    """The same kernels at three odd sizes: right each time, and only the first size builds."""
    torch.manual_seed(0)
    builds = []
    for m, n in [(7, 11), (13, 5), (31, 17)]:
        inputs = make(m, n)
        before = compiler_runs()
        with collect() as report:
            got = torch.compile(fn, backend="tilewright", dynamic=False)(*inputs)
        torch._dynamo.reset()
        builds.append(compiler_runs() - before)
        torch.testing.assert_close(got, fn(*inputs), rtol=1e-5, atol=1e-4)
        generated = [k for k in report.kernels if k["kind"] in ("pointwise", "reduction", "matmul")]
        assert generated and all(k["status"] == "ran" for k in report.kernels), report.kernels
    assert builds[0] >= 1 and builds[1:] == [0, 0], builds


def test_explain_lists_specialised_and_runtime_sizes() -> None:
    x, w, b = torch.randn(6, 9, 24), torch.randn(40, 24), torch.randn(40)
    with collect() as report:
        torch.compile(lambda x, w, b: torch.softmax(F.linear(x, w, b), -1), backend="tilewright")(x, w, b)
    sized = {k["kind"]: k for k in report.kernels if "sizes" in k}
    sizes = {kind: k["sizes"] for kind, k in sized.items()}
    assert {"M", "N", "K"} <= set(sizes["matmul"]["runtime"])
    assert sizes["matmul"]["runtime"]["M"] == 54 and sizes["matmul"]["runtime"]["K"] == 24
    assert sizes["reduction"]["runtime"]["count"] == 40 and sizes["reduction"]["runtime"]["rows"] == 54
    assert sizes["reduction"]["specialised"]["in0.stride2"] == 1  # the unit stride the loops vectorise on
    lines = str(report).splitlines()
    assert any("sizes (specialised into the code | run-time arguments" in line for line in lines)
    row = next(line for line in lines if line.strip().startswith(sized["reduction"]["name"][:34] + ":"))
    fixed, runtime = row.split("|")
    assert "in0.stride2=1" in fixed and "count" in runtime and "rows" in runtime


def test_specialize_switch_writes_sizes_into_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    """``TILEWRIGHT_CPU_SIZES=specialize`` (the measured baseline) bakes every size: a new size builds."""
    monkeypatch.setenv("TILEWRIGHT_CPU_SIZES", "specialize")
    fn = lambda x: torch.softmax(x * 2, -1)
    builds = []
    for rows in (5, 9):
        x = torch.randn(rows, 33)
        before = compiler_runs()
        with collect() as report:
            got = torch.compile(fn, backend="tilewright", dynamic=False)(x)
        torch._dynamo.reset()
        builds.append(compiler_runs() - before)
        torch.testing.assert_close(got, fn(x))
        sizes = [k["sizes"] for k in report.kernels if "sizes" in k]
        assert sizes and all(not s["runtime"] and s["specialised"]["rows"] == rows for s in sizes)
    assert builds == [1, 1], builds


def test_cat_of_one_operand_twice_at_two_sizes() -> None:
    """``cat([x, x])``: each part has its own offset argument; a new size reuses the code."""
    fn = lambda x: torch.cat([x, x * 2, x], 1) + 1
    builds = []
    for rows in (5, 9):
        x = torch.randn(rows, 3, 7).transpose(1, 2)
        before = compiler_runs()
        with collect() as report:
            got = torch.compile(fn, backend="tilewright", dynamic=False)(x)
        torch._dynamo.reset()
        builds.append(compiler_runs() - before)
        torch.testing.assert_close(got, fn(x))
        assert all(k["status"] == "ran" for k in report.kernels) and report.kernels
    assert builds[1] == 0, builds
