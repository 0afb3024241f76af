"""Split off the part of a graph that depends only on parameters, buffers and constants.

In inference a good part of each graph reads no user input: the batch-norm fold's per-channel
``scale``/``shift`` (computed from the BN weight, bias and running statistics), dtype casts of
weights, rotary-embedding tables from an ``inv_freq`` buffer and an ``arange``. This pass moves
that part into a graph of its own (the *hoisted* graph, whose inputs are the static inputs it
reads and whose outputs are the values the rest of the graph uses); the rest of the graph reads
those values as new inputs. The runtime (``runtime/hoisted.py``) runs the hoisted graph once
and again only when a parameter or buffer it reads changes.

What is hoisted (:func:`split_static`):

- a node whose inputs are all static inputs, constants or outputs of hoisted nodes, that is
  pure (no randomness, no in-place write) and not a template; generators (``arange``,
  ``full``) count, since their values depend only on the shapes of the specialisation;
- static inputs are the inputs at the positions the frontend names (parameters and buffers),
  except those the graph writes into (a train-mode BN's running statistics);
- only what computes something: a view of a parameter stays where it is;
- never a value the graph returns (directly or through views or extern calls, which may alias
  their input): the caller would get the same tensor on every call;
- only values small enough to keep: at most the bytes of the parameters they read, or
  :attr:`HoistSettings.max_value_bytes`, whichever is larger, and at most
  :attr:`HoistSettings.max_total_bytes` (or the bytes of the parameters read) in all.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ir.graph import Graph, Node, Value, map_values
from ..ir.registry import is_impure, lookup
from ..ir.verify import verify
from .cleanup import dead_code_elimination

log = logging.getLogger(__name__)


@dataclass
class HoistSettings:
    """Switches of parameter-only hoisting (``TILEWRIGHT_HOIST=0`` turns it off)."""

    enabled: bool = field(default_factory=lambda: os.environ.get("TILEWRIGHT_HOIST", "1").strip().lower()
                          not in ("0", "false", "no", "off"))
    #: a cached value may be this large even when it reads fewer bytes of parameters (tables
    #: built from shapes: rotary cos/sin, masks)
    max_value_bytes: int = 4 << 20
    #: all cached values of one specialisation together (or the parameters they read, if more)
    max_total_bytes: int = 64 << 20


settings = HoistSettings()


@dataclass
class HoistSplit:
    """The hoisted graph and how the rest of the graph reads its results."""

    #: inputs: the static inputs it reads (positions 0..n-1); outputs: the cached values, in order
    graph: Graph
    #: caller argument position of each of ``graph``'s inputs
    positions: list[int]
    #: the main graph's new inputs, one per output of ``graph`` (caller positions after the arguments)
    cached: list[Value]
    #: bytes the cached values keep alive (their root buffers)
    cached_bytes: int
    #: compute ops moved into ``graph``
    compute_ops: int


def _kind(node: Node) -> str:
    try:
        return lookup(node.target).kind
    except Exception:  # an op the registry cannot name: treat it as an opaque call
        return "extern"


def _root(v: Value) -> Value:
    while v.producer is not None and v.constant is None and _kind(v.producer) == "view":
        v = v.producer.args[0]
    return v


def _hoistable(node: Node) -> bool:
    kind = _kind(node)
    if kind in ("template",) or is_impure(node.target):
        return False
    extra = lookup(node.target).extra if kind != "extern" else {}
    return not (extra.get("inplace") or extra.get("random_mask"))


def _written_inputs(graph: Graph) -> set[int]:
    """Ids of inputs some node may write into (every tensor argument of an impure node)."""
    written: set[int] = set()
    for node in graph.nodes:
        if is_impure(node.target) or lookup_extra(node).get("inplace"):
            written |= {_root(v).id for v in node.inputs}
    return written


def lookup_extra(node: Node) -> dict[str, Any]:
    """The registry's extra facts of ``node``'s op ({} for an op it cannot name)."""
    try:
        return lookup(node.target).extra
    except Exception:  # an op the registry cannot name
        return {}


def _returned(graph: Graph) -> set[int]:
    """Ids of values the graph may return: outputs, and what reaches them through views or
    extern calls (which may return an alias of an input)."""
    seen: set[int] = set()
    stack = list(graph.output_values())
    while stack:
        v = stack.pop()
        if v.id in seen:
            continue
        seen.add(v.id)
        if v.producer is not None and _kind(v.producer) in ("view", "extern"):
            stack.extend(v.producer.inputs)
    return seen


def _static_nodes(graph: Graph, static: set[int], excluded: set[int]) -> tuple[list[Node], dict[int, frozenset[int]]]:
    """Hoistable nodes in order, and the static inputs each of their outputs reads."""
    reads: dict[int, frozenset[int]] = {v: frozenset([v]) for v in static}
    reads.update({c.id: frozenset() for c in graph.constants})
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.id in excluded or not all(v.id in reads for v in node.inputs) or not _hoistable(node):
            continue
        used = frozenset().union(*(reads[v.id] for v in node.inputs)) if node.inputs else frozenset()
        for o in node.outputs:
            reads[o.id] = used
        nodes.append(node)
    return nodes, reads


def _computes(nodes: list[Node]) -> set[int]:
    """Ids of the values among ``nodes``' outputs that involve an op worth caching: not a view,
    and not a bare generator (``full``, ``arange``: free where a kernel fuses them)."""
    computed: set[int] = set()
    for node in nodes:
        own = _kind(node) != "view" and bool(node.inputs) and not lookup_extra(node).get("generator")
        if own or any(v.id in computed for v in node.inputs):
            computed |= {o.id for o in node.outputs}
    return computed


def _boundary(graph: Graph, nodes: list[Node], computed: set[int]) -> list[Value]:
    """Computed hoisted values read by a node that stays (in first-use order, once each)."""
    inside = {n.id for n in nodes if any(o.id in computed for o in n.outputs)}
    found: dict[int, Value] = {}
    for node in graph.nodes:
        if node.id in inside:
            continue
        for v in node.inputs:
            if v.id in computed:
                found.setdefault(v.id, v)
    return list(found.values())


def _too_big(boundary: list[Value], reads: dict[int, frozenset[int]], sizes: dict[int, int]) -> list[Value]:
    """Boundary values over the size limits (the largest first when the total is over)."""
    bad = [v for v in boundary
           if _root(v).type.span_bytes > max(settings.max_value_bytes, sum(sizes[i] for i in reads[v.id]))]
    ok = [v for v in boundary if v not in bad]
    roots = {_root(v).id: _root(v).type.span_bytes for v in ok}
    budget = max(settings.max_total_bytes, sum(sizes[i] for i in frozenset().union(*(reads[v.id] for v in ok))))
    total = sum(roots.values())
    for v in sorted(ok, key=lambda v: -roots[_root(v).id]):
        if total <= budget:
            break
        if _root(v).id in roots:
            total -= roots.pop(_root(v).id)
        bad.append(v)
    return bad


def _choose(graph: Graph, static: set[int]) -> tuple[list[Node], list[Value]]:
    """The hoisted nodes and boundary values, shrunk until nothing returned or too big remains."""
    returned = _returned(graph)
    sizes = {v.id: v.type.span_bytes for v in graph.inputs}
    excluded: set[int] = set()
    while True:
        nodes, reads = _static_nodes(graph, static, excluded)
        computed = _computes(nodes)
        # a returned value stays in the graph (hoisting the nodes before it is fine)
        bad_nodes = {n.id for n in nodes if any(o.id in returned and o.id in computed for o in n.outputs)}
        boundary = _boundary(graph, nodes, computed)
        bad_nodes |= {v.producer.id for v in _too_big(boundary, reads, sizes) if v.producer is not None}
        if not bad_nodes:
            return nodes, boundary
        excluded |= bad_nodes


def _copy_subgraph(graph: Graph, nodes: list[Node], boundary: list[Value]) -> tuple[Graph, list[int]]:
    """A new graph computing ``boundary`` from the static inputs and constants it needs."""
    needed: set[int] = set()
    by_output = {o.id: n for n in nodes for o in n.outputs}
    stack = list(boundary)
    while stack:
        v = stack.pop()
        node = by_output.get(v.id)
        if node is None or node.id in needed:
            continue
        needed.add(node.id)
        stack.extend(node.inputs)
    out = Graph()
    mapping: dict[int, Value] = {}
    positions: list[int] = []
    used = {v.id for n in nodes if n.id in needed for v in n.inputs}
    for v, position in zip(graph.inputs, graph.input_positions):
        if v.id in used:
            mapping[v.id] = out.add_input(v.name, v.type)
            out.input_positions.append(len(positions))
            positions.append(position)
    for c in graph.constants:
        if c.id in used:
            mapping[c.id] = out.add_constant(c.name, c.constant)  # type: ignore[arg-type]
    for node in graph.nodes:
        if node.id not in needed:
            continue
        fn = lambda v: mapping[v.id]  # noqa: E731
        copy = out.add_node(node.op, node.target, map_values(node.args, fn), map_values(node.kwargs, fn),
                            [o.type for o in node.outputs], name=node.outputs[0].name if node.outputs else None)
        copy.meta = dict(node.meta)
        for o, c in zip(node.outputs, copy.outputs):
            mapping[o.id] = c
    out.outputs = tuple(mapping[v.id] for v in boundary)
    return out, positions


def split_static(graph: Graph, static_positions: Collection[int], n_args: int) -> HoistSplit | None:
    """Move ``graph``'s parameter-only part into a graph of its own (None: nothing worth it).

    ``static_positions``: caller argument positions holding parameters or buffers; ``n_args``:
    how many arguments the caller passes (the cached values are read at ``n_args + i``).
    ``graph`` is changed in place: it reads the cached values as new inputs.
    """
    written = _written_inputs(graph)
    wanted = set(static_positions)
    static = {v.id for v, p in zip(graph.inputs, graph.input_positions) if p in wanted and v.id not in written}
    if not static and not any(not n.inputs for n in graph.nodes):
        return None
    nodes, boundary = _choose(graph, static)
    if not boundary:
        return None
    hoisted, positions = _copy_subgraph(graph, nodes, boundary)
    compute_ops = sum(1 for n in hoisted.nodes if _kind(n) != "view")
    cached_bytes = sum(r.type.span_bytes for r in {_root(v).id: _root(v) for v in boundary}.values())
    cached: list[Value] = []
    for i, v in enumerate(boundary):
        new = graph.add_input(f"{v.name}_hoisted", v.type)
        graph.input_positions.append(n_args + i)
        graph.replace_all_uses(v, new)
        cached.append(new)
    dead_code_elimination(graph)
    verify(graph, "hoist")
    verify(hoisted, "hoist (hoisted part)")
    log.debug("hoisted %d ops (%d bytes cached) reading %d static inputs", compute_ops, cached_bytes, len(positions))
    return HoistSplit(hoisted, positions, cached, cached_bytes, compute_ops)


def static_positions_of(inputs: list[Any]) -> list[int]:
    """Positions of ``inputs`` that are parameters or buffers.

    Dynamo lifts a module's parameters and buffers as graph inputs and marks each tensor with
    ``_dynamo_static_input_type`` (so does ``torch._dynamo.mark_static_address``); parameters are
    also ``nn.Parameter``s. NOTE: AOTAutograd's ``static_input_indices`` are derived from the same
    marks, but they index its own flat arguments: empty for a graph whose arguments start with
    effect tokens (Hugging Face LLaMA), so the tensors are asked directly.
    """
    return [p for p, t in enumerate(inputs) if isinstance(t, torch.Tensor) and
            (isinstance(t, torch.nn.Parameter) or getattr(t, "_dynamo_static_input_type", None))]
