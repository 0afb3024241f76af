"""Attention patterns in pre-dispatch ATen graphs, as data: what each form looks like and what it means.

A match is an :class:`AttentionBlock`: the q/k/v nodes (K given as [B, Hkv, N, D]), the scale,
the causal offset, boolean keep-mask leaves, additive bias terms, dropout, the GQA ratio and the
nodes to delete. Two kinds of roots start a match:

* SDPA calls, every backend's ATen form (table :data:`SDPA_FORMS`)::

      scaled_dot_product_attention(q, k, v, mask, p, causal, scale, gqa)  -> attention
      _scaled_dot_product_{flash,flash_for_cpu,efficient,cudnn}_attention(...)[0] -> attention
      _scaled_dot_product_attention_math(...)[0] (attn weights unused)     -> attention

* softmax nodes, read outwards (tables :data:`SCORE_STEPS`, :data:`PROB_STEPS`)::

      matmul(dropout?(cast?(softmax(chain(matmul(q', kT'))))), v')          -> attention
      chain  := mul/div by a constant (scale) | add/sub a tensor (bias, or a mask written
                additively) | where/masked_fill with a fill <= -1e4 (mask) | upcasts
      q', kT' may carry constant scale factors; kT' may be any view of K transposed;
      k, v may be repeat_kv'd (unsqueeze+expand+reshape, or repeat_interleave on dim 1).

Every intermediate between the first matmul and the last must have exactly one user (scores
and probabilities are never needed elsewhere), otherwise there is no match. Anything not in the
tables (a softmax over another dim, a head mask multiplying probabilities, a non-constant
scale, a small fill value, dropout before softmax, ...) ends the match with a reason, and the
graph is left alone.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.fx import Node

from .attention_masks import (EXCLUDE_THRESHOLD, KeepMask, additive_as_exclusion, analyze_keep,
                              broadcasts_to, dim_eq, dims_of, meta_val, same_dims, scalar_value, target_of)

aten = torch.ops.aten


class NoMatch(Exception):
    """Raised inside matching with the reason the subgraph is not (exactly) attention."""


@dataclass
class AttentionBlock:
    """One matched attention block, ready to be replaced by ``tilewright::flash_attention``."""

    form: str
    root: Node
    q: Node
    k: Node
    v: Node
    k_needs_transpose: bool = False
    scale: float | None = None
    causal_offset: int | None = None
    mask_leaves: list[tuple[Node, bool]] = field(default_factory=list)
    biases: list[tuple[Node, float]] = field(default_factory=list)
    dropout_p: float = 0.0
    gqa_ratio: int = 1
    gqa_form: str = ""
    dead: list[Node] = field(default_factory=list)
    #: Effective fill value of every mask written as a fill (scaled along with the scores).
    fills: list[float] = field(default_factory=list)
    #: q/k/v were [B*H, S, D] (bmm form): the op sees them with a leading unit batch dim.
    rank3: bool = False


# ----------------------------------------------------------------------------- helpers


def bind_args(node: Node) -> dict[str, Any]:
    """Arguments of an ATen call by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


def single_user(node: Node) -> Node:
    """The one user of ``node``; raises NoMatch when it has several (the value escapes)."""
    users = list(node.users)
    if len(users) != 1:
        raise NoMatch(f"{node.name} has {len(users)} users (intermediate needed elsewhere)")
    return users[0]


def _dtype(node: Any) -> torch.dtype | None:
    val = meta_val(node)
    return val.dtype if isinstance(val, torch.Tensor) else None


def _is_float_upcast_or_same(src: Any, dst: Any) -> bool:
    a, b = _dtype(src), _dtype(dst)
    if a is None or b is None:
        return False
    return a == b or (b == torch.float32 and a in (torch.float16, torch.bfloat16))


_CAST_TARGETS = {aten.to.dtype, aten.to.dtype_layout, aten._to_copy.default, aten.type_as.default}
_SOFTMAX = {aten.softmax.int, aten._softmax.default, aten._safe_softmax.default}
_MATMUL = {aten.matmul.default, aten.bmm.default}


def _fold_scalar_mul(node: Node) -> tuple[Node, float]:
    """Peel constant-scalar multiplications/divisions off ``node``: (source, factor)."""
    factor = 1.0
    while True:
        t = target_of(node)
        if t in (aten.mul.Tensor, aten.mul.Scalar):
            a, b = node.args[0], node.args[1]
            va, vb = scalar_value(a), scalar_value(b)
            if vb is not None and isinstance(a, Node) and same_dims(dims_of(a), dims_of(node)):
                factor, node = factor * vb, a
                continue
            if va is not None and isinstance(b, Node) and same_dims(dims_of(b), dims_of(node)):
                factor, node = factor * va, b
                continue
        if t in (aten.div.Tensor, aten.div.Scalar):
            a, b = node.args[0], node.args[1]
            vb = scalar_value(b)
            if vb not in (None, 0.0) and isinstance(a, Node) and same_dims(dims_of(a), dims_of(node)) \
                    and not node.kwargs.get("rounding_mode"):
                factor, node = factor / vb, a  # type: ignore[operator]
                continue
        return node, factor


def unrepeat_kv(node: Node) -> tuple[Node, int, str]:
    """Undo a grouped-query repeat of K/V heads (no copy): (source [B, Hkv, N, D], ratio, form)."""
    t = target_of(node)
    if t is aten.repeat_interleave.self_int:
        args = bind_args(node)
        src_dims = dims_of(args["self"])
        if isinstance(args["repeats"], int) and args["dim"] in (1, -3) and src_dims and len(src_dims) == 4:
            return args["self"], int(args["repeats"]), "repeat_interleave"
    if t in (aten.reshape.default, aten.view.default, aten._unsafe_view.default):
        exp = node.args[0]
        if target_of(exp) in (aten.clone.default, aten.contiguous.default):
            exp = exp.args[0]
        if target_of(exp) is aten.expand.default:
            uns = _strip_full_slices(exp.args[0])
            out_d, exp_d, uns_d = dims_of(node), dims_of(exp), dims_of(uns)
            if target_of(uns) is aten.unsqueeze.default and out_d and exp_d and uns_d \
                    and len(exp_d) == 5 and len(out_d) == 4 and uns.args[1] in (2, -3) \
                    and isinstance(exp_d[2], int):
                src = uns.args[0]
                b, hkv, one, n, d = uns_d
                g = exp_d[2]
                if dim_eq(one, 1) and same_dims(exp_d[:2], (b, hkv)) and same_dims(exp_d[3:], (n, d)) \
                        and same_dims(out_d, (b, hkv * g, n, d)):
                    return src, int(g), "expand+reshape"
    return node, 1, ""


def _einsum_parts(node: Node) -> tuple[str, str, str, list[Any]] | None:
    """(lhs0, lhs1, out, operands) of a two-operand ``aten.einsum`` without ellipsis."""
    if target_of(node) is not aten.einsum.default:
        return None
    eq, ops = node.args[0], node.args[1]
    if not isinstance(eq, str) or "..." in eq or "->" not in eq or len(ops) != 2:
        return None
    lhs, out = eq.replace(" ", "").split("->")
    terms = lhs.split(",")
    if len(terms) != 2 or any(len(set(t)) != len(t) for t in terms + [out]):
        return None
    return terms[0], terms[1], out, list(ops)


def _einsum_qk(node: Node) -> tuple[Node, Node, bool] | None:
    """``einsum("P i d, P j d -> P i j", q, k)`` -> (q, k, False); ``P d j`` second -> (q, kT, True)."""
    parts = _einsum_parts(node)
    if parts is None:
        return None
    a, b, out, (q, k) = parts
    if len(a) < 3 or len(a) != len(b) or len(out) != len(a) or a[:-2] != b[:-2] or out[:-2] != a[:-2]:
        return None
    i, d = a[-2], a[-1]
    if out[-2] != i or len({i, d, out[-1]}) != 3:
        return None
    j = out[-1]
    if b[-2:] == j + d:
        return q, k, False
    if b[-2:] == d + j:
        return q, k, True
    return None


def _einsum_pv(node: Node, p: Node) -> Node | None:
    """``einsum("P i j, P j d -> P i d", p, v)`` -> v."""
    parts = _einsum_parts(node)
    if parts is None or parts[3][0] is not p or parts[3][1] is p:
        return None
    a, b, out, (_, v) = parts
    if len(a) < 3 or not (len(a) == len(b) == len(out)) or a[:-2] != b[:-2] or out[:-2] != a[:-2]:
        return None
    i, j = a[-2], a[-1]
    if b[-2] != j or out[-2] != i or out[-1] != b[-1] or len({i, j, b[-1]}) != 3:
        return None
    return v


def is_qk(node: Any) -> bool:
    """Whether ``node`` computes scores from q and k (matmul, bmm, baddbmm or a QK einsum)."""
    t = target_of(node)
    return t in _MATMUL or t is aten.baddbmm.default or (t is aten.einsum.default and _einsum_qk(node) is not None)


def _strip_full_slices(node: Node) -> Node:
    """Skip ``x[:, :, ...]``-style slices that keep the whole dim (``slice(x, d, 0, INT_MAX)``)."""
    while target_of(node) is aten.slice.Tensor:
        args = bind_args(node)
        start, end, step = args.get("start"), args.get("end"), args.get("step")
        if start not in (None, 0) or step not in (None, 1):
            break
        dims = dims_of(args["self"])
        dim = args.get("dim") or 0
        if not (end is None or (isinstance(end, int) and end >= 2**62)
                or (dims is not None and dim_eq(end, dims[dim]))):
            break
        node = args["self"]
    return node


def _k_from_kt(kt: Node) -> tuple[Node, bool]:
    """K ([.., N, D]) from its transposed use ([.., D, N]); True when a transpose must be inserted."""
    t = target_of(kt)
    rank = len(dims_of(kt) or ())
    if t is aten.transpose.int:
        d0, d1 = (a % rank for a in kt.args[1:3])
        if {d0, d1} == {rank - 1, rank - 2}:
            return kt.args[0], False
    if t is aten.permute.default:
        perm = [p % rank for p in kt.args[1]]
        if perm == list(range(rank - 2)) + [rank - 1, rank - 2]:
            return kt.args[0], False
    return kt, True


# ----------------------------------------------------------------------------- SDPA forms

#: SDPA ATen forms: target -> (name, name of its mask argument or None, index of the output used).
SDPA_FORMS: dict[Any, tuple[str, str | None]] = {
    aten.scaled_dot_product_attention.default: ("sdpa", "attn_mask"),
    aten._scaled_dot_product_flash_attention.default: ("sdpa_flash", None),
    aten._scaled_dot_product_flash_attention_for_cpu.default: ("sdpa_flash_cpu", "attn_mask"),
    aten._scaled_dot_product_efficient_attention.default: ("sdpa_efficient", "attn_bias"),
    aten._scaled_dot_product_cudnn_attention.default: ("sdpa_cudnn", "attn_bias"),
    aten._scaled_dot_product_attention_math.default: ("sdpa_math", "attn_mask"),
}


def match_sdpa(node: Node) -> AttentionBlock:
    """Match one SDPA call (any backend form)."""
    form, mask_name = SDPA_FORMS[node.target]
    args = bind_args(node)
    root = node
    dead = [node]
    if node.target is not aten.scaled_dot_product_attention.default:
        users = list(node.users)
        if not users or any(target_of(u) is not operator.getitem or u.args[1] != 0 for u in users) or len(users) != 1:
            raise NoMatch(f"{form}: outputs other than [0] are used")
        root = users[0]
        dead = [root, node]
    if args.get("dropout_mask") is not None:
        raise NoMatch("sdpa_math with an explicit dropout mask")
    q, k, v = args["query"], args["key"], args["value"]
    block = AttentionBlock(form=form, root=root, q=q, k=k, v=v, dead=dead)
    block.scale = args.get("scale")
    if args.get("is_causal"):
        block.causal_offset = 0
    block.dropout_p = float(args.get("dropout_p") or 0.0)
    mask = args.get(mask_name) if mask_name else None
    if mask is not None:
        if _dtype(mask) == torch.bool:
            _add_keep(block, mask, True)
        else:
            _add_additive(block, mask, 1.0)
    return block


# ----------------------------------------------------------------------------- explicit form


def _add_keep(block: AttentionBlock, mask: Node, keep: bool) -> None:
    m, n = _mn(block)
    km = KeepMask(causal_offset=block.causal_offset)
    analyze_keep(mask, keep, m, n, km)
    block.causal_offset = km.causal_offset
    block.mask_leaves.extend(km.leaves)


def _add_additive(block: AttentionBlock, term: Node, coef: float) -> None:
    excl = additive_as_exclusion(term) if coef > 0 else None
    if excl is not None:
        _add_keep(block, excl[0], excl[1])
        block.fills.append(excl[2] * coef)
    else:
        block.biases.append((term, coef))


def _mn(block: AttentionBlock) -> tuple[int | None, int | None]:
    """Static query and key lengths (None when symbolic: causal forms are then not recognised)."""
    qs, vs = dims_of(block.q), dims_of(block.v)
    if not qs or not vs:
        raise NoMatch("unknown q/v shapes")
    m, n = qs[-2], vs[-2]
    return (m if isinstance(m, int) else None), (n if isinstance(n, int) else None)


@dataclass
class _Step:
    """A score-chain step read from softmax back to q @ kT."""

    kind: str
    node: Node
    data: Any = None


def _score_step(node: Node, prev: Node) -> _Step:
    """Classify ``node`` (whose score operand is ``prev``) as one step of the score chain."""
    t = target_of(node)
    if t in _CAST_TARGETS:
        if not _is_float_upcast_or_same(prev, node):
            raise NoMatch(f"{node.name}: score cast that loses precision")
        return _Step("cast", node)
    if t in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar):
        other = node.args[1] if node.args[0] is prev else node.args[0]
        if t in (aten.div.Tensor, aten.div.Scalar) and node.args[0] is not prev:
            raise NoMatch(f"{node.name}: scores in a divisor")
        value = scalar_value(other)
        if value is None or value <= 0.0 or node.kwargs.get("rounding_mode"):
            raise NoMatch(f"{node.name}: scores scaled by a non-constant or non-positive factor")
        return _Step("scale", node, value if t in (aten.mul.Tensor, aten.mul.Scalar) else 1.0 / value)
    if t in (aten.add.Tensor, aten.sub.Tensor):
        other = node.args[1] if node.args[0] is prev else node.args[0]
        alpha = node.kwargs.get("alpha", 1)
        if t is aten.sub.Tensor and node.args[0] is not prev:
            raise NoMatch(f"{node.name}: scores subtracted from a tensor")
        coef = float(alpha) * (-1.0 if t is aten.sub.Tensor else 1.0)
        if scalar_value(other) is not None:
            return _Step("const", node)  # softmax(s + c) == softmax(s)
        if not isinstance(other, Node):
            raise NoMatch(f"{node.name}: unknown addend")
        return _Step("bias", node, (other, coef))
    if t in (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf):
        cond, a, b = node.args
        if a is prev and scalar_value(b) is not None and scalar_value(b) <= EXCLUDE_THRESHOLD:
            return _Step("mask", node, (cond, True, scalar_value(b)))
        if b is prev and scalar_value(a) is not None and scalar_value(a) <= EXCLUDE_THRESHOLD:
            return _Step("mask", node, (cond, False, scalar_value(a)))
        raise NoMatch(f"{node.name}: where() whose fill is not a constant <= {EXCLUDE_THRESHOLD}")
    if t in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
        value = scalar_value(node.args[2])
        if node.args[0] is prev and value is not None and value <= EXCLUDE_THRESHOLD:
            return _Step("mask", node, (node.args[1], False, value))
        raise NoMatch(f"{node.name}: masked_fill whose fill is not a constant <= {EXCLUDE_THRESHOLD}")
    raise NoMatch(f"{node.name}: {t} is not an attention score step")


#: Steps allowed on the score chain (documentation table; :func:`_score_step` implements it).
SCORE_STEPS: dict[str, str] = {
    "scale": "s * c, s / c, c * s with c a positive constant        -> scale *= c",
    "bias": "s + t, t + s, s - t (t any tensor broadcastable)        -> additive bias (or mask)",
    "mask": "where(m, s, f), where(m, f, s), masked_fill(s, m, f)    -> keep-mask, f <= -1e4",
    "const": "s + c                                                    -> dropped (softmax-invariant)",
    "cast": "s.to(float32) from a half type, or a no-op cast          -> dropped (fp32 softmax)",
}

#: Steps allowed between softmax and the value matmul.
PROB_STEPS: dict[str, str] = {
    "cast": "p.to(v.dtype)                                            -> dropped",
    "dropout": "dropout(p, rate, train) / native_dropout(...)[0]      -> dropout_p = rate if train",
}


def match_softmax(sm: Node) -> AttentionBlock:
    """Match the explicit form around softmax node ``sm``."""
    args = sm.args
    rank = len(dims_of(sm) or ())
    if rank < 3:
        raise NoMatch("softmax input of rank < 3")
    if args[1] % rank != rank - 1:
        raise NoMatch("softmax not over the last dim")
    if sm.target is aten.softmax.int and len(args) > 2 and args[2] not in (None, torch.float32, _dtype(args[0])):
        raise NoMatch("softmax to a lower-precision dtype")
    pv, v_node, fwd_nodes, dropout_p = _prob_chain(sm)
    qk, steps = _score_chain(sm)
    dead_order = [pv] + list(reversed(fwd_nodes)) + [s.node for s in steps] + [qk]
    # -- q, kT with constant factors folded
    form, alpha, pre_bias = "explicit", 1.0, None
    if target_of(qk) is aten.einsum.default:
        q_in, k_in, k_is_t = _einsum_qk(qk)  # type: ignore[misc]
        form = "explicit_einsum"
    else:
        q_in, k_in, k_is_t = qk.args[1 if target_of(qk) is aten.baddbmm.default else 0], None, True
        k_in = qk.args[2 if target_of(qk) is aten.baddbmm.default else 1]
    if target_of(qk) is aten.baddbmm.default:  # beta * input + alpha * (q @ kT)
        args = bind_args(qk)
        alpha, beta = scalar_value(args["alpha"]), scalar_value(args["beta"])
        if alpha is None or beta is None or alpha <= 0.0:
            raise NoMatch("baddbmm with a non-constant or non-positive alpha")
        pre_bias = (args["self"], beta) if beta != 0.0 else None
        form = "explicit_baddbmm"
    q_node, q_factor = _fold_scalar_mul(q_in)
    k_side, k_factor = _fold_scalar_mul(k_in)
    if k_is_t:
        k_node, needs_t = _k_from_kt(k_side)
    else:
        k_node, needs_t = k_side, False
    block = AttentionBlock(form=form, root=pv, q=q_node, k=k_node, v=v_node,
                           k_needs_transpose=needs_t, dead=dead_order, dropout_p=dropout_p)
    scale = q_factor * k_factor * alpha
    if pre_bias is not None:
        if not isinstance(pre_bias[0], Node):
            raise NoMatch("baddbmm input is not a tensor")
        _add_additive(block, pre_bias[0], pre_bias[1])
    scale = _fold_score_steps(block, steps, scale)
    if any(f > EXCLUDE_THRESHOLD for f in block.fills):
        raise NoMatch(f"a mask fill scaled to {max(block.fills):.3g} no longer excludes (> {EXCLUDE_THRESHOLD})")
    block.scale = scale
    return block


def _prob_chain(sm: Node) -> tuple[Node, Node, list[Node], float]:
    """Forwards from softmax: casts and dropout, then matmul(p, v).

    Returns:
        The p @ v node, the v operand, the nodes from ``sm`` on (in order) and the dropout rate.
    """
    fwd_nodes: list[Node] = [sm]
    dropout_p = 0.0
    cur = sm
    while True:
        user = single_user(cur)
        t = target_of(user)
        if t in _CAST_TARGETS:
            fwd_nodes.append(user)
            cur = user
            continue
        if t is aten.dropout.default and user.args[0] is cur:
            if dropout_p:
                raise NoMatch("two dropouts on the probabilities")
            dropout_p = float(user.args[1]) if bool(user.args[2]) else 0.0
            fwd_nodes.append(user)
            cur = user
            continue
        if t is aten.native_dropout.default and user.args[0] is cur:
            g = single_user(user)
            if target_of(g) is not operator.getitem or g.args[1] != 0 or dropout_p:
                raise NoMatch("native_dropout mask used, or two dropouts")
            train = user.args[2] if len(user.args) > 2 else True
            dropout_p = float(user.args[1]) if train else 0.0
            fwd_nodes.extend([user, g])
            cur = g
            continue
        if t in _MATMUL and user.args[0] is cur and user.args[1] is not cur:
            return user, user.args[1], fwd_nodes, dropout_p
        if t is aten.einsum.default and _einsum_pv(user, cur) is not None:
            return user, _einsum_pv(user, cur), fwd_nodes, dropout_p
        raise NoMatch(f"{user.name}: {t} after softmax is not a cast, dropout or p @ v")


def _score_chain(sm: Node) -> tuple[Node, list[_Step]]:
    """Backwards from softmax: the score chain down to matmul(q, kT) (the qk node, and the
    steps read from softmax back to it); every intermediate must have a single user."""
    steps: list[_Step] = []
    cur = sm.args[0]
    while True:
        if not isinstance(cur, Node):
            raise NoMatch("scores are not a graph value")
        if single_user(cur) is not (steps[-1].node if steps else sm):
            raise NoMatch(f"{cur.name} escapes")
        if is_qk(cur):
            return cur, steps
        prev = _score_operand(cur)
        steps.append(_score_step(cur, prev))
        cur = prev


def _fold_score_steps(block: AttentionBlock, steps: list[_Step], scale: float) -> float:
    """Interpret the score chain in data-flow order (matmul -> softmax) into ``block``'s biases,
    masks and fills; returns ``scale`` times the chain's scale factors."""
    for step in reversed(steps):
        if step.kind == "scale":
            scale *= step.data
            block.biases = [(b, c * step.data) for b, c in block.biases]
            block.fills = [f * step.data for f in block.fills]
        elif step.kind == "bias":
            _add_additive(block, step.data[0], step.data[1])
        elif step.kind == "mask":
            _add_keep(block, step.data[0], step.data[1])
            block.fills.append(step.data[2])
    return scale


def _score_operand(node: Node) -> Node:
    """The operand of a score step that carries the scores (same shape as the step's output)."""
    t = target_of(node)
    out_shape = dims_of(node)
    where = t in (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf)
    cands = node.args[1:3] if where else node.args[:2]
    for c in cands:
        if isinstance(c, Node) and same_dims(dims_of(c), out_shape) and _reaches_matmul(c):
            return c
    raise NoMatch(f"{node.name}: no score operand")


def _reaches_matmul(node: Node, depth: int = 12) -> bool:
    """Whether a chain of single-input-shaped steps leads from ``node`` back to a matmul."""
    for _ in range(depth):
        t = target_of(node)
        if is_qk(node):
            return True
        if t is None or not node.args or not isinstance(node.args[0], Node):
            return False
        nxt = None
        cands = node.args[1:3] if t in (aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf) \
            else node.args[:2]
        for c in cands:
            if isinstance(c, Node) and same_dims(dims_of(c), dims_of(node)):
                nxt = c
                if is_qk(c):
                    return True
        if nxt is None:
            return False
        node = nxt
    return False


def matchers() -> list[tuple[Callable[[Node], bool], Callable[[Node], AttentionBlock]]]:
    """The root table: (is this node a root?, matcher)."""
    return [
        (lambda n: target_of(n) in SDPA_FORMS, match_sdpa),  # sdpa(q, k, v, ...)   -> attention
        (lambda n: target_of(n) in _SOFTMAX, match_softmax),  # softmax(qkT...) @ v -> attention
    ]


def finish_block(block: AttentionBlock) -> AttentionBlock:
    """Common checks and GQA folding after a root matcher succeeded."""
    qs, ks, vs = dims_of(block.q), dims_of(block.k), dims_of(block.v)
    if qs is None or ks is None or vs is None:
        raise NoMatch("q/k/v shapes unknown")
    if block.k_needs_transpose:
        ks = ks[:-2] + (ks[-1], ks[-2])
    if len(qs) == len(ks) == len(vs) == 3:
        block.rank3 = True
        qs, ks, vs = (1,) + qs, (1,) + ks, (1,) + vs
    if len(qs) != 4 or len(ks) != 4 or len(vs) != 4:
        raise NoMatch(f"q/k/v ranks {len(qs)}/{len(ks)}/{len(vs)} (need 3 or 4)")
    if not isinstance(qs[3], int):
        raise NoMatch("symbolic head dim")
    if not (dim_eq(qs[0], ks[0]) and dim_eq(qs[0], vs[0]) and dim_eq(ks[2], vs[2])
            and dim_eq(qs[3], ks[3]) and dim_eq(vs[3], qs[3])):
        raise NoMatch(f"shapes q{qs} k{ks} v{vs} are not [B,H,M,D]/[B,Hkv,N,D] with equal D")
    dts = {_dtype(block.q), _dtype(block.k), _dtype(block.v)}
    if len(dts) != 1 or not dts <= {torch.float16, torch.bfloat16, torch.float32}:
        raise NoMatch(f"q/k/v dtypes {dts}")
    if qs[3] > 256:
        raise NoMatch(f"head dim {qs[3]} > 256")
    if not block.k_needs_transpose and not block.rank3:
        k_src, gk, form_k = unrepeat_kv(block.k)
        v_src, gv, _ = unrepeat_kv(block.v)
        if gk == gv and gk > 1:
            block.k, block.v, block.gqa_form = k_src, v_src, form_k
            ks = dims_of(k_src) or ks
    hq, hkv = qs[1], ks[1]
    if isinstance(hq, int) and isinstance(hkv, int):
        if hq % hkv:
            raise NoMatch(f"{hq} query heads not a multiple of {hkv} kv heads")
        block.gqa_ratio = hq // hkv
    elif dim_eq(hq, hkv):
        block.gqa_ratio = 1
    else:
        raise NoMatch("symbolic head counts that are not provably equal")
    full = (qs[0], qs[1], qs[2], vs[2])
    for node, _ in block.mask_leaves + [(b, 1.0) for b, _ in block.biases]:  # type: ignore[misc]
        shp = dims_of(node)
        if shp is None or len(shp) > 4:
            raise NoMatch("mask/bias shape unknown or rank > 4")
        if not broadcasts_to(shp, full):
            raise NoMatch(f"mask/bias shape {shp} does not broadcast to {full} without growing the scores")
    for node, _ in block.biases:
        if _dtype(node) not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise NoMatch("non-float additive term")
    return block
