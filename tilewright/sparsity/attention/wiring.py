"""How attention sparsity reaches a compiled model (the backend's two hooks).

1. :func:`prepare_attention`, on the Dynamo graph right after the attention rewrite (whose
   ``tilewright::flash_attention`` calls are the sites, in graph order): a plan's attention
   entries are checked against the graph's sites (:class:`PlanMismatchError` when the plan knows
   another number of sites); in budget mode with ``"attention"`` asked for, the attention gate
   (:mod:`.gate`) calibrates every site on the first call's inputs, with the weight rewrites
   already in force and the exact model as the reference, and adds its entries to the plan
   (saved afterwards when ``save_plan`` is set).
2. :func:`attention_passes`, when the IR graph of a forward (inference) graph is compiled: the
   IR pass (:func:`.rewrite.attention_sparsity_pass`) the compiler runs after its default passes,
   before fusion; every site it rewrites (or leaves exact, with the reason) goes to explain's
   "approximate rewrites" with its method, density (kept block fraction), error and speedups.

Nothing here runs unless ``options["sparsity"]`` was given.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ...ir.graph import Graph
from ..plan import PlanMismatchError
from .evaluate import GraphAttentionEvaluator, flash_sites
from .gate import run_attention_gate
from .rewrite import attention_sparsity_pass

log = logging.getLogger(__name__)

__all__ = ["attention_passes", "prepare_attention"]


def prepare_attention(result: Any, gm: Any, example_inputs: Sequence[Any]) -> None:
    """Check or calibrate ``result``'s attention entries on the rewritten Dynamo graph ``gm`` (module doc)."""
    req, plan = result.request, result.plan
    if plan is None or req is None:
        return
    sites = len(flash_sites(gm))
    if not result.calibrated:  # plan mode
        if req.attention is False:
            plan.entries = [e for e in plan.entries if e.kind != "attention"]
            return
        if not plan.applied("attention"):
            return
        known = plan.fingerprint.get("attention_sites")
        if known is not None and int(known) != sites:
            raise PlanMismatchError(f"this sparsity plan was made for a model with {known} attention site(s); this "
                                    f"graph has {sites}; recalibrate with options={{'sparsity': {{'budget': ..., "
                                    "'attention': True}}")
        if sites == 0:
            result.notes.append("sparsity: the plan has attention entries but no attention block of this graph was "
                                "fused (config.fuse_attention off, or no pattern matched): attention stays exact")
        return
    options = req.attention_options
    try:
        if options is None:
            return
        if sites == 0:
            result.notes.append("sparsity: attention asked for, but no attention block of this graph was fused")
            return
        _calibrate(result, gm, example_inputs, options, sites)
    except Exception as exc:  # noqa: BLE001  (an optimisation must never break the program)
        log.warning("attention calibration skipped (%s: %s); attention stays exact", type(exc).__name__, exc)
        result.notes.append(f"sparsity: attention calibration skipped ({type(exc).__name__}: {exc}); attention "
                            "stays exact")
    finally:
        if req.save_plan:
            plan.save(req.save_plan)
            result.notes.append(f"sparsity: plan saved to {req.save_plan}")


def _calibrate(result: Any, gm: Any, example_inputs: Sequence[Any], options: Any, sites: int) -> None:
    plan, gate = result.plan, result.request.gate
    evaluator = GraphAttentionEvaluator(gm, example_inputs, result.reference)
    entries, model_error, meta = run_attention_gate(evaluator, options, gate.budget, gate.metric)
    for entry in entries:
        plan.set_entry(entry)
    plan.fingerprint["attention_sites"] = sites
    plan.meta.update(meta)
    applied = [e for e in entries if not e.is_exact]
    if applied:
        plan.model_error = model_error
    result.notes.append(f"sparsity: calibrated {sites} attention site(s) on the first call, {len(applied)} sparse"
                        + (f", model error {model_error:.3g} ({plan.metric}, budget {plan.budget:g})" if applied else ""))


def _describe(entry: Any, done: dict[str, Any]) -> dict[str, Any]:
    """An explain row for a site the IR pass handled (``done`` from the rewrite)."""
    params = dict(entry.params)
    density = params.get("density", done.get("density"))
    if density is not None:
        params["density"] = density
    row = {"site": entry.site, "kind": "attention", "method": entry.method if done["applied"] else "exact",
           "params": params, "density": density, "error": None if entry.error != entry.error else entry.error,
           "expected_speedup": entry.expected_speedup, "measured_speedup": entry.measured_speedup}
    if not done["applied"]:
        row["note"] = done["reason"]
    elif density is None:
        row["note"] = "density estimated per call"
    return row


def attention_passes(result: Any, report: Any) -> list[tuple[str, Callable[[Graph], int]]] | None:
    """The IR pass applying ``result``'s attention entries (None when it has none: the exact pipeline)."""
    entries = result.attention_entries()
    if not entries:
        return None
    by_site = {e.site: e for e in entries}

    def describe(done: dict[str, Any]) -> None:
        entry = by_site.get(done["site"])
        if entry is not None:
            report.approximations.append(_describe(entry, done))
    return [("sparse_attention", attention_sparsity_pass(entries, describe))]
