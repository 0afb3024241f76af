"""Folds torch-mlir's decompositions back into the ATen ops the FX frontend sees.

``export_and_import(..., output_type="torch")`` runs torch-mlir's backend-contract pipeline,
which decomposes ``softmax`` into max/sub/exp/sum/div, ``linear`` into ``mm`` + ``mul(1)`` +
``add`` and ``layer_norm`` into float64 mean/variance arithmetic. The FX path keeps
``_softmax``, ``addmm`` and ``native_layer_norm``, and tilewright's attention/linear patterns are
written against those. Each rule below is exact (same values, same dtype, same shape) and
matches only when every intermediate has no other user.

Rules are ``(name, fn)`` pairs; ``fn(node)`` returns the node that replaces ``node`` or ``None``.
"""
from __future__ import annotations

import logging
import math
import operator
from typing import Any, Callable

import torch
import torch.fx

from .ops import MlirTensorType

logger = logging.getLogger(__name__)

aten = torch.ops.aten
Node = torch.fx.Node
Rule = Callable[[Node], "Node | None"]


# ---------------------------------------------------------------------- matching helpers
def _ttype(n: Any) -> MlirTensorType | None:
    return n.meta.get("mlir_type") if isinstance(n, Node) else None


def _is(n: Any, *targets: Any) -> bool:
    return isinstance(n, Node) and n.op == "call_function" and n.target in targets


def _only_used_by(n: Node, *users: Node) -> bool:
    return set(n.users) <= set(users)


def _norm_dim(d: Any, n: Any) -> int | None:
    t = _ttype(n)
    if not isinstance(d, int) or t is None or t.shape is None:
        return None
    return d % len(t.shape) if len(t.shape) else 0


def _alpha_one(n: Node, pos: int = 2) -> bool:
    alpha = n.kwargs.get("alpha", n.args[pos] if len(n.args) > pos else 1)
    return alpha == 1 and not isinstance(alpha, bool)


def _new(like: Node, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None,
         ttype: MlirTensorType | None = None, what: str = "") -> Node:
    with like.graph.inserting_before(like):
        node = like.graph.call_function(target, args, kwargs or {})
    node.meta["mlir_op"] = f"{what} (recomposed)" if what else like.meta.get("mlir_op")
    node.meta["mlir_loc"] = like.meta.get("mlir_loc")
    if ttype is not None:
        node.meta["mlir_type"] = ttype
    return node


def _zero_constant(n: Any) -> bool:
    if _is(n, aten.full.default):
        return n.args[1] == 0
    if not isinstance(n, Node) or n.op != "get_attr":
        return False
    value = getattr(n.graph.owning_module, n.target, None)
    return isinstance(value, torch.Tensor) and value.numel() > 0 and not bool(value.any())


# ---------------------------------------------------------------------- rules
def mul_by_one(n: Node) -> Node | None:
    """``mul.Scalar(x, 1) -> x`` when the dtype does not change (torch-mlir's alpha/beta of 1)."""
    if not _is(n, aten.mul.Scalar) or isinstance(n.args[1], bool) or n.args[1] != 1:
        return None
    x = n.args[0]
    tx, tn = _ttype(x), _ttype(n)
    if tx is None or tn is None or tx.dtype != tn.dtype or tx.shape != tn.shape:
        return None
    return x


def identity_view(n: Node) -> Node | None:
    """``expand(x, s)`` / ``reshape(x, s)`` whose result has ``x``'s static type -> ``x``."""
    if not _is(n, aten.expand.default, aten.reshape.default):
        return None
    x = n.args[0]
    tx, tn = _ttype(x), _ttype(n)
    return x if tx is not None and tx.is_static and tx == tn else None


def softmax(n: Node) -> Node | None:
    """``div(exp(sub(x, max(x, d)[0])), sum(exp(..), [d])) -> _softmax(x, d, False)``."""
    if not _is(n, aten.div.Tensor):
        return None
    e, s = n.args
    if not (_is(e, aten.exp.default) and _is(s, aten.sum.dim_IntList)):
        return None
    if s.args[0] is not e or len(s.args[1]) != 1 or not (len(s.args) > 2 and s.args[2]) \
            or s.kwargs.get("dtype") is not None or not _only_used_by(e, s, n):
        return None
    sub = e.args[0]
    if not (_is(sub, aten.sub.Tensor) and _alpha_one(sub) and _only_used_by(sub, e)):
        return None
    x, mx = sub.args
    if _is(mx, operator.getitem) and mx.args[1] == 0 and _is(mx.args[0], aten.max.dim):
        reduce, d_max, keep = mx.args[0], mx.args[0].args[1], mx.args[0].args[2]
    elif _is(mx, aten.amax.default) and len(mx.args[1]) == 1:
        reduce, d_max, keep = mx, mx.args[1][0], mx.args[2] if len(mx.args) > 2 else False
    else:
        return None
    if reduce.args[0] is not x or not keep or not _only_used_by(mx, sub):
        return None
    d = _norm_dim(s.args[1][0], x)
    tx = _ttype(x)
    if d is None or d != _norm_dim(d_max, x) or tx is None or tx.dtype is None \
            or not tx.dtype.is_floating_point:
        return None
    return _new(n, aten._softmax.default, (x, d, False), ttype=_ttype(n), what="softmax")


def safe_softmax(n: Node) -> Node | None:
    """``where(all(x == -inf, d), 0, _softmax(x, d)) -> _safe_softmax(x, d)``.

    The guard sdpa puts around its softmax (a row that is all -inf gives 0, not NaN); the
    pre-dispatch graphs the attention patterns match keep it as the one op ``_safe_softmax``.
    """
    if not _is(n, aten.where.self):
        return None
    cond, zeros, sm = n.args
    if not (_is(cond, aten.all.dim) and _is(sm, aten._softmax.default)):
        return None
    # zeros: a constant (torch output) or full_like(sm, 0) (raw output)
    like = _is(zeros, aten.full_like.default) and zeros.args[0] is sm and zeros.args[1] == 0 \
        and _only_used_by(zeros, n)
    if not (like or _zero_constant(zeros)):
        return None
    eq = cond.args[0]
    x, d = sm.args[0], sm.args[1]
    if not (_is(eq, aten.eq.Scalar) and eq.args[0] is x and eq.args[1] == -math.inf
            and _norm_dim(cond.args[1], x) == _norm_dim(d, x) and _only_used_by(cond, n)
            and _only_used_by(eq, cond) and _only_used_by(sm, n, zeros)):
        return None
    tz, tsm, tn = _ttype(zeros), _ttype(sm), _ttype(n)
    if tsm is None or (tz is not None and tz.dtype != tsm.dtype) or tn != tsm:
        return None
    return _new(n, aten._safe_softmax.default, (x, d), ttype=tn, what="safe softmax")


def addmm(n: Node) -> Node | None:
    """``add.Tensor(mm(a, b), bias) -> addmm(bias, a, b)`` (torch-mlir's ``linear`` with bias)."""
    if not (_is(n, aten.add.Tensor) and _alpha_one(n)):
        return None
    left, right = n.args[0], n.args[1]
    mm, bias = (left, right) if _is(left, aten.mm.default) else (right, left)
    if not _is(mm, aten.mm.default) or not isinstance(bias, Node) or not _only_used_by(mm, n):
        return None
    tmm, tb, tn = _ttype(mm), _ttype(bias), _ttype(n)
    if tmm is None or tb is None or tn != tmm or tb.dtype != tmm.dtype or tb.shape is None \
            or len(tb.shape) > 2:
        return None
    return _new(n, aten.addmm.default, (bias, mm.args[0], mm.args[1]), ttype=tn, what="linear")


def batched_matmul(n: Node) -> Node | None:
    """``reshape(bmm(reshape(a, [B, M, K]), reshape(b, [B, K, N])), [*batch, M, N]) -> matmul(a, b)``.

    torch-mlir lowers a 4-D ``matmul`` (attention's ``q @ k^T`` and ``p @ v``) to a 3-D ``bmm``
    between reshapes; the attention patterns look for the ``matmul``.
    """
    if not _is(n, aten.reshape.default) or not _is(n.args[0], aten.bmm.default):
        return None
    mm = n.args[0]
    ra, rb = mm.args
    if not (_is(ra, aten.reshape.default) and _is(rb, aten.reshape.default) and _only_used_by(mm, n)):
        return None
    a, b = ra.args[0], rb.args[0]
    ta, tb, tn = _ttype(a), _ttype(b), _ttype(n)
    if ta is None or tb is None or tn is None or not (ta.is_static and tb.is_static and tn.is_static):
        return None
    sa, sb, sn = list(ta.shape), list(tb.shape), list(tn.shape)  # type: ignore[arg-type]
    if len(sa) < 3 or len(sa) != len(sb) or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
        return None
    batch = sa[:-2]
    if sn != batch + [sa[-2], sb[-1]] or list(_ttype(ra).shape) != [math.prod(batch), sa[-2], sa[-1]] \
            or list(_ttype(rb).shape) != [math.prod(batch), sb[-2], sb[-1]]:  # type: ignore[union-attr]
        return None
    return _new(n, aten.matmul.default, (a, b), ttype=tn, what="matmul")


def to_copy(n: Node) -> Node | None:
    """``to.dtype(x, dt, non_blocking, copy, None) -> _to_copy(x, dtype=dt)`` (core ATen spelling)."""
    if not _is(n, aten.to.dtype):
        return None
    x, dtype = n.args[0], n.args[1]
    rest = list(n.args[2:]) + [n.kwargs.get(k) for k in ("memory_format",)]
    if rest and rest[-1] not in (None, torch.preserve_format):
        return None
    return _new(n, aten._to_copy.default, (x,), {"dtype": dtype}, ttype=_ttype(n), what="to")


def mean(n: Node) -> Node | None:
    """``div.Scalar(sum.dim_IntList(x, dims, keep), N) -> mean.dim(x, dims, keep)``, N = elements summed."""
    if not _is(n, aten.div.Scalar):
        return None
    s, divisor = n.args
    if not _is(s, aten.sum.dim_IntList) or s.kwargs.get("dtype") is not None or not _only_used_by(s, n):
        return None
    x, dims = s.args[0], s.args[1]
    tx, tn = _ttype(x), _ttype(n)
    if tx is None or tx.shape is None or tx.dtype is None or not tx.dtype.is_floating_point             or not dims or tn is None or tn.dtype != tx.dtype:
        return None
    sizes = [tx.shape[d] for d in dims]
    if any(d is None for d in sizes) or math.prod(sizes) != divisor or isinstance(divisor, bool):
        return None
    keep = s.args[2] if len(s.args) > 2 else False
    return _new(n, aten.mean.dim, (x, list(dims), keep), ttype=tn, what="mean")


def _layer_norm_core(n: Any) -> tuple[Node, list[int], float] | None:
    """(x, dims, eps) if ``n`` is ``(x - mean(x)) * rsqrt(var(x) + eps)`` as torch-mlir spells it."""
    if not _is(n, aten.mul.Tensor):
        return None
    for xm, rstd in ((n.args[0], n.args[1]), (n.args[1], n.args[0])):
        if not (_is(xm, aten.sub.Tensor) and _alpha_one(xm) and _is(rstd, aten.rsqrt.default)):
            continue
        x, mu = xm.args
        ve = rstd.args[0]
        if not (_is(mu, aten.mean.dim) and mu.args[0] is x and _is(ve, aten.add.Scalar)
                and _alpha_one(ve)):
            continue
        var, eps = ve.args[0], ve.args[1]
        if _is(var, aten._to_copy.default):
            var = var.args[0]
        if not _is(var, aten.mean.dim) or var.args[1] != mu.args[1]:
            continue
        sq = var.args[0]
        if not (_is(sq, aten.mul.Tensor) and sq.args[0] is sq.args[1] and _is(sq.args[0], aten.sub.Tensor)):
            continue
        c, mu2 = sq.args[0].args[0], sq.args[0].args[1]
        if not (_is(mu2, aten.mean.dim) and mu2.args[0] is c and mu2.args[1] == mu.args[1]):
            continue
        if c is not x and not (_is(c, aten._to_copy.default) and c.args[0] is x):
            continue
        tx = _ttype(x)
        dims = [d % len(tx.shape) for d in mu.args[1]] if tx is not None and tx.shape is not None else []
        if not dims or dims != list(range(len(tx.shape) - len(dims), len(tx.shape))):  # type: ignore[union-attr]
            continue
        return x, dims, float(eps)
    return None


def layer_norm(n: Node) -> Node | None:
    """``(x - mean) * rsqrt(var + eps) [* w] [+ b] -> native_layer_norm(x, shape, w, b, eps)[0]``."""
    w = b = None
    core = n
    if _is(n, aten.add.Tensor) and _alpha_one(n) and _is(n.args[0], aten.mul.Tensor):
        core, b = n.args[0], n.args[1]
    if _is(core, aten.mul.Tensor) and _layer_norm_core(core) is None:
        core, w = core.args[0], core.args[1]
    found = _layer_norm_core(core)
    if found is None:
        return None
    x, dims, eps = found
    tx = _ttype(x)
    norm_shape = list(tx.shape[d] for d in dims)  # type: ignore[index, union-attr]
    for p in (w, b):
        tp = _ttype(p)
        if p is not None and (tp is None or tp.shape is None or list(tp.shape) != norm_shape
                              or tp.dtype != tx.dtype):  # type: ignore[union-attr]
            return None
    if b is not None and w is None:
        return None
    if w is None:
        # the core might be the inner part of an affine layer norm: let the outer node match
        users = list(core.users)
        if len(users) == 1 and _is(users[0], aten.mul.Tensor):
            other = users[0].args[1] if users[0].args[0] is core else users[0].args[0]
            to = _ttype(other)
            if to is not None and to.shape is not None and list(to.shape) == norm_shape:
                return None
    ln = _new(n, aten.native_layer_norm.default, (x, norm_shape, w, b, eps), what="layer_norm")
    return _new(n, operator.getitem, (ln, 0), ttype=_ttype(n), what="layer_norm")


def _unsqueezed(n: Any, times: int) -> Node | None:
    """``t`` if ``n`` is ``unsqueeze(..unsqueeze(t, -1).., -1)`` applied ``times`` times to 1-D ``t``."""
    for _ in range(times):
        if not (_is(n, aten.unsqueeze.default) and _norm_dim(n.args[1], n) == len(_ttype(n).shape) - 1):
            return None
        n = n.args[0]
    t = _ttype(n)
    return n if t is not None and t.shape is not None and len(t.shape) == 1 else None


def batch_norm(n: Node) -> Node | None:
    """``(x - m) * U(1/sqrt(v + eps)) * U(w) + U(b) -> _native_batch_norm_legit_no_training(..)[0]``.

    ``U`` unsqueezes a per-channel vector to ``[C, 1, ..]``: torch-mlir's inference batch norm.
    """
    if not (_is(n, aten.add.Tensor) and _alpha_one(n) and _is(n.args[0], aten.mul.Tensor)):
        return None
    scaled, ub = n.args[0], n.args[1]
    normed, uw = scaled.args
    if not (_is(normed, aten.mul.Tensor) and _is(normed.args[0], aten.sub.Tensor)
            and _alpha_one(normed.args[0])):
        return None
    x, um = normed.args[0].args
    tx = _ttype(x)
    if tx is None or tx.shape is None or len(tx.shape) < 2:
        return None
    k = len(tx.shape) - 2
    mean_, w, b, inv = (_unsqueezed(u, k) for u in (um, uw, ub, normed.args[1]))
    if None in (mean_, w, b, inv) or not _is(inv, aten.reciprocal.default) \
            or not _is(inv.args[0], aten.sqrt.default) or not _is(inv.args[0].args[0], aten.add.Scalar):
        return None
    var, eps = inv.args[0].args[0].args[0], inv.args[0].args[0].args[1]
    if not _alpha_one(inv.args[0].args[0]) or any(
            _ttype(t) is None or _ttype(t).shape != (tx.shape[1],) for t in (mean_, w, b, var)):
        return None
    bn = _new(n, aten._native_batch_norm_legit_no_training.default,
              (x, w, b, mean_, var, 0.1, float(eps)), what="batch_norm")
    return _new(n, operator.getitem, (bn, 0), ttype=_ttype(n), what="batch_norm")


def max_pool2d(n: Node) -> Node | None:
    """``max_pool2d(x, ...) -> max_pool2d_with_indices(x, ...)[0]`` (the core ATen op)."""
    if not _is(n, aten.max_pool2d.default):
        return None
    pool = _new(n, aten.max_pool2d_with_indices.default, tuple(n.args), dict(n.kwargs), what="max_pool2d")
    return _new(n, operator.getitem, (pool, 0), ttype=_ttype(n), what="max_pool2d")


def add_zero(n: Node) -> Node | None:
    """``add.Tensor(x, zeros) -> x`` when ``zeros`` is an all-zero constant that changes no type.

    An attention mask that masks nothing (BERT/ViT without ``attention_mask``) folds to zeros.
    """
    if not (_is(n, aten.add.Tensor) and _alpha_one(n)):
        return None
    x, c = n.args[0], n.args[1]
    if not _zero_constant(c):
        x, c = c, x
    if not (_zero_constant(c) and isinstance(x, Node)):
        return None
    return x if _ttype(x) is not None and _ttype(x) == _ttype(n) else None


#: Additive mask values at or below this exclude a position (as the attention patterns read it).
EXCLUDE_FILL = -1.0e4


def fold_input_free(gm: torch.fx.GraphModule) -> int:
    """Rewrite input-free masks into forms the attention patterns read; returns how many.

    torch.export materialises attention masks from ``arange``/``ones``/``index`` (torch-mlir
    keeps them as ops). Each input-free value (computed from no graph input and no weight) that
    feeds the rest of the graph is evaluated once and, when it is

    * uniform (an all-true padding mask, an additive mask of zeros) -> ``full(shape, value)``
      (read as "no mask"; :func:`add_zero` drops an added zero mask);
    * a causal mask, boolean keep-mask or 0/-inf additive (``j <= i + o`` on the last two dims,
      the same for every leading index) -> ``le(arange(N), arange(o, o + M)[:, None])``
      (+ ``where``), the comparison the patterns read causality from.

    Anything else is left as it is. Every replacement computes exactly the same tensor.
    """
    graph = gm.graph
    values: dict[Node, Any] = {}
    for n in list(graph.nodes):
        if n.op == "get_attr":
            value = getattr(gm, n.target, None)
            if isinstance(value, torch.Tensor) and value.numel() <= 1:  # scalar literals only
                values[n] = value
            continue
        if n.op != "call_function" or any(i not in values for i in n.all_input_nodes):
            continue
        schema = getattr(n.target, "_schema", None)
        if (schema is not None and schema.is_mutable) \
                or torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ()):
            continue
        args, kwargs = torch.fx.node.map_arg((n.args, n.kwargs), lambda a: values[a])
        try:
            values[n] = n.target(*args, **kwargs)
        except Exception:  # noqa: BLE001 - leave anything unusual to run at runtime
            continue
    count = 0
    for n, value in list(values.items()):
        if n.op != "call_function" or not isinstance(value, torch.Tensor) or value.numel() == 0 \
                or all(u in values for u in n.users) or n.target is aten.full.default:
            continue
        new = _uniform(n, value) or _causal(n, value)
        if new is not None:
            n.replace_all_uses_with(new)
            count += 1
    graph.eliminate_dead_code()
    return count


def _uniform(n: Node, value: torch.Tensor) -> Node | None:
    flat = value.reshape(-1)
    if not bool((flat == flat[0]).all()):
        return None
    return _new(n, aten.full.default, (list(value.shape), flat[0].item()),
                {"dtype": value.dtype, "device": torch.device("cpu"), "pin_memory": False},
                ttype=_ttype(n), what="constant")


def _causal(n: Node, value: torch.Tensor) -> Node | None:
    if value.dim() < 2:
        return None
    m, k = value.shape[-2], value.shape[-1]
    rows = value.reshape(-1, m, k)
    if not bool((rows == rows[0]).all()):
        return None
    v = rows[0]
    fill = None
    if v.dtype == torch.bool:
        keep = v
    elif v.dtype.is_floating_point:
        keep = v == 0
        excluded = v[~keep]
        if excluded.numel() == 0 or not bool((excluded == excluded[0]).all()) or excluded[0] > EXCLUDE_FILL:
            return None
        fill = excluded[0].item()
    else:
        return None
    offset = int(keep[0].sum()) - 1
    i = torch.arange(m).unsqueeze(-1)
    if not torch.equal(keep, torch.arange(k) <= i + offset):
        return None
    cpu = {"dtype": torch.int64, "device": torch.device("cpu"), "pin_memory": False}
    j_idx = _new(n, aten.arange.start_step, (0, k, 1), cpu)
    i_idx = _new(n, aten.unsqueeze.default, (_new(n, aten.arange.start_step, (offset, offset + m, 1), cpu), -1))
    cond = _new(n, aten.le.Tensor, (j_idx, i_idx), what="causal mask")
    cond = _new(n, aten.expand.default, (cond, list(value.shape)))
    if fill is None:
        cond.meta["mlir_type"] = _ttype(n)
        return cond
    zero = _new(n, aten.scalar_tensor.default, (0.0,), {"dtype": value.dtype})
    low = _new(n, aten.scalar_tensor.default, (fill,), {"dtype": value.dtype})
    return _new(n, aten.where.self, (cond, zero, low), ttype=_ttype(n), what="causal mask")


#: Applied in order, repeatedly, until none matches.
RULES: list[tuple[str, Rule]] = [
    ("mul_by_one", mul_by_one),                  # x * 1 -> x
    ("identity_view", identity_view),            # expand/reshape to x's own shape -> x
    ("softmax", softmax),                        # exp(x - max) / sum(exp(x - max)) -> _softmax
    ("safe_softmax", safe_softmax),              # where(all(x == -inf), 0, _softmax(x)) -> _safe_softmax
    ("addmm", addmm),                            # mm(a, b) + bias -> addmm(bias, a, b)
    ("batched_matmul", batched_matmul),          # reshape(bmm(reshape(a), reshape(b))) -> matmul(a, b)
    ("to_copy", to_copy),                        # to.dtype(x, dt) -> _to_copy(x, dtype=dt)
    ("mean", mean),                              # sum(x, dims) / N -> mean.dim(x, dims)
    ("layer_norm", layer_norm),                  # (x - mean) * rsqrt(var + eps) * w + b -> native_layer_norm
    ("batch_norm", batch_norm),                  # (x - m) * U(1/sqrt(v + eps)) * U(w) + U(b) -> batch norm
    ("max_pool2d", max_pool2d),                  # max_pool2d -> max_pool2d_with_indices[0]
    ("add_zero", add_zero),                      # x + zeros -> x
]


def recompose_graph(gm: torch.fx.GraphModule, rules: list[tuple[str, Rule]] | None = None) -> dict[str, int]:
    """Apply ``rules`` (default :data:`RULES`) to ``gm`` in place; returns match counts by rule."""
    counts: dict[str, int] = {"fold_input_free": fold_input_free(gm)}
    graph = gm.graph
    for name, rule in rules or RULES:
        for node in list(graph.nodes):
            if node.graph is not graph or node.op != "call_function":
                continue
            try:
                new = rule(node)
            except (IndexError, TypeError, AttributeError):
                new = None  # malformed match candidate: not this pattern
            if new is None or new is node:
                continue
            node.replace_all_uses_with(new)
            counts[name] = counts.get(name, 0) + 1
        graph.eliminate_dead_code()
    used = {n.target for n in graph.nodes if n.op == "get_attr"}
    for buf in [b for b, _ in gm.named_buffers(recurse=False) if b not in used]:
        delattr(gm, buf)  # constants only the removed nodes read (e.g. softmax guard zeros)
    graph.lint()
    gm.recompile()
    if counts:
        logger.debug("recomposed: %s", counts)
    return counts
