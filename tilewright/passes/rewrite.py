"""Shared machinery of node-replacing passes: build typed nodes, splice replacements in."""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..ir.graph import Graph, Node, Value
from ..ir.registry import overload_name
from ..ir.types import TensorType


def _meta(a: Any) -> Any:
    if isinstance(a, Value):
        return torch.empty_strided(a.type.shape, a.type.strides, dtype=a.type.dtype, device="meta")
    if isinstance(a, (list, tuple)):
        return type(a)(_meta(x) for x in a)
    return a


def new_node(graph: Graph, target: Any, args: tuple, kwargs: dict, name: str,
             out_type: TensorType | None = None) -> Node:
    """A node not yet in ``graph.nodes``; its output type is ``out_type`` or torch's meta result."""
    node = Node(overload_name(target), target, args, kwargs)
    if out_type is None:
        out = target(*_meta(args), **{k: _meta(v) for k, v in kwargs.items()})
        device = next((a.type.device for a in args if isinstance(a, Value)), torch.device("cpu"))
        out_type = TensorType(tuple(out.shape), out.dtype, tuple(out.stride()), device)
    node.outputs.append(Value(graph.fresh_name(name), out_type, node, 0))
    return node


def take_over_output(new: list[Node], original: Value) -> None:
    """Make the last of ``new`` produce ``original`` (so every use of it stays valid)."""
    last = new[-1]
    last.outputs[0] = original
    original.producer = last


def replace_nodes(graph: Graph, rewrite: Callable[[Graph, Node], list[Node] | None]) -> int:
    """Replace each node for which ``rewrite`` returns new nodes; returns how many were replaced."""
    replaced = 0
    nodes: list[Node] = []
    for node in graph.nodes:
        replacement = rewrite(graph, node)
        if replacement is None:
            nodes.append(node)
        else:
            nodes.extend(replacement)
            replaced += 1
    graph.nodes = nodes
    if replaced:
        graph.rebuild_users()
    return replaced
