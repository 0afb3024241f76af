"""Compiler behaviour beyond single ops: fallbacks, dynamic shapes, verification, buffers, IR."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

import tilewright
from tilewright.targets.triton import kernel as kernel_mod
from tilewright.runtime.graph import KernelStep
from tilewright.errors import StrictModeError
from tilewright.compiler import compile_graph_for_inputs, default_passes
from tilewright.frontend.fx_import import import_fx
from tilewright.ir.verify import VerificationError, verify
from tilewright.passes.fusion import fuse
from tilewright.targets import target_for
from tilewright.report import GraphReport, collect

from .helpers import assert_close, compile_and_run


class WithUnsupportedOp(torch.nn.Module):
    """A block with an op tilewright has no lowering for (cumsum) between lowered ones."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(12, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.lin(x))
        return torch.cumsum(h, dim=-1).softmax(-1)


def test_unsupported_op_falls_back_and_is_reported() -> None:
    model = WithUnsupportedOp().eval()
    x = torch.randn(3, 5, 12)
    with torch.no_grad():
        out, report = compile_and_run(model, x)
        want = model(x)
    assert_close(out, want, rtol=1e-5, atol=1e-5)
    fallbacks = report.to_dict()["fallbacks"]
    assert any(f["op"] == "aten.cumsum.default" for f in fallbacks), fallbacks
    assert report.kernels, "the lowered parts still run as kernels"
    text = str(tilewright.explain(model, x))
    assert "aten.cumsum.default" in text


def test_dynamic_shapes_are_specialised_per_shape() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x * 2, -1) + x.mean(-1, keepdim=True)

    compiled = torch.compile(fn, backend="tilewright")
    with collect() as report:
        for n in (7, 9, 12):
            x = torch.randn(3, n)
            assert_close(compiled(x), fn(x))
    notes = [n for g in report.graphs for n in g.notes]
    assert any("dynamic shapes" in n for n in notes), notes


@pytest.mark.fallback
def test_kernel_failure_falls_back_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated compile error")

    monkeypatch.setattr(kernel_mod, "load_kernel", broken)
    fn = lambda x: torch.tanh(x) * 3  # noqa: E731
    compiled = torch.compile(fn, backend="tilewright")
    x = torch.randn(4, 9)
    with caplog.at_level(logging.WARNING), collect() as report:
        assert_close(compiled(x), fn(x))
        assert_close(compiled(x), fn(x))
    failures = [r for r in caplog.records if "simulated compile error" in r.getMessage()]
    assert len(failures) == 1, "logged once"
    assert any("simulated compile error" in f["reason"] for f in report.fallbacks)
    assert report.coverage == 0.0, "ops of a kernel that fell back are not covered"
    assert [k["status"] for k in report.kernels] == ["fell back"]


@pytest.mark.fallback
def test_verify_reports_a_wrong_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    original = kernel_mod.GeneratedKernel.launch

    def wrong(self: kernel_mod.GeneratedKernel, tensors: list, config: dict | None = None) -> None:
        original(self, tensors, config)
        tensors[-1].add_(1.0)  # corrupt the output

    monkeypatch.setattr(kernel_mod.GeneratedKernel, "launch", wrong)
    monkeypatch.setattr(tilewright.config, "verify", True)
    fn = lambda x: torch.exp(x) + 1  # noqa: E731
    x = torch.randn(5, 6)
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x))  # the reference result is used after a mismatch
    reasons = [f["reason"] for f in report.fallbacks]
    assert any("verify mismatch" in r and "aten.exp.default" in r for r in reasons), reasons
    assert report.coverage == 0.0 and report.kernels[0]["status"] == "fell back"


def test_verify_mismatch_raises_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    original = kernel_mod.GeneratedKernel.launch

    def wrong(self: kernel_mod.GeneratedKernel, tensors: list, config: dict | None = None) -> None:
        original(self, tensors, config)
        tensors[-1].add_(1.0)

    monkeypatch.setattr(kernel_mod.GeneratedKernel, "launch", wrong)
    monkeypatch.setattr(tilewright.config, "verify", True)
    with pytest.raises(StrictModeError, match=r"verify mismatch.*aten\.exp\.default"):
        compile_and_run(lambda x: torch.exp(x) + 1, torch.randn(5, 6))


def test_debug_dir_dumps_kernel_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tilewright.config, "debug_dir", str(tmp_path))
    fn = lambda x: torch.sigmoid(x) * x  # noqa: E731
    compile_and_run(fn, torch.randn(3, 17))
    files = list(tmp_path.glob("*.py"))
    assert files and "tl.sigmoid" in files[0].read_text()


def _triton_without_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors with TILEWRIGHT_TARGET=triton and no interpreter: no tilewright kernel can run them."""
    import tilewright
    from tilewright.frontend import backend
    from tilewright.targets.triton import jit

    tilewright.config.target = "triton"
    monkeypatch.setattr(backend, "interpret_mode", lambda: False)
    monkeypatch.setattr(jit, "interpret_mode", lambda: False)


@pytest.mark.fallback
def test_cpu_without_interpreter_runs_eagerly_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    from tilewright.frontend import backend

    _triton_without_interpreter(monkeypatch)
    monkeypatch.setattr(backend, "_warned_cpu", False)
    fn = lambda x: x.relu() + 1  # noqa: E731
    x = torch.randn(6)
    with pytest.warns(UserWarning, match="TILEWRIGHT_INTERPRET"):
        out, report = compile_and_run(fn, x)
    assert_close(out, fn(x))
    assert report.graphs[0].mode == "eager (cpu)"
    assert report.coverage == 0.0 and report.graphs[0].compute_ops == 2, "an eager graph's ops count, uncovered"


@pytest.mark.fallback
def test_cpu_without_interpreter_runs_dynamos_own_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the decomposed, attention-rewritten graph: SDPA stays SDPA, so eager's CPU kernels run."""
    import torch.nn.functional as F

    from tilewright.frontend import backend

    _triton_without_interpreter(monkeypatch)
    monkeypatch.setattr(backend, "_warned_cpu", True)
    seen: list[str] = []
    original = backend._as_written

    def spy(gm: torch.fx.GraphModule) -> Any:
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return original(gm)

    monkeypatch.setattr(backend, "_as_written", spy)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True).sum(-1).exp()  # noqa: E731
    q, k, v = (torch.randn(2, 3, 9, 8, requires_grad=True) for _ in range(3))
    with collect() as report:
        out = torch.compile(fn, backend="tilewright")(q, k, v)
        out.sum().backward()
    assert_close(out, fn(q, k, v))
    assert any("scaled_dot_product_attention" in s for s in seen), seen
    assert [g.mode for g in report.graphs] == ["eager (cpu)"], "one graph, no AOT forward/backward split"
    assert report.graphs[0].name.endswith("_dynamo") and report.attention_fused == 0
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_cpu_without_interpreter_raises_in_strict_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    _triton_without_interpreter(monkeypatch)
    with pytest.raises(StrictModeError, match="TILEWRIGHT_INTERPRET=1"):
        compile_and_run(lambda x: x.relu() + 1, torch.randn(6))


def test_cpu_tensors_default_to_the_native_cpu_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """TILEWRIGHT_TARGET=auto without the interpreter: C++ kernels, not an eager run."""
    import tilewright
    from tilewright.frontend import backend
    from tilewright.targets import native_cpu_problem
    from tilewright.targets.triton import jit

    if native_cpu_problem() is not None:
        pytest.skip(f"no C++ compiler: {native_cpu_problem()}")
    tilewright.config.target = "auto"
    monkeypatch.setattr(backend, "interpret_mode", lambda: False)
    monkeypatch.setattr(jit, "interpret_mode", lambda: False)
    fn = lambda x: (x.relu() + 1).sum(-1)  # noqa: E731
    x = torch.randn(5, 33)
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x))
    assert report.graphs[0].mode == "cpu" and report.coverage == 1.0
    assert {k["status"] for k in report.kernels} == {"ran"}
    target = report.graphs[0].target  # explain names the target, compiler, flags and ISA
    assert target.startswith("C++ (") and "-O3" in target and "ISA " in target, target
    assert report.to_dict()["graphs"][0]["target"] == target and f"target: {target}" in str(report)


def test_explain_names_the_triton_interpreter() -> None:
    _, report = compile_and_run(lambda x: x.relu() + 1, torch.randn(6))
    assert report.graphs[0].mode == "interpreter"
    assert report.graphs[0].target.startswith("Triton ") and "interpreter" in report.graphs[0].target


@pytest.mark.fallback
def test_no_cpp_compiler_runs_eagerly_and_names_the_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    import tilewright
    from tilewright.frontend import backend
    from tilewright.targets.triton import jit

    tilewright.config.target = "auto"
    monkeypatch.setattr(backend, "interpret_mode", lambda: False)
    monkeypatch.setattr(jit, "interpret_mode", lambda: False)
    monkeypatch.setattr(backend, "native_cpu_problem", lambda: "no C++ compiler found (looked at c++, g++)")
    monkeypatch.setattr(backend, "_warned_cpu", False)
    fn = lambda x: x.relu() + 1  # noqa: E731
    x = torch.randn(6)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found"):
        out, report = compile_and_run(fn, x)
    assert_close(out, fn(x))
    assert report.graphs[0].mode == "eager (cpu)" and "no C++ compiler" in report.graphs[0].notes[-1]
    tilewright.config.strict = True
    torch._dynamo.reset()
    with pytest.raises(StrictModeError, match="no C\\+\\+ compiler found"):
        compile_and_run(lambda x: x.sigmoid() * 2, x)


def _graph(fn: object, *inputs: torch.Tensor):  # type: ignore[no-untyped-def]
    from tilewright.frontend.decompositions import decomposition_table

    gm = make_fx(fn, decomposition_table=decomposition_table())(*inputs)
    return gm, import_fx(gm, list(inputs))


def test_intermediate_buffers_are_reused() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        for i in range(4):  # softmaxes over alternating dims cannot share a kernel
            x = torch.softmax(x * 1.5, i % 2)
        return x

    x = torch.randn(16, 8)
    gm, _ = _graph(fn, x)
    compiled = compile_graph_for_inputs(gm, [x], GraphReport("t"))
    kernels = [s for s in compiled.plan.steps if isinstance(s, KernelStep)]
    intermediates = sum(1 for s in kernels for slot in s.slots if slot >= 0)
    assert intermediates >= 3
    assert len(compiled.plan.slot_bytes) < intermediates, "slots are shared between dead intermediates"
    assert_close(compiled([x]), fn(x))


def test_printer_and_verifier() -> None:
    _, graph = _graph(lambda x, y: (x + y).relu().sum(0), torch.randn(3, 4), torch.randn(4))
    text = str(graph)
    assert "aten.add.Tensor" in text and "float32[3x4]" in text and "return" in text
    verify(graph)
    graph.nodes.reverse()  # uses before definitions
    with pytest.raises(VerificationError, match="before it is defined"):
        verify(graph)


def test_dce_cse_and_constant_folding() -> None:
    const = torch.randn(4)

    def fn(x: torch.Tensor) -> torch.Tensor:
        unused = torch.exp(x)  # noqa: F841 - dead code
        a = torch.sin(x) + torch.sin(x)  # duplicated subexpression
        return a * (const * 2 + 1)  # constant subgraph

    _, graph = _graph(fn, torch.randn(3, 4))
    pm = default_passes()
    pm.run(graph)
    ops = [n.op for n in graph.nodes]
    assert "aten.exp.default" not in ops
    assert ops.count("aten.sin.default") == 1
    assert pm.stats["constant_folding"] >= 1


def test_fusion_never_creates_cycles() -> None:
    # x -> a (pointwise) -> r = sum(a) (reduction) -> b = a * r (pointwise); a second path
    # a -> mm (matmul) -> c. Fusing a with c directly would need mm inside the group.
    w = torch.randn(6, 6)

    def fn(x: torch.Tensor) -> torch.Tensor:
        a = torch.exp(x)
        m = a @ w
        return (a + m).relu()

    x = torch.randn(6, 6)
    gm, graph = _graph(fn, x)
    default_passes().run(graph)
    target = target_for()
    result = fuse(graph, target.can_build, target.kind_of)
    index = {g.id: i for i, g in enumerate(result.groups)}
    for g in result.groups:
        for n in g.nodes:
            for v in n.inputs:
                p = v.producer
                if p is not None and p.id in result.node_group and result.node_group[p.id] is not g:
                    assert index[result.node_group[p.id].id] < index[g.id], "producer group runs first"
    compiled = compile_graph_for_inputs(gm, [x], GraphReport("t"))
    assert_close(compiled([x]), fn(x), rtol=1e-4, atol=1e-4)
