"""Split reductions: few long rows become many short rows plus a small second reduction.

A reduction with few rows and a very long reduced extent (a loss summed to a scalar, a bias
gradient summed over every token) would run on a handful of programs and leave most of a GPU
idle. When the reduced dimensions form one block of adjacent dimensions whose extent ``R`` has a
divisor ``S`` in a useful range, ::

    sum(x, dims)  ->  sum(sum(view(x, [..., S, R/S, ...]), inner), outer)

so the first kernel reduces ``rows * S`` short rows in parallel and the second reduces ``S``
partial results per row. ``mean`` becomes a split ``sum`` divided by ``R``; ``amax``/``amin``
/``any``/``all`` split as themselves. Exact for integer and min/max reductions; for floating
sums the order of additions changes, as any parallel reduction's does.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..ir.graph import Graph, Node, Value
from .rewrite import new_node, replace_nodes, take_over_output
from ..ir.registry import lookup, packet_name, reduction_dims, schema_argument

aten = torch.ops.aten

#: split only when there are at most this many rows ...
MAX_ROWS = 128
#: ... and at least this many reduced elements per row
MIN_RNUMEL = 1 << 15
#: target length of the partial rows
TARGET_CHUNK = 2048


def _node(target: Any, args: tuple, kwargs: dict, name: str, graph: Graph) -> Node:
    return new_node(graph, target, args, kwargs, name)


def _split_factor(extent: int) -> int | None:
    best = None
    for s in range(2, 1025):
        if extent % s == 0 and extent // s >= 256:
            if best is None or abs(extent // s - TARGET_CHUNK) < abs(extent // best - TARGET_CHUNK):
                best = s
    return best


def _keepdim(node: Node) -> bool:
    return bool(schema_argument(node.target, node.args, node.kwargs, "keepdim", False))


def split_reductions(graph: Graph) -> int:
    """Rewrite long, few-row reductions into two levels; returns the number rewritten."""
    return replace_nodes(graph, _split)


def _split(graph: Graph, node: Node) -> list[Node] | None:
    op = lookup(node.target)
    name = packet_name(node.target)
    if op.kind != "reduction" or name not in ("aten.sum", "aten.mean", "aten.amax", "aten.amin", "aten.any",
                                             "aten.all") or len(node.outputs) != 1:
        return None
    if any(isinstance(v, Value) for v in node.kwargs.values()) or node.kwargs.get("dtype") is not None:
        return None
    src = node.args[0]
    if not isinstance(src, Value) or src.type.rank == 0:
        return None
    dims = reduction_dims(node.target, node.args, node.kwargs, src.type.rank)
    if dims != list(range(dims[0], dims[-1] + 1)):
        return None
    shape = list(src.type.shape)
    extent = math.prod(shape[d] for d in dims)
    rows = src.type.numel // max(extent, 1)
    if rows > MAX_ROWS or extent < MIN_RNUMEL:
        return None
    s = _split_factor(extent)
    if s is None:
        return None
    out = node.outputs[0]
    keepdim = _keepdim(node)
    first = dims[0]
    view_shape = shape[:first] + [s, extent // s] + shape[dims[-1] + 1:]
    view = _node(aten.reshape.default, (src, view_shape), {}, out.name + "_split_view", graph)
    combine = {"aten.mean": aten.sum.dim_IntList, "aten.sum": aten.sum.dim_IntList, "aten.amax": aten.amax.default,
               "aten.amin": aten.amin.default, "aten.any": aten.any.dims, "aten.all": aten.all.dims}[name]
    widen = name in ("aten.sum", "aten.mean") and src.type.dtype in (torch.float16, torch.bfloat16)
    acc_kwargs = {"dtype": torch.float32} if widen else {}  # partial sums stay in float32
    partial = _node(combine, (view.outputs[0], [first + 1], False), acc_kwargs, out.name + "_partial", graph)
    final = _node(combine, (partial.outputs[0], [first], keepdim), acc_kwargs, out.name + "_final", graph)
    new = [view, partial, final]
    result: Value = final.outputs[0]
    if keepdim and len(dims) > 1:  # keepdim over several dims: restore every kept size-1 dim
        reshape = _node(aten.reshape.default, (result, list(out.type.shape)), {}, out.name + "_keep", graph)
        new.append(reshape)
        result = reshape.outputs[0]
    if name == "aten.mean":
        div = _node(aten.div.Tensor, (result, float(extent)), {}, out.name + "_mean", graph)
        new.append(div)
        result = div.outputs[0]
    if widen:
        cast = _node(aten._to_copy.default, (result,), {"dtype": out.type.dtype}, out.name + "_cast", graph)
        new.append(cast)
        result = cast.outputs[0]
    if result.type.shape != out.type.shape or result.type.dtype != out.type.dtype:
        return None
    take_over_output(new, out)
    return new
