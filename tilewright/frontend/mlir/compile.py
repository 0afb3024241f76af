"""Compiles an imported MLIR graph the way the FX path compiles a Dynamo graph.

:class:`CompiledMlir` (what ``tilewright.compile_mlir`` returns) keeps one compiled graph per
input signature. For each, :func:`prepare_graph` mirrors the FX path: specialise shapes (and
recompose again for dynamic modules), lower reshapes, fuse attention blocks
(``passes.attention_rewrite``), pass weights as inputs as AOTAutograd passes parameters, and
re-trace with the backend's decomposition table; then ``frontend.api.compile_graph`` compiles.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
import torch.fx

from .ops import resolve_shapes

if TYPE_CHECKING:
    from . import ImportedMlir

logger = logging.getLogger(__name__)


class CompiledMlir:
    """A callable over torch tensors running an imported MLIR function through tilewright.

    One compiled graph is kept per (shapes, dtypes, device) of the inputs. Results mirror the
    MLIR function: one tensor for a single result, else a tuple.
    """

    def __init__(self, imported: ImportedMlir, **compile_options: Any) -> None:
        self.imported = imported
        self.compile_options = compile_options
        self._cache: dict[tuple[Any, ...], Callable[..., Any]] = {}

    def __call__(self, *inputs: torch.Tensor) -> Any:
        self._check_inputs(inputs)
        key = tuple((tuple(t.shape), t.dtype, str(t.device)) for t in inputs)
        fn = self._cache.get(key)
        if fn is None:
            gm = retarget(self.imported.graph_module, inputs[0].device if inputs else torch.device("cpu"))
            fn = _compile_graph(gm, list(inputs), **self.compile_options)
            self._cache[key] = fn
        outs = fn(*inputs)
        outs = tuple(outs) if isinstance(outs, (list, tuple)) else (outs,)
        return outs[0] if len(outs) == 1 else outs

    def _check_inputs(self, inputs: Sequence[torch.Tensor]) -> None:
        types = self.imported.input_types
        if len(inputs) != len(types):
            raise TypeError(f"{self.imported.source}:@{self.imported.func_name} takes {len(types)} "
                            f"tensors ({self.imported.signature()}), got {len(inputs)}")
        for i, (t, ttype) in enumerate(zip(inputs, types)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"input {i} must be a torch.Tensor, got {type(t).__name__}")
            if ttype.dtype is not None and t.dtype != ttype.dtype:
                raise TypeError(f"input {i}: dtype {t.dtype}, the module declares {ttype.dtype}")
            resolve_shapes([ttype], [tuple(t.shape)])


def retarget(gm: torch.fx.GraphModule, device: torch.device) -> torch.fx.GraphModule:
    """A copy of ``gm`` with its constants and device arguments on ``device`` (``gm`` if CPU).

    torch-mlir bakes the export device into ops that create tensors (``arange``, ``full``...).
    """
    if device.type == "cpu":
        return gm
    root = torch.nn.Module()
    for name, buf in gm.named_buffers():
        root.register_buffer(name, buf.to(device))
    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))

    def move(a: Any) -> Any:
        return device if isinstance(a, torch.device) else a

    for node in graph.nodes:
        node.args = torch.fx.node.map_aggregate(node.args, move)
        node.kwargs = torch.fx.node.map_aggregate(node.kwargs, move)
    return torch.fx.GraphModule(root, graph)


def prepare_graph(gm: torch.fx.GraphModule, example_inputs: Sequence[torch.Tensor],
                  ) -> tuple[torch.fx.GraphModule, list[dict[str, Any]], list[torch.Tensor]]:
    """The imported graph made ready for ``compile_graph``, as the FX path prepares its own.

    A copy of ``gm`` (constants shared) gets shapes for ``example_inputs`` (a module with
    dynamic dims is specialised to them and recomposed again), its reshapes lowered,
    attention blocks fused (``passes.attention_rewrite``, when ``config.fuse_attention``), and is
    re-traced with the backend's decomposition table, which is what AOTAutograd does on the FX
    path. Weights become trailing inputs, as parameters are on the FX path.

    Returns:
        The graph, one info dict per fused attention block, and the weight tensors to pass
        after the inputs.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    from .check import check_declared_types, lower_reshapes, specialize
    from .recompose import recompose_graph

    graph = torch.fx.Graph()
    graph.output(graph.graph_copy(gm.graph, {}))
    work = torch.fx.GraphModule(gm, graph)
    with torch.no_grad():
        check_declared_types(work, list(example_inputs))
        if specialize(work):  # dynamic dims: recompose again now that shapes are known
            recompose_graph(work)
            check_declared_types(work, list(example_inputs))
    lower_reshapes(work)
    blocks = _fuse_attention(work)
    _materialize_constants(work)
    weights = _lift_weights(work)
    try:
        from ..decompositions import decomposition_table
    except ModuleNotFoundError:
        return work, blocks, weights
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)  # small constants stay real, inputs are fake
    fakes = [mode.from_tensor(t) for t in [*example_inputs, *weights]]
    with torch.no_grad(), mode:
        traced = make_fx(work, decomposition_table=decomposition_table())(*fakes)
    return traced, blocks, weights


def _lift_weights(gm: torch.fx.GraphModule) -> list[torch.Tensor]:
    """Turn every non-scalar constant into a trailing graph input; returns their tensors.

    NOTE: AOTAutograd hands the FX path's parameters and buffers to the compiler as inputs, so
    the MLIR path does the same: the compiler sees the same graph, folds the same things and
    reports the same coverage.
    """
    graph = gm.graph
    anchor = [n for n in graph.nodes if n.op == "placeholder"]
    weights: list[torch.Tensor] = []
    for n in list(graph.nodes):
        value = getattr(gm, str(n.target), None) if n.op == "get_attr" else None
        if not isinstance(value, torch.Tensor) or value.numel() <= 1:
            continue
        ctx = graph.inserting_after(anchor[-1]) if anchor else graph.inserting_before(next(iter(graph.nodes)))
        with ctx:
            ph = graph.placeholder(f"weight{len(weights)}")
        ph.meta.update(n.meta)
        n.replace_all_uses_with(ph)
        graph.erase_node(n)
        anchor.append(ph)
        weights.append(value)
    gm.recompile()
    return weights


def _materialize_constants(gm: torch.fx.GraphModule) -> None:
    """Turn the ``full`` masks recomposition made (unused by attention) back into buffers."""
    for n in list(gm.graph.nodes):
        if n.target is torch.ops.aten.full.default and str(n.meta.get("mlir_op", "")).startswith("constant"):
            name = f"_mlir_full{len(list(gm.buffers()))}"
            gm.register_buffer(name, n.target(*n.args, **n.kwargs))
            with gm.graph.inserting_before(n):
                const = gm.graph.get_attr(name)
            const.meta.update(n.meta)
            n.replace_all_uses_with(const)
            gm.graph.erase_node(n)
    gm.recompile()


def _fuse_attention(gm: torch.fx.GraphModule) -> list[dict[str, Any]]:
    from ...config import config
    from ...passes.fx.attention_rewrite import fuse_attention_blocks

    if not getattr(config, "fuse_attention", True):
        return []
    try:
        return fuse_attention_blocks(gm)
    except Exception as exc:  # noqa: BLE001 - an optimisation must never break the program
        logger.warning("attention rewrite skipped (%s: %s)", type(exc).__name__, exc)
        return []


def _compile_graph(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor],
                   **options: Any) -> Callable[..., Any]:
    """Hand the graph to the compiler core (``tilewright.frontend.api.compile_graph``)."""
    from ..api import compile_graph

    prepared, blocks, weights = prepare_graph(gm, example_inputs)
    run = compile_graph(prepared, [*example_inputs, *weights], **options)
    lazy = getattr(run, "lazy", None)
    if lazy is not None:
        lazy.attention_blocks = blocks  # reported as "attention blocks fused", as on the FX path

    def call(*inputs: torch.Tensor) -> Any:
        return run(*inputs, *weights)

    call.lazy = lazy  # type: ignore[attr-defined]
    return call
