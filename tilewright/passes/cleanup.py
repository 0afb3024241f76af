"""Generic clean-up passes: dead-code elimination, CSE and constant folding."""
from __future__ import annotations

import logging
from typing import Any

import torch

from ..ir.graph import Graph, Value, map_values
from ..ir.registry import is_impure, lookup

log = logging.getLogger(__name__)

#: constants larger than this many elements are not folded (generators stay fusable)
FOLD_LIMIT = 1 << 16


def dead_code_elimination(graph: Graph) -> int:
    """Remove pure nodes none of whose outputs are used."""
    live = {v.id for v in graph.output_values()}
    keep = []
    removed = 0
    for node in reversed(graph.nodes):
        if is_impure(node.target) or any(o.id in live for o in node.outputs):
            keep.append(node)
            live.update(v.id for v in node.inputs)
        else:
            removed += 1
    keep.reverse()
    graph.nodes = keep
    graph.rebuild_users()
    return removed


def _key(obj: Any) -> Any:
    if isinstance(obj, Value):
        return ("%", obj.id)
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(_key(o) for o in obj))
    if isinstance(obj, dict):
        return tuple(sorted((k, _key(v)) for k, v in obj.items()))
    if isinstance(obj, float) and obj != obj:
        return ("nan",)
    return (type(obj).__name__, repr(obj))


def common_subexpression_elimination(graph: Graph) -> int:
    """Merge pure nodes with the same op and the same arguments."""
    seen: dict[Any, Any] = {}
    replaced = 0
    for node in list(graph.nodes):
        if is_impure(node.target):
            continue
        key = (node.op, _key(node.args), _key(node.kwargs))
        prior = seen.get(key)
        if prior is None:
            seen[key] = node
            continue
        for old, new in zip(node.outputs, prior.outputs):
            graph.replace_all_uses(old, new)
        replaced += 1
    if replaced:
        dead_code_elimination(graph)
    return replaced


def constant_folding(graph: Graph) -> int:
    """Evaluate pure nodes whose tensor inputs are all constants (small outputs only)."""
    folded = 0
    constants = {v.id: v for v in graph.constants}
    for node in list(graph.nodes):
        inputs = node.inputs
        if not inputs or is_impure(node.target) or lookup(node.target).kind in ("template",):
            continue
        if not all(v.id in constants for v in inputs):
            continue
        if any(o.type.numel > FOLD_LIMIT for o in node.outputs):
            continue
        fn = lambda v: constants[v.id].constant  # noqa: E731
        try:
            with torch.no_grad():
                result = node.target(*map_values(node.args, fn), **map_values(node.kwargs, fn))
        except Exception as exc:  # folding is an optimisation: keep the node
            log.debug("constant folding skipped %s: %s", node.op, exc)
            continue
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        results = [r for r in results if isinstance(r, torch.Tensor)]
        if len(results) != len(node.outputs):
            continue
        for out, value in zip(node.outputs, results):
            if tuple(value.stride()) != out.type.strides:
                value = torch.empty_strided(out.type.shape, out.type.strides, dtype=value.dtype,
                                            device=value.device).copy_(value)
            const = graph.add_constant(out.name + "_folded", value)
            constants[const.id] = const
            graph.replace_all_uses(out, const)
        folded += 1
    if folded:
        dead_code_elimination(graph)
    return folded
