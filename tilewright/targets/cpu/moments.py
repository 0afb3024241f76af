"""Sums of squared deviations from a row mean, and means written as ``sum / N``, recognised so a
reduction kernel computes them without the float32 roundings the decomposed graph implies.

Variance, layer norm and RMS-style graphs reach the CPU target decomposed: ``m = sum(a) / N``,
``d = a - m``, ``s = d * d`` (or ``d ** 2``), ``sum(s)``. Taken literally, ``m`` is rounded to
float32 before ``d``, which adds the rounding error squared to the variance: for rows whose mean
dwarfs their spread (values near 1e5 with unit spread) that swamps it, where eager's ``var``
(computed in double) does not lose it. The kernel still makes two passes (mean first, then
deviations: no one-pass sum-of-squares cancellation); the second accumulates ``t = a - c`` and
``t^2`` with ``c`` the mean rounded to ``a``'s type and takes ``sum(t^2) - sum(t)^2 / N``, exact for
any shift (``reduction_vector.py``). Other users of ``d`` and ``s`` keep the graph's float values.
``m`` itself is computed from the sum's double accumulator (:func:`mean_divisions`).
"""
from __future__ import annotations

import torch

from ...ir.graph import Node, Value
from ...ir.registry import packet_name

_FLOATS = (torch.float32, torch.float64)


def _squared(node: Node | None) -> Value | None:
    """``d`` when ``node`` computes ``d * d`` or ``d ** 2``."""
    if node is None:
        return None
    name, args = packet_name(node.target), node.args
    if name == "aten.mul" and len(args) == 2 and all(isinstance(a, Value) for a in args) and args[0].id == args[1].id:
        return args[0]
    if name == "aten.pow" and isinstance(args[0], Value) and not isinstance(args[1], Value) and args[1] == 2:
        return args[0]
    return None


def _mean_of(node: Node | None, producers: dict[int, Node], reductions: list[Node], count: int) -> Node | None:
    """The sum/mean reduction whose mean ``node`` is (``mean(a)`` or ``sum(a) / N``), or None."""
    if node is None:
        return None
    name = packet_name(node.target)
    if node in reductions and name == "aten.mean":
        return node
    if name == "aten.div" and isinstance(node.args[0], Value) and not isinstance(node.args[1], Value) \
            and node.args[1] == count and node.kwargs.get("rounding_mode") is None:
        total = producers.get(node.args[0].id)
        if total is not None and total in reductions and packet_name(total.target) == "aten.sum":
            return total
    return None


def deviation_sums(nodes: list[Node], reductions: list[Node], level: dict[int, int],
                   count: int) -> dict[int, tuple[Value, Node]]:
    """Reductions summing squared deviations of ``a`` from ``a``'s mean over the same rows:
    reduction output id -> (``a``, the reduction whose accumulator is ``sum(a)``)."""
    producers = {n.outputs[0].id: n for n in nodes}
    found: dict[int, tuple[Value, Node]] = {}
    for r in reductions:
        if packet_name(r.target) not in ("aten.sum", "aten.mean") or not isinstance(r.args[0], Value):
            continue
        d = _squared(producers.get(r.args[0].id))
        sub = producers.get(d.id) if d is not None else None
        if sub is None or packet_name(sub.target) != "aten.sub" or sub.kwargs.get("alpha", 1) != 1 \
                or not all(isinstance(a, Value) for a in sub.args[:2]):
            continue
        a, m = sub.args[0], sub.args[1]
        total = _mean_of(producers.get(m.id), producers, reductions, count)
        if total is None or total.args[0].id != a.id or level.get(a.id, 0) != 0:
            continue
        if any(v.type.dtype not in _FLOATS for v in (a, d, r.args[0], r.outputs[0], total.outputs[0])):
            continue
        found[r.outputs[0].id] = (a, total)
    return found


def mean_divisions(nodes: list[Node], reductions: list[Node], count: int) -> dict[int, Node]:
    """``sum(a) / N`` nodes (``N`` the row length): division output id -> the sum reduction. The kernel
    divides the sum's double accumulator (one rounding, as ``aten.mean`` does) instead of the sum
    rounded to float first: for rows whose mean dwarfs their spread that first rounding (half an ulp
    of the sum, ``N`` times an ulp of the mean) doubled the error of a layer norm's mean."""
    producers = {n.outputs[0].id: n for n in nodes}
    found: dict[int, Node] = {}
    for n in nodes:
        if packet_name(n.target) != "aten.div" or n in reductions:
            continue
        total = _mean_of(n, producers, reductions, count)
        if total is not None and all(v.type.dtype in _FLOATS for v in (n.outputs[0], total.outputs[0])):
            found[n.outputs[0].id] = total
    return found
