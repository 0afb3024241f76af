"""Fold inference-mode batch norm and frozen per-channel affine ops into convolutions.

Runs on the post-AOTAutograd *inference* ATen graph (``torch.fx.GraphModule``). A convolution
whose only user starts a chain of per-output-channel affine steps is rewritten into one
convolution followed by one per-channel scale and shift, which fusion puts in the convolution
kernel's epilogue; the two [C] coefficients are computed *in the graph* from the parameter
placeholders (parameters are graph inputs)::

    y = conv(x, w, b) * s + t            # the whole chain, accumulated step by step
      = conv(x, w) * s[:, None, ...] + (b * s + t)[:, None, ...]

**Why not scale the weights** (``conv(x, w * s, b * s + t)``, the textbook fold): the weights are
graph inputs, so the scaled copy would be recomputed on every call, reading and writing every
weight (ResNet-18: 11M parameters against ~2M output elements at batch 1) and defeating the
kernels' packed-weight cache, which keys on the parameter's identity and version. Measured on a
2-core EPYC: ResNet-18 at batch 1 ran at 0.53x eager with the weight fold.

Each chain step is an entry of :data:`AFFINE_RULES` (``(s, t)`` of the chain so far, the
step's per-channel operand) ``-> (s', t')``. Batch norm in eval mode
(``_native_batch_norm_legit_no_training``, or ``native_batch_norm`` /
``_native_batch_norm_legit`` with ``training=False``) is the step
``s = weight / sqrt(var + eps)``, ``t = bias - mean * s``. Its core-ATen decomposition
(``sub mean -> mul rsqrt -> mul weight -> add bias`` with ``[C, 1, 1]`` operands) and frozen
affine norms (``x * scale + shift``) are plain chains of the arithmetic rules.

The graph is left untouched when a condition fails: transposed convolution, a convolution
(or intermediate) with other users, training-mode batch norm, an operand that is not
per-channel, a broadcast that changes the output shape, or a dtype change along the chain.
"""
from __future__ import annotations

import logging
import operator
from typing import Any, Callable, Union

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode

log = logging.getLogger(__name__)
aten = torch.ops.aten

#: An affine coefficient: a graph node (shape [C] or []), a Python number, or None (the
#: multiplicative identity; the additive one is 0.0).
Coef = Union[fx.Node, float, int, None]

__all__ = ["fold_batchnorm", "AFFINE_RULES", "BN_TARGETS"]


class _Builder:
    """Emits coefficient arithmetic before ``anchor`` (with fake-tensor metadata)."""

    def __init__(self, graph: fx.Graph, anchor: fx.Node) -> None:
        self.graph = graph
        self.anchor = anchor

    def call(self, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> fx.Node:
        with self.graph.inserting_before(self.anchor):
            node = self.graph.call_function(target, args, kwargs or {})
        _set_meta(node)
        return node

    def mul(self, a: Coef, b: Coef) -> Coef:
        if a is None:  # None: the multiplicative identity (s starts there)
            return b
        if b is None:
            return a
        if _is_zero(a) or _is_zero(b):
            return 0.0
        if not isinstance(a, fx.Node) and not isinstance(b, fx.Node):
            return a * b
        if not isinstance(a, fx.Node):
            a, b = b, a
        return self.call(aten.mul.Tensor, (a, b))

    def add(self, a: Coef, b: Coef) -> Coef:
        if a is None or b is None:
            raise ValueError("None is a multiplicative identity only")
        if _is_zero(a):  # 0.0: the additive identity (t starts there)
            return b
        if _is_zero(b):
            return a
        if not isinstance(a, fx.Node) and not isinstance(b, fx.Node):
            return a + b
        if not isinstance(a, fx.Node):
            a, b = b, a
        return self.call(aten.add.Tensor, (a, b))

    def neg(self, a: Coef) -> Coef:
        if a is None:
            return -1.0
        return self.call(aten.neg.default, (a,)) if isinstance(a, fx.Node) else -a

    def recip(self, a: Coef) -> Coef:
        if a is None:
            return None
        return self.call(aten.reciprocal.default, (a,)) if isinstance(a, fx.Node) else 1.0 / a


def _is_zero(v: Coef) -> bool:
    return not isinstance(v, fx.Node) and v is not None and v == 0


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _set_meta(node: fx.Node) -> None:
    """Fill ``node.meta['val']`` by running its op on the inputs' fake values, when possible."""
    vals = [_val(a) for a in node.all_input_nodes]
    if any(v is None for v in vals):
        return
    fake_mode = detect_fake_mode(vals)
    if fake_mode is None:
        return
    args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: n.meta["val"])
    with fake_mode:
        node.meta["val"] = node.target(*args, **kwargs)  # type: ignore[operator]


def _per_channel(g: _Builder, operand: Any, channels: int, rank: int, dtype: torch.dtype) -> Coef | bool:
    """The operand as a [C] / [] coefficient, or False when it is not per-output-channel."""
    if isinstance(operand, (int, float)) and not isinstance(operand, bool):
        return operand
    val = _val(operand)
    if val is None or not isinstance(val, torch.Tensor) or val.dtype != dtype:
        return False
    shape = list(val.shape)
    if len(shape) > rank:
        return False
    shape = [1] * (rank - len(shape)) + shape
    if shape[0] != 1 or any(s != 1 for s in shape[2:]) or shape[1] not in (1, channels):
        return False
    if list(val.shape) == [shape[1]] or val.dim() == 0:
        return operand
    return g.call(aten.view.default, (operand, [shape[1]]))


# -- chain steps: (s, t, c) -> (s', t') for y_new = step(y_old) with y_old = conv * s + t ----
AffineRule = Callable[[_Builder, Coef, Coef, Coef], tuple[Coef, Coef]]
AFFINE_RULES: dict[tuple[Any, int], AffineRule] = {
    # y + c -> s, t + c
    (aten.add.Tensor, 0): lambda g, s, t, c: (s, g.add(t, c)),
    # c + y -> s, t + c
    (aten.add.Tensor, 1): lambda g, s, t, c: (s, g.add(t, c)),
    # y - c -> s, t - c
    (aten.sub.Tensor, 0): lambda g, s, t, c: (s, g.add(t, g.neg(c))),
    # c - y -> -s, c - t
    (aten.sub.Tensor, 1): lambda g, s, t, c: (g.neg(s), g.add(c, g.neg(t))),
    # y * c -> s * c, t * c
    (aten.mul.Tensor, 0): lambda g, s, t, c: (g.mul(s, c), g.mul(t, c)),
    # c * y -> s * c, t * c
    (aten.mul.Tensor, 1): lambda g, s, t, c: (g.mul(s, c), g.mul(t, c)),
    # y / c -> s / c, t / c
    (aten.div.Tensor, 0): lambda g, s, t, c: (g.mul(s, g.recip(c)), g.mul(t, g.recip(c))),
}

#: Eval-mode batch norm ops -> index of their ``training`` flag (None: always eval).
BN_TARGETS: dict[Any, int | None] = {
    aten._native_batch_norm_legit_no_training.default: None,
    aten._native_batch_norm_legit.default: 5,
    aten.native_batch_norm.default: 5,
}


def _bn_step(g: _Builder, node: fx.Node, s: Coef, t: Coef, channels: int,
             dtype: torch.dtype) -> tuple[Coef, Coef, fx.Node] | None:
    """Eval batch norm: s' = s * k, t' = t * k + (beta - mean * k), k = gamma / sqrt(var + eps)."""
    flag = BN_TARGETS[node.target]
    if flag is not None and bool(node.args[flag]):
        return None  # training-mode batch norm uses batch statistics: not foldable
    weight, bias, mean, var = node.args[1:5]
    eps = float(node.args[-1] if flag is None else node.args[7])
    outs = [u for u in node.users]
    if not all(u.target is operator.getitem for u in outs):
        return None
    main = [u for u in outs if u.args[1] == 0]
    if len(main) != 1 or any(len(u.users) for u in outs if u.args[1] != 0):
        return None
    for p in (weight, bias, mean, var):
        v = _val(p)
        if p is not None and (v is None or list(v.shape) != [channels]):
            return None
    inv_std = g.call(aten.rsqrt.default, (g.call(aten.add.Tensor, (var, eps)),))
    k = g.mul(inv_std, weight)
    shift = g.add(g.neg(g.mul(mean, k)), 0.0 if bias is None else bias)
    return g.mul(s, k), g.add(g.mul(t, k), shift), main[0]


def _fold_one(gm: fx.GraphModule, conv: fx.Node) -> bool:
    x, w, b, stride, padding, dilation, transposed, out_pad, groups = conv.args
    conv_val, w_val = _val(conv), _val(w)
    if transposed or conv_val is None or w_val is None or len(conv.users) != 1:
        return False
    channels, rank, dtype = conv_val.shape[1], conv_val.dim(), conv_val.dtype
    cur, s, t = conv, None, 0.0  # y = conv * s + t  # type: ignore[var-annotated]
    steps: list[fx.Node] = []  # nodes the folded conv replaces
    while len(cur.users) == 1 or cur is conv:
        user = next(iter(cur.users))
        g = _Builder(gm.graph, user)
        if user.target in BN_TARGETS and user.args[0] is cur:
            res = _bn_step(g, user, s, t, channels, dtype)
            if res is None:
                break
            s, t, nxt = res
            steps += [user, nxt]
            cur = nxt
            continue
        pos = next((i for i, a in enumerate(user.args[:2]) if a is cur), None)
        rule = AFFINE_RULES.get((user.target, pos)) if pos is not None else None
        if rule is None or user.kwargs.get("alpha", 1) != 1 or user.args.count(cur) != 1:
            break
        out_val = _val(user)
        if out_val is None or out_val.shape != conv_val.shape or out_val.dtype != dtype:
            break
        coef = _per_channel(g, user.args[1 - pos], channels, rank, dtype)
        if coef is False:
            break
        s, t = rule(g, s, t, coef)  # type: ignore[arg-type]
        steps.append(user)
        cur = user
    if not steps:
        return False
    _rewrite(gm, conv, steps[-1], s, t, channels)
    return True


def _rewrite(gm: fx.GraphModule, conv: fx.Node, last: fx.Node, s: Coef, t: Coef, channels: int) -> None:
    """Replace the chain ``conv .. last`` by ``conv(x, w) * s + (b * s + t)`` with ``s`` and the
    shift as per-channel ``[C, 1, ...]`` operands: the convolution's epilogue (fused into its kernel)
    applies them, so the weights stay the parameters themselves (packed once per version, never
    recomputed per call) and only two vectors of C elements are computed per call."""
    x, w, b, *rest = conv.args
    g = _Builder(gm.graph, last)
    conv_val = _val(conv)
    shift = t if b is None else g.add(g.mul(b, s), t)
    bare = g.call(aten.convolution.default, (x, w, None, *rest))
    bare.meta.update({k: v for k, v in conv.meta.items() if k not in ("val", "tensor_meta")})
    view_shape = [channels] + [1] * (conv_val.dim() - 2)
    out: fx.Node = bare
    if s is not None:
        out = g.call(aten.mul.Tensor, (out, _channel_operand(g, s, view_shape, conv_val.dtype)))
    if not _is_zero(shift):
        out = g.call(aten.add.Tensor, (out, _channel_operand(g, shift, view_shape, conv_val.dtype)))
    last.replace_all_uses_with(out)
    _erase_dead(last)


def _channel_operand(g: _Builder, coef: Coef, view_shape: list[int], dtype: torch.dtype) -> Any:
    """``coef`` (a [C] or [] node, or a number) as an operand of the convolution's output: nodes
    viewed as ``[C, 1, ...]`` and cast to its dtype (so type promotion keeps the output's dtype)."""
    if not isinstance(coef, fx.Node):
        return coef
    val = _val(coef)
    node = _cast(g, coef, dtype)
    if val is not None and val.dim() == 1:
        node = g.call(aten.view.default, (node, view_shape))
    return node


def _cast(g: _Builder, node: Any, dtype: torch.dtype) -> Any:
    """``node`` converted to ``dtype`` when type promotion changed it (mixed precision)."""
    val = _val(node)
    if isinstance(node, fx.Node) and val is not None and val.dtype != dtype:
        return g.call(aten._to_copy.default, (node,), {"dtype": dtype})
    return node


def _erase_dead(node: fx.Node) -> None:
    """Erase ``node`` and, recursively, its now-unused pure call_function inputs."""
    if node.op != "call_function" or node.users or node.is_impure():
        return
    inputs = list(node.all_input_nodes)
    for user in list(node.users):  # pragma: no cover - no users by construction
        _erase_dead(user)
    node.graph.erase_node(node)
    for inp in inputs:
        if inp.op == "call_function" and not inp.users:
            # getitem siblings of a folded batch norm have no users either
            _erase_dead(inp)
        elif inp.op == "call_function" and all(u.target is operator.getitem and not u.users
                                               for u in inp.users):
            for u in list(inp.users):
                u.graph.erase_node(u)
            _erase_dead(inp)


def fold_batchnorm(gm: fx.GraphModule) -> int:
    """Fold eval batch norms and per-channel affine chains into the preceding convolutions.

    Returns:
        The number of convolutions rewritten (0 leaves ``gm`` unchanged).
    """
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is aten.convolution.default:
            if _fold_one(gm, node):
                count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
        log.debug("folded %d normalization chains into convolutions", count)
    return count
