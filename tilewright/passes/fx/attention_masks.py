"""Reading masks and constants in a pre-dispatch ATen graph: scalars, keep-masks, causal forms.

The attention matcher asks three questions of the nodes that feed a score chain:

* :func:`scalar_value` -- is this a compile-time scalar (a Python number, ``full([], c)``,
  ``zeros([])``, ``scalar_tensor(c)`` ...)? Returns the float or None.
* :func:`analyze_keep` -- given a boolean tensor and whether True means *keep* or *exclude*,
  split it into a causal constraint ``j <= i + offset`` (from ``tril``/``triu`` of ones or an
  ``arange`` comparison) and the remaining keep-mask leaves (ANDed). A tensor whose values the
  graph does not determine (an input, a buffer) is a leaf and is streamed as-is.
* :func:`index_expr` -- is this ``arange(L) + c`` broadcast along one axis?

Everything here is conservative: when a form is not recognised exactly, the answer is "a leaf"
(streamed as data, still exact) or None (the caller leaves the graph alone).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import Node

aten = torch.ops.aten

#: Fill values at or below this exclude a position (exp underflows to exactly 0 in float32
#: whenever the row has any kept score above fill + 104).
EXCLUDE_THRESHOLD = -1.0e4

_CASTS = {aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default, aten.type_as.default,
          aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default,
          aten.lift_fresh_copy.default}
_AND = {aten.__and__.Tensor, aten.logical_and.default, aten.bitwise_and.Tensor, operator.and_}
_NOT = {aten.bitwise_not.default, aten.logical_not.default, operator.invert}


def meta_val(node: Any) -> Any:
    """The fake value recorded for ``node`` (None for non-nodes or missing meta)."""
    return node.meta.get("val") if isinstance(node, Node) else None


def shape_of(node: Any) -> tuple[int, ...] | None:
    """Static shape of ``node``'s value (None when unknown or symbolic)."""
    val = meta_val(node)
    if not isinstance(val, torch.Tensor):
        return None
    try:
        return tuple(int(s) for s in val.shape)
    except Exception:  # symbolic sizes
        return None


def dims_of(node: Any) -> tuple[Any, ...] | None:
    """Shape of ``node``'s value with symbolic sizes kept as SymInts (None for non-tensors)."""
    val = meta_val(node)
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(int(s) if isinstance(s, int) else s for s in val.shape)


def dim_eq(a: Any, b: Any) -> bool:
    """``a == b`` for sizes that may be symbolic, without adding guards (unknown -> False)."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return bool(statically_known_true(a == b))


def same_dims(a: tuple[Any, ...] | None, b: tuple[Any, ...] | None) -> bool:
    """Shapes provably equal (both known, same rank, every size equal)."""
    return a is not None and b is not None and len(a) == len(b) and all(dim_eq(x, y) for x, y in zip(a, b))


def broadcasts_to(shape: tuple[Any, ...], target: tuple[Any, ...]) -> bool:
    """Whether ``shape`` provably broadcasts to ``target`` without growing it."""
    if len(shape) > len(target):
        return False
    return all(dim_eq(s, 1) or dim_eq(s, t) for s, t in zip(reversed(shape), reversed(target)))


def target_of(node: Any) -> Any:
    """Overload target of a call_function node (None otherwise)."""
    return node.target if isinstance(node, Node) and node.op == "call_function" else None


def strip_casts(node: Any) -> Any:
    """Follow dtype/device casts and copies back to their source."""
    while target_of(node) in _CASTS and node.args:
        node = node.args[0]
    return node


def scalar_value(arg: Any) -> float | None:
    """The compile-time scalar value of ``arg``, or None."""
    if isinstance(arg, bool):
        return float(arg)
    if isinstance(arg, (int, float)):
        return float(arg)
    if not isinstance(arg, Node):
        return None
    arg = strip_casts(arg)
    t = target_of(arg)
    shape = shape_of(arg)
    if shape is None or any(s != 1 for s in shape):
        return None
    if t in (aten.full.default, aten.new_full.default):
        return scalar_value(arg.args[1] if t is aten.full.default else arg.args[2])
    if t in (aten.zeros.default, aten.new_zeros.default, aten.zeros_like.default):
        return 0.0
    if t in (aten.ones.default, aten.new_ones.default, aten.ones_like.default):
        return 1.0
    if t is aten.scalar_tensor.default:
        return scalar_value(arg.args[0])
    return None


def is_all_true(node: Any) -> bool:
    """A constant tensor whose every element is true / nonzero (ones, full(True))."""
    node = strip_casts(node)
    t = target_of(node)
    if t in (aten.ones.default, aten.new_ones.default, aten.ones_like.default):
        return True
    if t in (aten.full.default, aten.new_full.default):
        value = scalar_value(node.args[1] if t is aten.full.default else node.args[2])
        return value is not None and value != 0.0
    return False


@dataclass(frozen=True)
class IndexExpr:
    """``arange(length) + offset`` varying along ``axis`` (counted from the end, negative)."""

    axis: int
    offset: int
    length: int


def index_expr(node: Any) -> IndexExpr | None:
    """Recognise ``arange(...) + c`` under unsqueeze/view/expand/casts; None otherwise."""
    t = target_of(node)
    if t is None:
        return None
    if t in _CASTS:
        return index_expr(node.args[0])
    if t is aten.arange.default:
        end = node.args[0]
        return IndexExpr(-1, 0, int(end)) if isinstance(end, int) else None
    if t in (aten.arange.start, aten.arange.start_step):
        start, end = node.args[0], node.args[1]
        step = node.args[2] if len(node.args) > 2 else node.kwargs.get("step", 1)
        if not (isinstance(start, int) and isinstance(end, int)) or step != 1:
            return None
        return IndexExpr(-1, start, end - start)
    if t in (aten.add.Tensor, aten.sub.Tensor):
        a, b = node.args[0], node.args[1]
        alpha = node.kwargs.get("alpha", 1)
        sign = -1 if t is aten.sub.Tensor else 1
        if isinstance(b, int) and isinstance(a, Node):
            inner = index_expr(a)
            return IndexExpr(inner.axis, inner.offset + sign * alpha * b, inner.length) if inner else None
        if isinstance(a, int) and isinstance(b, Node) and t is aten.add.Tensor:
            inner = index_expr(b)
            return IndexExpr(inner.axis, inner.offset + alpha * a, inner.length) if inner else None
        return None
    if t in (aten.unsqueeze.default, aten.view.default, aten.reshape.default, aten.expand.default,
             aten._unsafe_view.default):
        inner = index_expr(node.args[0])
        in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
        if inner is None or in_shape is None or out_shape is None:
            return None
        # The result must keep exactly one dim of size `length` that carries the values.
        big_in = [i - len(in_shape) for i, s in enumerate(in_shape) if s != 1]
        big_out = [i - len(out_shape) for i, s in enumerate(out_shape) if s != 1]
        if t is aten.expand.default:
            if out_shape[inner.axis] != inner.length:
                return None
            return inner
        if big_in != [inner.axis] and inner.length != 1:
            return None
        if len(big_out) != 1 or out_shape[big_out[0]] != inner.length:
            return None
        return IndexExpr(big_out[0], inner.offset, inner.length)
    return None


def _compare_causal(node: Node, m: int | None, n: int | None) -> int | None:
    """Offset ``o`` when ``node`` is ``j <= i + o`` (j: key index on the last axis, i: query
    index on axis -2, lengths n and m); None when it is any other comparison."""
    t = target_of(node)
    flips = {aten.le.Tensor: ("le", False), aten.ge.Tensor: ("le", True),
             aten.lt.Tensor: ("lt", False), aten.gt.Tensor: ("lt", True)}
    if t not in flips or len(node.args) != 2:
        return None
    kind, swap = flips[t]
    a, b = (node.args[1], node.args[0]) if swap else (node.args[0], node.args[1])
    ea, eb = index_expr(a), index_expr(b)
    if ea is None or eb is None:
        return None
    # a <= b (or a < b) with a = j + ca along -1, b = i + cb along -2.
    if m is None or n is None:
        return None
    if ea.axis != -1 or eb.axis != -2 or ea.length != n or eb.length != m:
        return None
    offset = eb.offset - ea.offset
    return offset if kind == "le" else offset - 1


def _tri_causal(node: Node, keep: bool, m: int | None, n: int | None) -> int | None:
    """Offset for ``tril(ones, d)`` as keep (j <= i + d) or ``triu(ones, d)`` as exclusion."""
    t = target_of(node)
    if t not in (aten.tril.default, aten.triu.default) or not is_all_true(node.args[0]):
        return None
    shape = shape_of(node)
    if m is None or n is None or shape is None or len(shape) < 2 or shape[-2:] != (m, n):
        return None
    diag = node.args[1] if len(node.args) > 1 else node.kwargs.get("diagonal", 0)
    if not isinstance(diag, int):
        return None
    if t is aten.tril.default and keep:
        return diag
    if t is aten.triu.default and not keep:
        return diag - 1
    return None


@dataclass
class KeepMask:
    """A keep-mask split into a causal offset and leaves (each a (node, keep_polarity))."""

    causal_offset: int | None = None
    leaves: list[tuple[Node, bool]] = field(default_factory=list)

    def add_causal(self, offset: int) -> None:
        self.causal_offset = offset if self.causal_offset is None else min(self.causal_offset, offset)


def analyze_keep(node: Node, keep: bool, m: int | None, n: int | None, out: KeepMask | None = None) -> KeepMask:
    """Split a boolean mask (True = keep when ``keep``, else True = exclude) into causal + leaves."""
    out = out if out is not None else KeepMask()
    base = node
    while True:
        t = target_of(base)
        if t in _CASTS or t is aten.expand.default:
            src = base.args[0]
            val = meta_val(src)
            if isinstance(val, torch.Tensor) and val.dtype == torch.bool:
                base = src
                continue
        break
    t = target_of(base)
    if t in _NOT:
        return analyze_keep(base.args[0], not keep, m, n, out)
    if t in (aten.eq.Scalar, aten.ne.Scalar) and scalar_value(base.args[1]) == 0.0:
        # (x == 0) flips polarity of a 0/1 tensor; (x != 0) keeps it.
        return analyze_keep(base.args[0], keep if t is aten.ne.Scalar else not keep, m, n, out)
    if keep and t in _AND:
        analyze_keep(base.args[0], True, m, n, out)
        analyze_keep(base.args[1], True, m, n, out)
        return out
    if keep and is_all_true(base):
        return out
    causal = _tri_causal(base, keep, m, n)
    if causal is None and keep:
        causal = _compare_causal(base, m, n)
    if causal is not None:
        out.add_causal(causal)
        return out
    out.leaves.append((base, keep))
    return out


def additive_as_exclusion(node: Node) -> tuple[Node, bool, float] | None:
    """An additive float tensor that only ever adds 0 or an excluding fill, as a boolean mask.

    Recognises ``where(m, 0, fill)``, ``where(m, fill, 0)``, ``masked_fill(zeros, m, fill)`` and
    ``triu/tril(full(fill), d)``; returns (boolean node, True if it marks kept positions, fill).
    """
    node = strip_casts(node)
    t = target_of(node)
    if t in (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar):
        cond, a, b = node.args[0], node.args[1], node.args[2]
        va, vb = scalar_value(a), scalar_value(b)
        if va == 0.0 and vb is not None and vb <= EXCLUDE_THRESHOLD:
            return cond, True, vb
        if vb == 0.0 and va is not None and va <= EXCLUDE_THRESHOLD:
            return cond, False, va
        return None
    if t in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
        base, cond, fill = node.args[0], node.args[1], node.args[2]
        fv = scalar_value(fill)
        if scalar_value(base) == 0.0 or target_of(strip_casts(base)) in (aten.zeros.default, aten.zeros_like.default):
            if fv is not None and fv <= EXCLUDE_THRESHOLD:
                return cond, False, fv
        return None
    if t in (aten.triu.default, aten.tril.default):
        src = strip_casts(node.args[0])
        st = target_of(src)
        if st in (aten.full.default, aten.new_full.default):
            fv = scalar_value(src.args[1] if st is aten.full.default else src.args[2])
            if fv is not None and fv <= EXCLUDE_THRESHOLD:
                # The triangle holds the fill: it marks excluded positions.
                return node, False, fv
    return None
