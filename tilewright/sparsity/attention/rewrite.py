"""The IR rewrite: chosen ``tilewright::flash_attention`` nodes become ``block_sparse_attention`` nodes.

The attention rewrite (``passes/fx/attention_rewrite.py``) turns every matched attention block
into a ``flash_attention`` node before AOTAutograd, so the IR graph of a compiled model holds one
forward node per attention site, in the model's order. :func:`rewrite_attention_sites` takes
plan entries (``{"site": <ordinal or "attention:<ordinal>">, "kind": "attention", "method",
"params", ...}``) and replaces the sites they name, keeping the node's output values (so every
user stays valid). It runs after the default passes, before fusion, and only when a sparsity
plan asks for it; a site is left exact (and logged) when it is not a forward inference call the
sparse kernels take: a bias, a boolean mask, dropout, or an ``lse`` that a backward graph uses.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from ...ir.graph import Graph, Node, Value
from ...ir.registry import overload_name, packet_name
from .op import METHODS, params_text

log = logging.getLogger(__name__)

_FORWARD = "tilewright.flash_attention"


def attention_sites(graph: Graph) -> list[Node]:
    """The graph's ``flash_attention`` forward nodes, in graph order (site ordinal = list position)."""
    return [n for n in graph.nodes if packet_name(n.target) == _FORWARD]


def site_ordinal(site: Any) -> int:
    """The ordinal of a plan entry's ``site`` (an int or ``"attention:<ordinal>"``)."""
    if isinstance(site, int):
        return site
    text = str(site)
    if text.startswith("attention:"):
        text = text.split(":", 1)[1]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"attention site {site!r} is neither an ordinal nor 'attention:<ordinal>'") from None


def _field(entry: Any, name: str, default: Any = None) -> Any:
    if isinstance(entry, Mapping):
        return entry.get(name, default)
    return getattr(entry, name, default)


def unsupported_site(graph: Graph, node: Node) -> str | None:
    """Why a ``flash_attention`` node cannot become a sparse one (None when it can)."""
    q, k, v, bias, mask, seed, _scale, _causal, _offset, dropout_p = node.args[:10]
    if not all(isinstance(x, Value) for x in (q, k, v)):
        return "non-tensor q, k or v"
    if bias is not None:
        return "an additive bias"
    if mask is not None:
        return "a boolean mask"
    if float(dropout_p or 0.0) > 0.0 or seed is not None:
        return "dropout"
    if len(node.outputs) > 1:
        lse = node.outputs[1]
        if lse.users or any(v is lse for v in graph.output_values()):
            return "its log-sum-exp is used (a training graph: sparse attention is forward inference only)"
    return None


def rewrite_attention_sites(graph: Graph, entries: Iterable[Any], record: list[dict[str, Any]] | None = None) -> int:
    """Replace the attention sites ``entries`` name by block-sparse nodes; returns how many changed.

    Entries of another kind, with method ``exact``, or naming a site the graph lacks are skipped
    (the last logged); a site the sparse kernels cannot take stays exact (logged with its reason).
    ``record`` (when given) gets ``{"site" (the entry's), "ordinal", "method", "applied", "reason",
    "density"}`` per chosen site; ``density`` is the kept block fraction of a static pattern at this
    node's shape (None for the dynamic methods, whose index depends on each call's q and k).
    """
    sites = attention_sites(graph)
    chosen: dict[int, tuple[str, str, Any]] = {}
    for entry in entries:
        if _field(entry, "kind", "attention") != "attention":
            continue
        method = str(_field(entry, "method", "exact"))
        if method == "exact":
            continue
        if method not in METHODS:
            raise ValueError(f"attention plan entry {_field(entry, 'site')!r}: unknown method {method!r}; "
                             f"use one of {METHODS} or 'exact'")
        ordinal = site_ordinal(_field(entry, "site"))
        if not 0 <= ordinal < len(sites):
            log.warning("sparsity plan names attention site %d but the graph has %d; skipped", ordinal, len(sites))
            continue
        chosen[ordinal] = (method, params_text(method, _field(entry, "params") or {}), _field(entry, "site"))
    replaced = 0
    target = torch.ops.tilewright.block_sparse_attention.default
    for ordinal, (method, params, site) in sorted(chosen.items()):
        node = sites[ordinal]
        reason = unsupported_site(graph, node)
        if record is not None:
            record.append({"site": site, "ordinal": ordinal, "method": method, "applied": reason is None,
                           "reason": reason and f"stays exact: {reason}",
                           "density": _static_density(node, method, params) if reason is None else None})
        if reason is not None:
            log.warning("attention site %d stays exact: %s", ordinal, reason)
            continue
        q, k, v, _bias, _mask, _seed, scale, causal, offset, _p = node.args[:10]
        new = Node(overload_name(target), target, (q, k, v, float(scale), bool(causal), int(offset), method, params),
                   {})
        new.meta = dict(node.meta, sparsity={"site": ordinal, "method": method, "params": params})
        new.outputs = list(node.outputs)
        for value in new.outputs:
            value.producer = new
        graph.nodes[graph.nodes.index(node)] = new
        replaced += 1
    if replaced:
        graph.rebuild_users()
    return replaced


def _static_density(node: Node, method: str, params: str) -> float | None:
    """Kept block fraction of a static pattern at the node's shapes (None: dynamic method)."""
    if method not in ("sinks_window", "vertical_slash"):
        return None
    from .op import _static_index

    q, k = node.args[0], node.args[1]
    B, H, M = (int(x) for x in q.type.shape[:3])
    causal, offset = bool(node.args[7]), int(node.args[8])
    return round(_static_index(method, params, B, H, M, int(k.type.shape[2]), causal, offset).density(), 4)


def attention_sparsity_pass(entries: Iterable[Any],
                            on_site: Callable[[dict[str, Any]], None] | None = None) -> Callable[[Graph], int]:
    """A pass (for :class:`~tilewright.passes.manager.PassManager`) applying ``entries`` to a graph;
    ``on_site`` (when given) gets each chosen site's record (see :func:`rewrite_attention_sites`)
    after the rewrite."""
    chosen = list(entries)

    def sparse_attention(graph: Graph) -> int:
        record: list[dict[str, Any]] = []
        changed = rewrite_attention_sites(graph, chosen, record)
        for done in record if on_site is not None else ():
            on_site(done)
        return changed
    return sparse_attention
