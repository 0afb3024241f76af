"""``mode="reduce-overhead"``: replay a compiled graph's kernels as one CUDA graph.

:class:`CudaGraphRunner` wraps one :class:`~tilewright.runtime.graph.CompiledGraph` (one input
signature: every shape specialisation gets its own runner, so its own capture):

1. the first call runs the graph normally (kernels compile, the fast path is built, ``verify``
   compares kernels with their references);
2. the second call captures the graph's kernel sequence once (after a warm-up run on a side
   stream), then replays it for that call's result, on static input buffers: copies of
   the inputs, except parameters (``nn.Parameter``), which are used where they are — their
   addresses are recorded and checked on every replay (a parameter that moved is captured again,
   up to :data:`MAX_CAPTURES` times);
3. every later call copies the inputs into the static buffers, replays, copies inputs the graph
   mutated (``copy_`` into an input: batch-norm running statistics) back into the caller's
   tensors, and returns **clones** of the static outputs: the next replay overwrites the static
   outputs, never a tensor the caller holds.

Where capture is impossible the graph runs as before and explain says why (one ``CUDA graphs:``
note per graph, updated as the runner changes state): inputs on the CPU, an op that synchronises
with the host (``.item()``, ``nonzero``...), an output that aliases an input, a graph that fell
back to eager, non-tensor inputs that change between calls, or a capture that raised (the error's
first line). The capture layer is a :class:`CaptureBackend`: :class:`TorchCudaGraphs` on a GPU;
tests pass a fake one to pin the logic on the CPU.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

log = logging.getLogger(__name__)

__all__ = ["MAX_CAPTURES", "SYNC_OPS", "CaptureBackend", "CudaGraphRunner", "TorchCudaGraphs", "sync_reason"]

#: captures one runner makes (the first plus re-captures after a parameter moved) before it gives up
MAX_CAPTURES = 3
#: ops that wait for the host (a value read back, a data-dependent shape): never captured
SYNC_OPS = {"aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.masked_select", "aten.unique",
            "aten._unique2", "aten.unique_consecutive", "aten.equal", "aten.is_nonzero", "aten.tolist",
            "aten._assert_async", "aten.repeat_interleave", "tilewright.dropout_mask"}
NOTE_PREFIX = "CUDA graphs:"


class Captured(Protocol):
    """A captured graph: :meth:`replay` reruns the captured work on the same buffers."""

    def replay(self) -> None:
        """Run the captured kernels again."""
        ...


class CaptureBackend(Protocol):
    """How graphs are captured (CUDA graphs on a GPU, a fake in tests)."""

    def unsupported(self, tensors: Sequence[torch.Tensor]) -> str | None:
        """Why tensors like these cannot be captured; None when they can."""
        ...

    def capture(self, fn: Callable[[], Any]) -> tuple[Captured, Any]:
        """Capture ``fn()``; the captured graph and what ``fn`` returned during capture."""
        ...


class TorchCudaGraphs:
    """CUDA graphs through ``torch.cuda.CUDAGraph``; one memory pool shared by all captures."""

    def __init__(self) -> None:
        self._pool: Any = None

    def unsupported(self, tensors: Sequence[torch.Tensor]) -> str | None:
        """CPU (or other non-CUDA) tensors, or more than one CUDA device."""
        devices = {t.device for t in tensors}
        off = sorted({d.type for d in devices if d.type != "cuda"})
        if off:
            return f"inputs on {', '.join(off)}: CUDA graphs capture CUDA work only"
        if len(devices) > 1:
            return "inputs on several CUDA devices"
        if not torch.cuda.is_available():
            return "no CUDA device"
        return None

    def capture(self, fn: Callable[[], Any]) -> tuple[Captured, Any]:
        """Warm up on a side stream, then capture ``fn`` into a new CUDA graph."""
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()  # allocations and lazy initialisation happen outside the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = fn()
        return graph, out


def sync_reason(compiled: Any) -> str | None:
    """Why ``compiled``'s plan cannot be captured (an extern op that syncs with the host), or None."""
    from .plan import ExternStep

    for step in compiled.plan.steps:
        if isinstance(step, ExternStep) and step.call is None and step.node.op in SYNC_OPS:
            return f"{step.node.op} synchronises with the host"
    return None


def _flat_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_tensors(o)]
    return []


def _clone_outputs(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.clone()
    if isinstance(out, (list, tuple)):
        return type(out)(_clone_outputs(o) for o in out)
    return out


class CudaGraphRunner:
    """Runs one compiled graph specialisation through a captured CUDA graph (see the module).

    Args:
        compiled: the graph (``CompiledGraph``: ``run_boxed``, ``plan``, ``graph``, ``report``).
        backend: the capture layer (default: :class:`TorchCudaGraphs`).
    """

    def __init__(self, compiled: Any, backend: CaptureBackend | None = None) -> None:
        self.compiled = compiled
        self.backend = backend or TorchCudaGraphs()
        self.calls = 0
        self.captures = 0
        self.replays = 0
        #: why CUDA graphs are off for this graph (None: on, or not decided yet)
        self.disabled: str | None = None
        self._graph: Captured | None = None
        self._static_inputs: list[Any] = []
        self._static_out: Any = None
        self._copied: list[int] = []
        self._params: dict[int, int] = {}  # input position -> data_ptr the capture used
        self._scalars: dict[int, Any] = {}
        self._mutated = _mutated_positions(compiled)
        self._note("waiting for its second call to capture")

    # -- explain -------------------------------------------------------------------------------
    def _note(self, text: str) -> None:
        notes = self.compiled.report.notes
        line = f"{NOTE_PREFIX} {text}"
        for i, note in enumerate(notes):
            if note.startswith(NOTE_PREFIX):
                notes[i] = line
                return
        notes.append(line)

    def _disable(self, reason: str) -> None:
        self.disabled = reason
        self._graph, self._static_inputs, self._static_out = None, [], None
        log.info("graph %s runs without CUDA graphs: %s", self.compiled.report.name, reason)
        self._note(f"off ({reason})")

    def status(self) -> str:
        """One line: on (with what is copied per call) or off and why."""
        if self.disabled is not None:
            return f"off ({self.disabled})"
        if self._graph is None:
            return "waiting for its second call to capture"
        static = len(self._params)
        return (f"on: captured {self.captures}x, {self.replays} replays; {len(self._copied)} input(s) copied in per "
                f"call, {static} parameter(s) used in place; outputs cloned (a replay overwrites its buffers)")

    # -- calls -------------------------------------------------------------------------------
    def __call__(self, inputs: list[Any]) -> Any:
        self.calls += 1
        if self.disabled is None and self.compiled.broken is not None:
            self._disable(f"the graph runs eagerly ({self.compiled.broken})")
        if self.disabled is not None or self.calls == 1:
            return self.compiled.run_boxed(inputs)  # the first call compiles and verifies
        if self._graph is not None and not self._matches(inputs) and self.disabled is not None:
            return self.compiled.run_boxed(inputs)
        if self._graph is None:
            return self._capture(inputs)
        return self._replay(inputs)

    def _matches(self, inputs: Sequence[Any]) -> bool:
        """Whether the capture still applies: same scalars, parameters where they were."""
        for pos, value in self._scalars.items():
            if inputs[pos] != value:
                self._disable(f"non-tensor input {pos} changes between calls ({value!r} -> {inputs[pos]!r})")
                return False
        moved = [pos for pos, ptr in self._params.items() if inputs[pos].data_ptr() != ptr]
        if moved:
            if self.captures >= MAX_CAPTURES:
                self._disable(f"parameters moved after {self.captures} captures")
                return False
            self._graph = None  # capture again with the parameters where they are now
            return False
        return True

    def _capture(self, inputs: list[Any]) -> Any:
        tensors = [x for x in inputs if isinstance(x, torch.Tensor)]
        reason = self.backend.unsupported(tensors) or sync_reason(self.compiled)
        if reason is not None:
            self._disable(reason)
            return self.compiled.run_boxed(inputs)
        static: list[Any] = []
        self._copied, self._params, self._scalars = [], {}, {}
        for pos, x in enumerate(inputs):
            if not isinstance(x, torch.Tensor):
                self._scalars[pos] = x
                static.append(x)
            elif isinstance(x, torch.nn.Parameter):
                self._params[pos] = x.data_ptr()
                static.append(x)
            else:
                buf = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
                buf.copy_(x)
                self._copied.append(pos)
                static.append(buf)
        try:
            graph, out = self.backend.capture(lambda: self.compiled.run_boxed(list(static)))
        except Exception as exc:  # noqa: BLE001 - e.g. an op that syncs inside a template
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._disable(f"capture failed: {type(exc).__name__}: {first}"[:300])
            return self.compiled.run_boxed(inputs)
        if self.compiled.broken is not None:
            self._disable(f"the graph runs eagerly ({self.compiled.broken})")
            return self.compiled.run_boxed(inputs)
        storages = {t.untyped_storage().data_ptr() for t in static if isinstance(t, torch.Tensor)}
        if any(t.untyped_storage().data_ptr() in storages for t in _flat_tensors(out)):
            self._disable("an output aliases an input (a view of it, or the input itself)")
            return self.compiled.run_boxed(inputs)
        self._graph, self._static_inputs, self._static_out = graph, static, out
        self.captures += 1
        self._note(self.status())
        # a capture records without running (and its warm-up run may have written into the
        # static copy of a mutated input): copy the inputs in again and replay for real
        return self._replay(inputs)

    def _replay(self, inputs: list[Any]) -> Any:
        for pos in self._copied:
            self._static_inputs[pos].copy_(inputs[pos])
        assert self._graph is not None
        self._graph.replay()
        self.replays += 1
        if self.replays in (1, 10, 100, 1000):
            self._note(self.status())
        return self._finish(inputs)

    def _finish(self, inputs: list[Any]) -> Any:
        for pos in self._mutated:
            if pos in self._copied:
                inputs[pos].copy_(self._static_inputs[pos])
        out = _clone_outputs(self._static_out)
        inputs.clear()  # the boxed convention: the caller's list is the graph's
        return out


def _mutated_positions(compiled: Any) -> set[int]:
    """Call positions of the inputs the graph writes into (``copy_`` into an input)."""
    from .plan import ExternStep, KernelStep

    graph = compiled.graph
    position = {v.id: p for v, p in zip(graph.inputs, graph.input_positions)}
    out: set[int] = set()
    for step in compiled.plan.steps:
        if isinstance(step, KernelStep):
            out.update(position[v.id] for v in step.inplace.values() if v.id in position)
        elif isinstance(step, ExternStep) and step.node.op.endswith("_") and step.node.args:
            target = step.node.args[0]
            if getattr(target, "id", None) in position:
                out.add(position[target.id])
    return out
