"""View ops as index transforms: output multi-index -> input multi-index.

Used when a view's input is computed inside the same fused kernel; a view of a materialised
buffer needs no transform (the buffer is read through the view's own strides).
"""
from __future__ import annotations

from typing import Sequence

from ....ir.graph import Node, Value
from ....ir.registry import packet_name
from .indexing import Affine, Atom, Const, broadcast_index, reshape_index


def _norm(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def view_input_index(node: Node, output: Value, idx: Sequence[Atom]) -> tuple[Atom, ...] | None:
    """The index into ``node``'s tensor input for ``idx`` into ``output``; None if unsupported."""
    name = packet_name(node.target)
    src: Value = node.args[0]
    in_shape = src.type.shape
    out_shape = output.type.shape
    rank_in = len(in_shape)
    if name in ("aten.view", "aten._unsafe_view", "aten.reshape", "aten.squeeze", "aten.unsqueeze"):
        return reshape_index(idx, out_shape, in_shape)
    if name in ("aten.alias", "aten.detach"):
        return tuple(idx)
    if name == "aten.permute":
        dims = [_norm(d, rank_in) for d in node.args[1]]
        result: list[Atom] = [Const(0)] * rank_in
        for i, d in enumerate(dims):
            result[d] = idx[i]
        return tuple(result)
    if name in ("aten.transpose", "aten.t"):
        if name == "aten.t" or len(node.args) < 3:
            d0, d1 = (0, 1) if rank_in == 2 else (0, 0)
        else:
            d0, d1 = _norm(node.args[1], rank_in), _norm(node.args[2], rank_in)
        result = list(idx)
        result[d0], result[d1] = idx[d1], idx[d0]
        return tuple(result)
    if name in ("aten.expand", "aten.expand_as"):
        return broadcast_index(idx, out_shape, in_shape)
    if name == "aten.slice":
        dim = _norm(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), rank_in)
        start = node.args[2] if len(node.args) > 2 else node.kwargs.get("start")
        step = node.args[4] if len(node.args) > 4 else node.kwargs.get("step", 1)
        start = 0 if start is None else start
        if start < 0:
            start += in_shape[dim]
        start = max(0, min(start, in_shape[dim]))
        result = list(idx)
        result[dim] = Affine(idx[dim], step, start) if (step != 1 or start) else idx[dim]
        return tuple(result)
    if name == "aten.select":
        dim = _norm(node.args[1], rank_in)
        index = node.args[2]
        if index < 0:
            index += in_shape[dim]
        result = list(idx)
        result.insert(dim, Const(index))
        return tuple(result)
    if name in ("aten.split", "aten.split_with_sizes"):
        dim = _norm(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0), rank_in)
        offset = 0
        for o in node.outputs:
            if o is output:
                break
            offset += o.type.shape[dim]
        result = list(idx)
        result[dim] = Affine(idx[dim], 1, offset) if offset else idx[dim]
        return tuple(result)
    if name == "aten.unbind":
        dim = _norm(node.args[1] if len(node.args) > 1 else 0, rank_in)
        result = list(idx)
        result.insert(dim, Const(output.index))
        return tuple(result)
    return None
