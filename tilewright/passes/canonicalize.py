"""Canonicalisation: rewrite ops into the forms later passes expect.

- ``addmm(bias, a, b, beta, alpha)``  ->  ``add(mul(mm(a, b), alpha), mul(bias, beta))``  (the
  bias becomes a fusable epilogue of the matmul template)
- ``baddbmm`` likewise with ``bmm``
- ``alias``/``detach`` chains and no-op views (same shape and strides) are bypassed
"""
from __future__ import annotations

import torch

from ..ir.graph import Graph, Node, Value
from ..ir.registry import packet_name
from ..ir.types import TensorType
from .rewrite import new_node, replace_nodes, take_over_output

aten = torch.ops.aten


def _contiguous(shape: tuple[int, ...], like: TensorType) -> TensorType:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return TensorType(tuple(shape), like.dtype, tuple(reversed(strides)), like.device)


def _new_node(graph: Graph, op_target: object, args: tuple, kwargs: dict, out: TensorType, name: str) -> Node:
    return new_node(graph, op_target, args, kwargs, name, out)


def _split_addmm(graph: Graph, node: Node) -> list[Node] | None:
    name = packet_name(node.target)
    if name not in ("aten.addmm", "aten.baddbmm"):
        return None
    bias, a, b = node.args[:3]
    beta = node.kwargs.get("beta", 1)
    alpha = node.kwargs.get("alpha", 1)
    out = node.out
    mm_target = aten.mm.default if name == "aten.addmm" else aten.bmm.default
    mm = _new_node(graph, mm_target, (a, b), {}, _contiguous(out.type.shape, out.type), out.name + "_mm")
    new_nodes = [mm]
    product: Value = mm.out
    if alpha != 1:
        scaled = _new_node(graph, aten.mul.Tensor, (product, alpha), {}, product.type, out.name + "_alpha")
        new_nodes.append(scaled)
        product = scaled.out
    if beta == 0:
        final_src = product
        add = _new_node(graph, aten.clone.default, (final_src,), {}, out.type, out.name + "_out")
    else:
        bias_term = bias
        if beta != 1:
            sb = _new_node(graph, aten.mul.Tensor, (bias, beta), {}, bias.type, out.name + "_beta")
            new_nodes.append(sb)
            bias_term = sb.out
        add = _new_node(graph, aten.add.Tensor, (product, bias_term), {}, out.type, out.name)
    new_nodes.append(add)
    take_over_output(new_nodes, out)
    return new_nodes


def canonicalize(graph: Graph) -> int:
    """Apply the canonical rewrites above; returns the number of rewritten nodes."""
    changed = replace_nodes(graph, _split_addmm)
    # bypass identity views (same shape and strides as their input)
    for node in list(graph.nodes):
        if packet_name(node.target) in ("aten.alias", "aten.detach", "aten.view", "aten._unsafe_view",
                                        "aten.reshape") and node.args and isinstance(node.args[0], Value):
            src: Value = node.args[0]
            out = node.outputs[0]
            if src.type.shape == out.type.shape and src.type.strides == out.type.strides and \
                    src.type.offset == out.type.offset and src.type.dtype == out.type.dtype:
                graph.rebuild_users()
                graph.replace_all_uses(out, src)
                changed += 1
    graph.rebuild_users()
    return changed
