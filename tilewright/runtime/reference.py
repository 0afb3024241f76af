"""Running IR nodes by their torch ops: the reference every kernel is checked against and
falls back to, and the evaluation of views over available tensors."""
from __future__ import annotations

import torch

from ..ir.graph import Node, Value, map_values
from ..ir.registry import lookup


def evaluate_value(v: Value, env: dict[int, torch.Tensor]) -> torch.Tensor:
    """``env[v]``, computing views of available tensors on demand (with their torch op)."""
    if v.id in env:
        return env[v.id]
    if v.constant is not None:
        return v.constant
    node = v.producer
    if node is None or lookup(node.target).kind != "view":
        raise KeyError(f"value %{v.name} is not available")
    args = map_values(node.args, lambda a: evaluate_value(a, env))
    kwargs = map_values(node.kwargs, lambda a: evaluate_value(a, env))
    result = node.target(*args, **kwargs)
    outs = list(result) if isinstance(result, (list, tuple)) else [result]
    for o, t in zip(node.outputs, outs):
        env[o.id] = t
    return env[v.id]


def run_reference(nodes: list[Node], env: dict[int, torch.Tensor]) -> None:
    """Run ``nodes`` with their torch ops, writing outputs into ``env``."""
    for node in nodes:
        args = map_values(node.args, lambda a: evaluate_value(a, env))
        kwargs = map_values(node.kwargs, lambda a: evaluate_value(a, env))
        result = node.target(*args, **kwargs)
        outs = [r for r in result if isinstance(r, torch.Tensor)] if isinstance(result, (list, tuple)) else [result]
        for o, t in zip(node.outputs, outs):
            env[o.id] = t
