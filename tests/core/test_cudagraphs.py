"""``mode="reduce-overhead"``: the CUDA-graph runner's logic, with the capture layer faked on the CPU.

The fake capture records the function and, on replay, reruns it on the captured (static) inputs
and writes the results into the captured output tensors — what a CUDA graph replay does to its
buffers. So these tests fail if inputs are not copied in, if outputs handed out are the static
buffers (the next replay would overwrite them), or if an input the graph mutates is not written
back. The real capture (``torch.cuda.CUDAGraph``) is checked on a GPU: docs/gpu_runtime.md.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from tilewright.ir.graph import Node
from tilewright.report import collect
from tilewright.runtime import cudagraphs
from tilewright.runtime.cudagraphs import CudaGraphRunner, TorchCudaGraphs
from tilewright.runtime.plan import ExternStep, Plan


class FakeGraph:
    def __init__(self, fn: Any, out: Any) -> None:
        self.fn, self.out = fn, out

    def replay(self) -> None:
        new = self.fn()
        for static, fresh in zip(cudagraphs._flat_tensors(self.out), cudagraphs._flat_tensors(new)):
            static.copy_(fresh)


class FakeCapture:
    """Captures anything on any device; ``fail`` makes capture raise (an op that syncs)."""

    instances: list[FakeCapture] = []

    def __init__(self, fail: str | None = None) -> None:
        self.fail = fail
        self.captures = 0
        FakeCapture.instances.append(self)

    def unsupported(self, tensors: Any) -> str | None:
        return None

    def capture(self, fn: Any) -> tuple[FakeGraph, Any]:
        fn()  # warm-up, as the real backend does
        if self.fail:
            raise RuntimeError(self.fail)
        self.captures += 1
        out = fn()
        return FakeGraph(fn, out), out


def _stub(fn: Any, steps: list[Any] | None = None) -> Any:
    """A CompiledGraph stand-in: run_boxed, plan, graph (no inputs mutated), report, broken."""
    graph = SimpleNamespace(inputs=[], input_positions=[])
    report = SimpleNamespace(notes=[], name="stub")

    def run_boxed(inputs: list[Any]) -> Any:
        out = fn(*inputs)
        inputs.clear()
        return out
    return SimpleNamespace(run_boxed=run_boxed, plan=Plan(steps or []), graph=graph, report=report, broken=None)


def _note(notes: list[str]) -> str:
    return next(n for n in notes if n.startswith("CUDA graphs:"))


def test_capture_on_second_call_copies_inputs_and_clones_outputs() -> None:
    w = torch.nn.Parameter(torch.randn(3, 5))
    compiled = _stub(lambda x, w, k: (x @ w * k, x.sum()))
    fake = FakeCapture()
    run = CudaGraphRunner(compiled, fake)
    xs = [torch.randn(7, 3) for _ in range(4)]
    outs = [run([x, w, 2.0]) for x in xs]
    assert fake.captures == 1 and run.replays == 3  # the capturing call replays too
    for x, (y, s) in zip(xs, outs):  # every earlier result survives the later replays
        assert_close(y, x @ w * 2.0)
        assert_close(s, x.sum())
    assert outs[2][0].data_ptr() != outs[3][0].data_ptr()
    assert run._params == {1: w.data_ptr()} and run._copied == [0]
    assert _note(compiled.report.notes).startswith("CUDA graphs: on: captured 1x")
    assert "1 input(s) copied in per call, 1 parameter(s) used in place" in run.status()


def test_a_moved_parameter_is_captured_again_then_given_up() -> None:
    compiled = _stub(lambda x, w: x + w)
    fake = FakeCapture()
    run = CudaGraphRunner(compiled, fake)
    x = torch.randn(4)
    for i in range(cudagraphs.MAX_CAPTURES + 2):
        w = torch.nn.Parameter(torch.full((4,), float(i)))  # a new address every call
        assert_close(run([x, w]), x + i)
    assert fake.captures == cudagraphs.MAX_CAPTURES
    assert "parameters moved" in str(run.disabled)


def test_changing_scalar_input_and_failed_capture_fall_back_with_reasons() -> None:
    compiled = _stub(lambda x, k: x * k)
    run = CudaGraphRunner(compiled, FakeCapture())
    x = torch.randn(4)
    for k in (2, 2, 2, 3):
        assert_close(run([x, k]), x * k)
    assert "non-tensor input 1 changes between calls (2 -> 3)" in _note(compiled.report.notes)

    compiled = _stub(lambda x: x * 2)
    run = CudaGraphRunner(compiled, FakeCapture(fail="operation not permitted when stream is capturing"))
    for _ in range(3):
        assert_close(run([x]), x * 2)
    assert _note(compiled.report.notes) == ("CUDA graphs: off (capture failed: RuntimeError: operation not "
                                            "permitted when stream is capturing)")


def test_output_aliasing_an_input_and_host_sync_ops_are_not_captured() -> None:
    compiled = _stub(lambda x: x.view(2, 2))
    run = CudaGraphRunner(compiled, FakeCapture())
    x = torch.randn(4)
    for _ in range(3):
        out = run([x])
        assert out.data_ptr() == x.data_ptr()  # still the caller's view, as eager gives it
    assert "an output aliases an input" in str(run.disabled)

    node = Node("aten._local_scalar_dense", None, (), {})
    compiled = _stub(lambda x: x + 1, [ExternStep(node)])
    fake = FakeCapture()
    run = CudaGraphRunner(compiled, fake)
    for _ in range(3):
        assert_close(run([x]), x + 1)
    assert fake.captures == 0 and "aten._local_scalar_dense synchronises with the host" in str(run.disabled)


def test_cpu_tensors_are_refused_by_the_real_capture_layer() -> None:
    assert TorchCudaGraphs().unsupported([torch.randn(2)]) == "inputs on cpu: CUDA graphs capture CUDA work only"
    compiled = _stub(lambda x: x + 1)
    run = CudaGraphRunner(compiled)
    x = torch.randn(3)
    for _ in range(3):
        assert_close(run([x]), x + 1)
    assert _note(compiled.report.notes) == "CUDA graphs: off (inputs on cpu: CUDA graphs capture CUDA work only)"


def test_reduce_overhead_end_to_end_writes_back_mutated_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A train-mode batch norm's running statistics are ``copy_`` into graph inputs: with the
    graph replayed on static copies, they must still reach the module's buffers every call."""
    monkeypatch.setattr(cudagraphs, "TorchCudaGraphs", FakeCapture)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU())
    reference = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5), torch.nn.ReLU())
    reference.load_state_dict(model.state_dict())
    compiled = torch.compile(model, backend="tilewright", mode="reduce-overhead")
    xs = [torch.randn(9, 6) for _ in range(4)]
    with torch.no_grad(), collect() as report:
        outs = [compiled(x) for x in xs]
        expected = [reference(x) for x in xs]
    for out, ref in zip(outs, expected):
        assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert_close(model[1].running_mean, reference[1].running_mean, rtol=1e-4, atol=1e-6)
    assert_close(model[1].running_var, reference[1].running_var, rtol=1e-4, atol=1e-6)
    assert sum(f.captures for f in FakeCapture.instances) >= 1
    notes = [n for g in report.graphs for n in g.notes if n.startswith("CUDA graphs:")]
    assert notes and notes[0].startswith("CUDA graphs: on: captured 1x"), notes
    assert "CUDA graphs: on" in str(report)
