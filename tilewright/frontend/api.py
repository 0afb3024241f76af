"""Public entry points beyond the backend: ``explain``, ``compile_graph``, ``tunable_kernels``."""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx as fx

from ..report import Report, collect

log = logging.getLogger(__name__)


def explain(model_or_fn: Callable[..., Any], *example_inputs: Any, training: bool | None = None,
            **example_kwargs: Any) -> Report:
    """Compile ``model_or_fn`` with tilewright, run it once on ``example_inputs`` and report.

    Keyword arguments other than ``training`` are passed to the model too
    (``explain(model, **tokenizer_output)``).

    The report lists every generated kernel (kind, fused ops, schedule), every fallback with its
    reason, the coverage (share of compute ops running in generated kernels) and the number of
    attention blocks fused. With ``training=True`` (default: whether any parameter or input
    requires grad and the module is in training mode) a backward pass is compiled too.
    """
    torch._dynamo.reset()
    compiled = torch.compile(model_or_fn, backend="tilewright")
    if training is None:
        params = list(model_or_fn.parameters()) if isinstance(model_or_fn, torch.nn.Module) else []
        training = bool(isinstance(model_or_fn, torch.nn.Module) and model_or_fn.training and
                        any(p.requires_grad for p in params))
    with collect() as report:
        if training:
            out = compiled(*example_inputs, **example_kwargs)
            loss = _first_tensor(out)
            if loss is not None and loss.requires_grad:
                loss.float().sum().backward()
        else:
            with torch.no_grad():
                compiled(*example_inputs, **example_kwargs)
    torch._dynamo.reset()
    return report


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    return None


def compile_graph(gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
    """Compile an ATen-level FX graph (no autograd) into a callable over torch tensors.

    Used by the MLIR frontend; the callable takes the graph's inputs positionally and returns
    what the graph returns.
    """
    from .backend import LazyCompiledGraph

    lazy = LazyCompiledGraph(gm, "inference")

    def run(*args: Any) -> Any:
        return lazy(list(args))

    run.lazy = lazy  # type: ignore[attr-defined]
    return run


def tunable_kernels(model: Callable[..., Any], example_inputs: Sequence[Any] | Mapping[str, Any]) -> list[Any]:
    """Every kernel of ``model`` on ``example_inputs`` (one per problem), as tuner-ready objects.

    ``example_inputs``: positional arguments, or a mapping of keyword arguments.
    """
    if isinstance(example_inputs, Mapping):
        report = explain(model, **example_inputs)
    else:
        report = explain(model, *example_inputs)
    kernels: list[Any] = []
    seen: set[str] = set()
    for graph in report.graphs:
        for kernel in graph.tunable_kernels:
            if kernel.problem.key() not in seen:
                seen.add(kernel.problem.key())
                kernels.append(kernel)
    return kernels
