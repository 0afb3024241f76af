"""Attention rewrite: replace every attention block of a captured graph with one fused op.

Pipeline position: Dynamo graph -> :func:`rewrite_attention` -> AOTAutograd -> tilewright IR.
The Dynamo graph is re-traced to a *pre-dispatch ATen* graph (canonical ``aten.matmul``,
``aten.softmax.int``, ``aten.scaled_dot_product_attention`` ... before autograd), the patterns
of :mod:`tilewright.passes.fx.attention_patterns` are matched there, and each match becomes::

    out, lse = torch.ops.tilewright.flash_attention(q, k, v, bias, mask, seed, scale,
                                                    causal, causal_offset, dropout_p)

whose registered autograd gives AOTAutograd one ``flash_attention_backward`` node per block.
Graphs with symbolic sizes are re-traced symbolically (the placeholders' own fake values);
every shape condition of a match must then hold provably for all sizes (no guards are added),
and causal forms whose lengths are symbolic are streamed as masks instead. When nothing
matches, or the re-trace fails, the original graph is returned untouched and the reason logged.
"""
from __future__ import annotations

import logging
import operator
from typing import Any

import torch
from torch.fx import Graph, GraphModule, Node

from ...ops import attention as _ops  # noqa: F401  (registers torch.ops.tilewright.flash_attention)
from .attention_masks import dim_eq, dims_of, meta_val
from .attention_patterns import AttentionBlock, NoMatch, finish_block, matchers

log = logging.getLogger(__name__)
aten = torch.ops.aten

__all__ = ["rewrite_attention", "fuse_attention_blocks", "pre_dispatch_trace"]

_HINTS = ("softmax", "scaled_dot_product", "sdpa")


def _maybe_attention(gm: GraphModule) -> bool:
    """Cheap pre-check on the torch-level graph: is there any softmax or SDPA call at all?"""
    for node in gm.graph.nodes:
        if node.op in ("call_function", "call_method", "call_module"):
            name = str(getattr(node.target, "__name__", node.target)).lower()
            if any(h in name for h in _HINTS):
                return True
    return False


def _is_dynamic(gm: GraphModule, example_inputs: list[Any]) -> str | None:
    """A reason when the graph has symbolic shapes (the re-trace would bake sizes in)."""
    for x in example_inputs:
        if isinstance(x, torch.SymInt):
            return "symbolic int input"
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("example_value", node.meta.get("val"))
        if isinstance(val, torch.SymInt):
            return f"symbolic input {node.name}"
        if isinstance(val, torch.Tensor) and any(not isinstance(s, int) for s in val.shape):
            return f"dynamic shape on input {node.name}"
    return None


def pre_dispatch_trace(gm: GraphModule, example_inputs: list[Any], symbolic: bool = False) -> GraphModule:
    """Re-trace ``gm`` to a pre-dispatch ATen graph under the inputs' fake mode (raises on failure).

    With ``symbolic``, the placeholders' own fake values (Dynamo's ``example_value``, symbolic
    sizes included) are traced under their fake mode and shape environment, so sizes stay symbolic.
    """
    from torch._guards import detect_fake_mode, tracing
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    if symbolic:
        vals = [n.meta.get("example_value", n.meta.get("val")) for n in gm.graph.nodes if n.op == "placeholder"]
        modes = {id(v.fake_mode): v.fake_mode for v in vals if isinstance(v, FakeTensor)}
        if len(modes) != 1 or any(v is None for v in vals):
            raise RuntimeError("placeholders lack fake values from one fake mode")
        (mode,) = modes.values()
        # NOTE: outside Dynamo's tracing context, whose fake mode is not the one of these values.
        with tracing(None), mode:
            return make_fx(gm, pre_dispatch=True)(*vals)
    fake_mode = detect_fake_mode(example_inputs) or FakeTensorMode(allow_non_fake_inputs=True)
    fakes = [fake_mode.from_tensor(x) if isinstance(x, torch.Tensor) and not isinstance(x, FakeTensor) else x
             for x in example_inputs]
    with fake_mode:
        traced = make_fx(gm, pre_dispatch=True)(*fakes)
    return traced


def rewrite_attention(gm: GraphModule, example_inputs: list[Any]) -> tuple[GraphModule, list[dict[str, Any]]]:
    """Fuse every attention block of a Dynamo graph; returns (graph, one info dict per fused block).

    The info dicts feed the explain report (``attention_fused == len(infos)``); each says which
    form matched and what the fused kernel handles (causal and its alignment, boolean mask and
    its shape, additive bias and its shape, GQA ratio, dropout, scale, q/k/v layouts).
    """
    from ...config import config

    if not getattr(config, "fuse_attention", True):
        return gm, []
    if not _maybe_attention(gm):
        return gm, []
    dynamic = _is_dynamic(gm, example_inputs)
    try:
        traced = pre_dispatch_trace(gm, example_inputs, symbolic=bool(dynamic))
    except Exception as exc:  # noqa: BLE001 -- any trace failure leaves the graph alone
        log.warning("attention rewrite skipped: pre-dispatch re-trace failed (%s: %s)", type(exc).__name__, exc)
        return gm, []
    infos = fuse_attention_blocks(traced)
    if not infos:
        return gm, []
    return traced, infos


def fuse_attention_blocks(gm: GraphModule) -> list[dict[str, Any]]:
    """Match and replace attention blocks in a pre-dispatch ATen graph, in place."""
    graph = gm.graph
    roots = [(n, fn) for n in graph.nodes for is_root, fn in matchers() if is_root(n)]
    infos: list[dict[str, Any]] = []
    for node, match in roots:
        if node not in _live(graph):  # erased as part of an earlier block
            continue
        try:
            block = finish_block(match(node))
        except NoMatch as why:
            log.info("attention pattern at %s not fused: %s", node.name, why)
            continue
        infos.append(_replace(graph, block))
    if infos:
        graph.eliminate_dead_code()
        graph.lint()
        gm.recompile()
    return infos


def _live(graph: Graph) -> set[Node]:
    return set(graph.nodes)


def _plain(dims: Any) -> list[Any]:
    """Sizes as JSON-friendly values: ints, or the symbol's text when symbolic."""
    return [d if isinstance(d, int) else str(d) for d in dims]


def _layout(node: Node) -> str:
    """Dims of a [B, H, S, D] value ordered by stride (outermost first), e.g. "BHSD" or "BSHD"."""
    val = meta_val(node)
    if not isinstance(val, torch.Tensor) or val.dim() != 4:
        return "?"
    strides = [s if isinstance(s, int) else getattr(s.node, "hint", None) for s in val.stride()]
    if any(s is None for s in strides):  # NOTE: never int() a SymInt here: that adds a guard
        return "?"
    names = "BHSD"
    order = sorted(range(4), key=lambda i: (-strides[i], i))
    return "".join(names[i] for i in order)


def _replace(graph: Graph, block: AttentionBlock) -> dict[str, Any]:
    """Insert the fused op before ``block.root``, reroute its users and delete the matched nodes."""
    root = block.root
    qs, vs = dims_of(block.q), dims_of(block.v)
    assert qs is not None and vs is not None
    if block.rank3:
        qs, vs = (1,) + qs, (1,) + vs
    B, H, M, D = qs
    N = vs[2]
    with graph.inserting_before(root):
        q, k, v = block.q, block.k, block.v
        if block.k_needs_transpose:
            k = graph.call_function(aten.transpose.int, (k, -2, -1))
        if block.rank3:  # [B*H, S, D] -> [1, B*H, S, D] views
            q, k, v = (graph.call_function(aten.unsqueeze.default, (t, 0)) for t in (q, k, v))
        # bias: sum of coefficient-weighted additive terms
        bias = None
        for term, coef in block.biases:
            if coef != 1.0:
                term = graph.call_function(aten.mul.Tensor, (term, coef))
            bias = term if bias is None else graph.call_function(aten.add.Tensor, (bias, term))
        # mask: AND of keep leaves (exclusion leaves inverted, float leaves compared with 0)
        mask = None
        for leaf, keep in block.mask_leaves:
            val = meta_val(leaf)
            if isinstance(val, torch.Tensor) and val.dtype != torch.bool:
                leaf = graph.call_function(aten.ne.Scalar, (leaf, 0))
            if not keep:
                leaf = graph.call_function(aten.logical_not.default, (leaf,))
            mask = leaf if mask is None else graph.call_function(aten.logical_and.default, (mask, leaf))
        seed = None
        if block.dropout_p > 0.0:
            device = meta_val(block.q).device
            seed = graph.call_function(aten.randint.low, (0, 2**31 - 1, [1]),
                                       {"dtype": torch.int64, "device": device})
        scale = float(D ** -0.5 if block.scale is None else block.scale)
        causal = block.causal_offset is not None
        offset = int(block.causal_offset or 0)
        fused = graph.call_function(torch.ops.tilewright.flash_attention.default,
                                    (q, k, v, bias, mask, seed, scale, causal, offset, float(block.dropout_p)))
        out = graph.call_function(operator.getitem, (fused, 0))
        if block.rank3:
            out = graph.call_function(aten.squeeze.dim, (out, 0))
    out.meta["val"] = root.meta.get("val")
    root.replace_all_uses_with(out)
    for dead in block.dead:
        if dead.graph is graph and not dead.users:
            graph.erase_node(dead)
    return _describe(block, scale, causal, offset, B, H, M, N, D)


def _describe(block: AttentionBlock, scale: float, causal: bool, offset: int,
              B: int, H: int, M: int, N: int, D: int) -> dict[str, Any]:
    mask_shapes = [_plain(dims_of(n) or ()) for n, _ in block.mask_leaves]
    bias_shapes = [_plain(dims_of(n) or ()) for n, _ in block.biases]
    align = "none"
    if causal:
        align = "top-left" if offset == 0 else ("bottom-right" if dim_eq(N - M, offset) else f"offset {offset}")
    B, H, M, N = (_plain((x,))[0] for x in (B, H, M, N))
    handles = []
    if causal:
        handles.append(f"causal ({align}, blocks above the diagonal skipped)")
    if mask_shapes:
        handles.append(f"boolean mask {mask_shapes} streamed by block (all-false blocks skipped)")
    if bias_shapes:
        handles.append(f"additive bias {bias_shapes} streamed by block")
    if block.gqa_ratio > 1:
        handles.append(f"grouped-query ratio {block.gqa_ratio} without copying K/V")
    if block.dropout_p:
        handles.append(f"dropout p={block.dropout_p}")
    return {
        "form": block.form + ("_bmm" if block.rank3 else ""),
        "node": block.root.name,
        "shape": {"B": B, "H": H, "HKV": H // block.gqa_ratio if isinstance(H, int) else H, "M": M, "N": N, "D": D},
        "scale": scale,
        "causal": causal,
        "causal_offset": offset,
        "causal_alignment": align,
        "mask_kind": "bool" if mask_shapes else "none",
        "mask_shapes": mask_shapes,
        "bias_kind": "additive" if bias_shapes else "none",
        "bias_shapes": bias_shapes,
        "gqa_ratio": block.gqa_ratio,
        "gqa_form": block.gqa_form,
        "dropout_p": block.dropout_p,
        "layouts": {"q": _layout(block.q), "k": _layout(block.k), "v": _layout(block.v)},
        "handles": "; ".join(handles) or "plain (no mask, bias, causal or dropout)",
    }
