"""The ``tilewright`` torch.compile backend: Dynamo graph -> AOTAutograd -> tilewright.

Forward graphs (inference) and forward+backward graphs (training) are captured by
AOTAutograd with tilewright's decomposition table. Each captured graph is compiled lazily,
once per concrete input signature (shapes, strides, dtypes, devices and int arguments): a
graph Dynamo made dynamic is thereby specialised per shape, which ``explain`` reports.
Whatever goes wrong inside the compiler, the user's program keeps running: the graph then
runs eagerly and the reason is logged once and reported.
"""
from __future__ import annotations

import itertools
import logging
import operator
import warnings
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from ..targets import cpu_uses_triton, native_cpu_problem
from ..targets.triton.jit import ensure_interpreter, interpret_mode
from ..config import config
from ..errors import StrictModeError
from ..report import GraphReport, publish
from ..runtime.guard import make_guard
from .decompositions import decomposition_table

log = logging.getLogger(__name__)

_graph_counter = itertools.count()
_warned_cpu = False


def _signature(args: Sequence[Any]) -> tuple[Any, ...]:
    sig: list[Any] = []
    for a in args:
        if isinstance(a, torch.Tensor):
            sig.append((tuple(a.shape), tuple(a.stride()), a.dtype, a.device.type, a.device.index,
                        a.storage_offset()))
        elif isinstance(a, (int, float, bool)) or a is None:
            sig.append(("scalar", a))
        else:
            sig.append(("other", type(a).__name__))
    return tuple(sig)


def _has_symbolic(gm: fx.GraphModule) -> bool:
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if isinstance(val, torch.SymInt):
                return True
            if isinstance(val, torch.Tensor) and any(isinstance(s, torch.SymInt) for s in val.shape):
                return True
    return False


class LazyCompiledGraph:
    """Boxed callable for AOTAutograd: compiles ``gm`` per input signature on first use."""

    _boxed_call = True

    def __init__(self, gm: fx.GraphModule, kind: str, tune: bool | None = None, cudagraphs: bool = False) -> None:
        # NOTE: an instance attribute, so wrappers made with functools.wraps keep it
        self._boxed_call = True
        self.gm = gm
        self.kind = kind
        #: tune schedule misses at compile time (None: ``tilewright.config.autotune`` decides)
        self.tune = tune
        #: replay each specialisation as a CUDA graph (``mode="reduce-overhead"``)
        self.cudagraphs = cudagraphs
        self.name = f"graph{next(_graph_counter)}_{kind}"
        self.cache: dict[tuple[Any, ...], Callable[[Sequence[Any]], Any]] = {}
        self.symbolic = _has_symbolic(gm)
        self.attention_blocks: list[dict[str, Any]] = []
        #: what ``options["sparsity"]`` did to this graph (a tilewright.sparsity.apply.SparsityResult) or None
        self.sparsity: Any = None
        self._folded = False
        #: (guard, callable) of the last call's specialisation: checked before the cache
        self._last: tuple[Callable[[Sequence[Any]], bool], Callable[[list[Any]], Any]] | None = None
        self._guards: dict[tuple[Any, ...], Callable[[Sequence[Any]], bool] | None] = {}
        #: hoist the part computed from parameters and buffers alone (inference graphs of the backend)
        self.hoist = False

    def __call__(self, args: list[Any]) -> Any:
        inputs = list(args)
        args.clear()
        last = self._last
        if last is not None and last[0](inputs):  # the same specialisation as the last call
            return last[1](inputs)
        sig = _signature(inputs)
        fn = self.cache.get(sig)
        if fn is None:
            fn = self._compile(inputs)
            self.cache[sig] = fn
        if sig not in self._guards:
            self._guards[sig] = make_guard(inputs)
        guard = self._guards[sig]
        self._last = (guard, fn) if guard is not None else None
        return fn(inputs)

    def reset_guard(self) -> None:
        """Forget the last specialisation (the next call looks its signature up)."""
        self._last = None

    def _eager(self) -> Callable[[Sequence[Any]], Any]:
        gm = self.gm
        return lambda inputs: gm(*inputs)

    def _compile(self, inputs: Sequence[Any]) -> Callable[[Sequence[Any]], Any]:
        from ..compiler import compile_graph_for_inputs

        report = GraphReport(self.name)
        report.attention_blocks = list(self.attention_blocks) if self.kind != "backward" else []
        sparse_attention = None  # the IR pass of a plan's attention entries (None: the exact pipeline)
        if self.sparsity is not None and self.kind != "backward":
            report.approximations = list(self.sparsity.rewrites)
            report.notes.extend(self.sparsity.notes)
            sparse_attention = self.sparsity.attention_passes(report)
        if self.symbolic:
            report.specialized = True
            report.notes.append(f"dynamic shapes: specialised for {len(self.cache) + 1} concrete signature(s)")
        mode = _kernel_mode(inputs)
        if mode == "eager":
            _check_cpu_eager(self.name)
            report.mode = "eager (cpu)"
            report.compute_ops = count_compute_ops(self.gm)
            report.notes.append(f"ran eagerly: {_eager_reason()}")
            publish(report)
            return self._eager()
        report.mode = mode
        if report.mode == "interpreter":
            ensure_interpreter()
        if self.kind == "inference" and not self._folded:
            self._folded = True
            folded = _fold_batchnorm(self.gm)
            if folded:
                report.notes.append(f"folded {folded} batch norm(s) into convolutions")
        static = None
        if self.kind == "inference" and self.hoist and not self.cudagraphs:
            from ..passes.hoist import static_positions_of

            static = static_positions_of(inputs)
        try:
            compiled = compile_graph_for_inputs(self.gm, inputs, report, tune=self.tune, eager=self._eager(),
                                                extra_passes=sparse_attention, static_inputs=static)
        except StrictModeError:
            raise
        except Exception as exc:
            if config.strict:
                raise StrictModeError(f"graph {self.name} could not be compiled and would run eagerly (strict mode "
                                      f"is on): {type(exc).__name__}: {exc}") from exc
            log.warning("tilewright could not compile %s (%s: %s); it runs eagerly", self.name,
                        type(exc).__name__, exc)
            report.mode = "eager (compile failed)"
            report.kernels.clear()
            report.compute_ops = count_compute_ops(self.gm)
            report.add_fallback(f"graph {self.name}", f"compile failed: {type(exc).__name__}: {exc}")
            publish(report)
            return self._eager()
        publish(report)
        if self.cudagraphs:
            from ..runtime.cudagraphs import CudaGraphRunner

            return CudaGraphRunner(compiled)
        return compiled.run_boxed  # may drop the input list's references as inputs die


def count_compute_ops(gm: fx.GraphModule) -> int:
    """Compute ops of an ATen FX graph (views, getitem and non-ATen calls excluded)."""
    from ..ir.registry import lookup

    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            try:
                kind = lookup(node.target).kind
            except Exception:  # an op the registry cannot name still computes something
                kind = "extern"
            count += kind != "view"
    return count


def tilewright_backend(gm: fx.GraphModule, example_inputs: list[Any], **options: Any) -> Callable[..., Any]:
    """The torch.compile backend (``backend="tilewright"``).

    ``torch.compile(..., mode="max-autotune")`` or ``options={"mode": "max-autotune"}`` (or
    ``{"autotune": True}``) tunes schedule misses at compile time. ``mode="reduce-overhead"``
    (and ``"max-autotune"``, or ``options={"cudagraphs": True}``) replays each graph as a CUDA
    graph (:mod:`tilewright.runtime.cudagraphs`); explain says whether it is on and why not.
    """
    from torch._dynamo.backends.common import aot_autograd

    # torch.compile passes mode="..." and options={...} as keyword arguments
    opts = dict(options.get("options") or {})
    mode = options.get("mode") or opts.get("mode")
    tune: bool | None = True if (mode == "max-autotune" or opts.get("autotune") or options.get("autotune")) else None
    # "reduce-overhead" (and "max-autotune", as in Inductor) replay graphs as CUDA graphs
    cudagraphs = bool(opts.get("cudagraphs", opts.get("triton.cudagraphs", mode in ("reduce-overhead", "max-autotune"))))
    mode = _kernel_mode(example_inputs)
    if mode == "eager":
        return _as_written(gm)
    sparsity = None
    if opts.get("sparsity") is not None:  # opt-in approximate rewrites (docs/sparsity.md)
        from ..sparsity.apply import sparsify_graph

        gm, sparsity = sparsify_graph(gm, example_inputs, opts["sparsity"])
    attention_blocks: list[dict[str, Any]] = []
    if config.fuse_attention:
        gm, attention_blocks = _rewrite_attention(gm, example_inputs)
    if sparsity is not None:  # the plan's attention sites checked, or calibrated (budget mode)
        sparsity.prepare_attention(gm, example_inputs)

    def fw_compiler(g: fx.GraphModule, ex: list[Any]) -> LazyCompiledGraph:
        lazy = LazyCompiledGraph(g, "forward", tune, cudagraphs)
        lazy.attention_blocks = attention_blocks
        lazy.sparsity = sparsity
        return lazy

    def inference_compiler(g: fx.GraphModule, ex: list[Any]) -> LazyCompiledGraph:
        lazy = LazyCompiledGraph(g, "inference", tune, cudagraphs)
        lazy.attention_blocks = attention_blocks
        lazy.sparsity = sparsity
        lazy.hoist = True
        return lazy

    def bw_compiler(g: fx.GraphModule, ex: list[Any]) -> LazyCompiledGraph:
        return LazyCompiledGraph(g, "backward", tune, cudagraphs)

    compiler = aot_autograd(fw_compiler=fw_compiler, bw_compiler=bw_compiler, inference_compiler=inference_compiler,
                            decompositions=decomposition_table(), keep_inference_input_mutations=True)
    return compiler(gm, example_inputs)


def _kernel_mode(tensors: Sequence[Any]) -> str:
    """Where a graph over ``tensors`` runs: "cuda" (Triton), "cpu" (the native C++ target),
    "interpreter" (Triton's on CPU) or "eager" (no tilewright kernel can run it: see :func:`_eager_reason`)."""
    devices = {a.device.type for a in tensors if isinstance(a, torch.Tensor)}
    if "cuda" in devices:
        return "cuda"
    if cpu_uses_triton():
        return "interpreter" if interpret_mode() else "eager"
    if config.target == "cpu" or native_cpu_problem() is None:
        return "cpu"  # an explicit "cpu" without a compiler fails to compile and says so
    return "eager"


def _eager_reason() -> str:
    """Why graphs over CPU tensors run eagerly, and how to change that."""
    if cpu_uses_triton():
        return ("TILEWRIGHT_TARGET=triton and TILEWRIGHT_INTERPRET is not set: Triton kernels cannot run on CPU "
                "tensors; set TILEWRIGHT_INTERPRET=1 to run them in Triton's interpreter, or TILEWRIGHT_TARGET=auto "
                "for the native C++ target")
    return f"the native CPU target cannot build kernels here: {native_cpu_problem()}"


def _check_cpu_eager(name: str) -> None:
    """Strict mode: refuse to run eagerly; otherwise warn once."""
    global _warned_cpu
    if config.strict:
        raise StrictModeError(f"graph {name} would run eagerly (strict mode is on): {_eager_reason()}")
    if not _warned_cpu:
        warnings.warn(f"tilewright: graphs over CPU tensors run eagerly as written: {_eager_reason()}", stacklevel=3)
        _warned_cpu = True


def count_dynamo_ops(gm: fx.GraphModule) -> int:
    """Compute ops of a Dynamo (torch-level) graph: calls other than getitem and views."""
    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_function":
            count += node.target is not operator.getitem and getattr(node.target, "__name__", "") not in _VIEWS
        elif node.op == "call_method":
            count += node.target not in _VIEWS
        elif node.op == "call_module":
            count += 1
    return count


_VIEWS = frozenset({"view", "reshape", "permute", "transpose", "expand", "contiguous", "size", "dim", "t",
                    "unsqueeze", "squeeze", "flatten", "unflatten", "narrow", "select", "split", "chunk",
                    "view_as", "expand_as", "type_as", "to", "float", "detach"})


def _as_written(gm: fx.GraphModule) -> Callable[..., Any]:
    """Run Dynamo's own graph (not decomposed, no attention rewrite): exactly eager's work."""
    name = f"graph{next(_graph_counter)}_dynamo"
    if config.strict:  # raised when the graph runs: Dynamo would wrap an error raised while compiling

        def refuse(*args: Any) -> Any:
            _check_cpu_eager(name)

        return refuse
    _check_cpu_eager(name)
    report = GraphReport(name)
    report.mode = "eager (cpu)"
    report.compute_ops = count_dynamo_ops(gm)
    report.notes.append(f"ran eagerly as written (Dynamo's graph, not decomposed): {_eager_reason()}")
    publish(report)
    return gm


def _rewrite_attention(gm: fx.GraphModule, example_inputs: list[Any]) -> tuple[fx.GraphModule, list[dict[str, Any]]]:
    from ..passes.fx.attention_rewrite import rewrite_attention

    try:
        return rewrite_attention(gm, example_inputs)
    except Exception as exc:  # an optimisation must never break the program
        log.warning("attention rewrite skipped (%s: %s)", type(exc).__name__, exc)
        return gm, []


def _fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold inference batch norms into the preceding convolutions (exact; 0 when none)."""
    try:
        from ..passes.fx.conv_rewrite import fold_batchnorm

        return fold_batchnorm(gm)
    except Exception as exc:  # an optimisation must never break the program
        log.warning("batch-norm folding skipped (%s: %s)", type(exc).__name__, exc)
        return 0


def register_backend() -> None:
    """Register ``"tilewright"`` with Dynamo (also done by the package entry point)."""
    from torch._dynamo.backends.registry import _BACKENDS, register_backend as _register

    if "tilewright" not in _BACKENDS or _BACKENDS.get("tilewright") is None:
        _register(name="tilewright")(tilewright_backend)
