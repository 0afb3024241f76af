"""The accuracy gate: choose each layer's rewrite so that the whole model stays within the budget.

1. Per layer (greedy): every candidate (:func:`tilewright.sparsity.candidates.propose`) whose
   expected speedup reaches ``min_speedup`` is measured alone, the rest of the model exact; the
   layer takes the fastest candidate whose error is within the budget, or stays exact.
2. Whole model (global): all chosen rewrites are applied together and the error measured again;
   while it exceeds the budget, the applied layer with the largest error alone backs off to its
   next less aggressive acceptable candidate (or to exact), and the model is measured again.

The result is a :class:`~tilewright.sparsity.plan.SparsityPlan` with an entry for every layer:
the chosen method and params, its error alone, expected speedup, and the measured speedup when
asked (``measure=True``: the layer's kernel against the dense layer at the calibration row count).
Layers that stay exact say why in their ``note``.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import low_rank
from .calibrate import Evaluator, Metric, metric_fn
from .candidates import (
    DEFAULT_BLOCK,
    DEFAULT_DENSITIES,
    Candidate,
    materialize,
    propose,
)
from .plan import PlanEntry, SparsityPlan

log = logging.getLogger(__name__)

__all__ = ["GateOptions", "run_gate"]

WEIGHT_METHOD_CHOICES = ("block_sparse", "2:4", "low_rank")


@dataclass
class GateOptions:
    """What the gate may try and how it decides."""

    budget: float = 0.01
    metric: str | Metric = "rel_l2"
    methods: tuple[str, ...] = ("block_sparse", "low_rank")
    densities: tuple[float, ...] = DEFAULT_DENSITIES
    block: tuple[int, int] = DEFAULT_BLOCK
    #: candidates expected to be slower than this over dense are not tried
    min_speedup: float = 1.1
    #: time each accepted layer's kernel against the dense layer (slower; CPU only)
    measure: bool = False
    #: layer names to leave alone (exact), or a predicate over names
    skip: Callable[[str], bool] | None = None
    rank_step: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ValueError on options that cannot work, saying which."""
        if not self.budget > 0:
            raise ValueError(f"the error budget must be positive, got {self.budget}")
        bad = [m for m in self.methods if m not in WEIGHT_METHOD_CHOICES]
        if bad:
            raise ValueError(f"unknown weight methods {bad}; choose from {WEIGHT_METHOD_CHOICES}")
        if any(not 0 < d <= 1 for d in self.densities):
            raise ValueError(f"densities must be in (0, 1], got {self.densities}")


def run_gate(evaluator: Evaluator, options: GateOptions, fingerprint: dict[str, Any] | None = None) -> SparsityPlan:
    """Calibrate every layer of ``evaluator`` under ``options`` and return the plan (see module docstring)."""
    options.validate()
    name, metric = metric_fn(options.metric)
    reference = getattr(evaluator, "reference", None) or evaluator.run({})
    started = time.perf_counter()

    def error(replacements: dict[str, torch.Tensor]) -> float:
        return float(metric(reference, evaluator.run(replacements)))

    accepted: dict[str, list[Candidate]] = {}
    entries: dict[str, PlanEntry] = {}
    for site, layer in evaluator.layers.items():
        entry = PlanEntry(site, layer.kind, "exact", {}, 0.0, 1.0, None)
        entries[site] = entry
        if options.skip is not None and options.skip(site):
            entry.note = "skipped by request"
            continue
        if not options.methods:
            entry.note = "no weight methods asked for"
            continue
        ranks = None
        if "low_rank" in options.methods and layer.weight.dim() == 2:
            n, k = layer.weight.shape
            ranks = low_rank.rank_grid(n, k, options.rank_step, useful_only=options.min_speedup >= 1.0)
        cands = [c for c in propose(layer.weight, options.methods, layer.col_scale, options.densities, options.block,
                                    ranks)
                 if c.expected_speedup >= options.min_speedup]
        if not cands:
            entry.note = f"no candidate expected to reach {options.min_speedup:g}x"
            continue
        chain, best_rejected = _measure_candidates(site, layer.weight, cands, options.budget, error)
        accepted[site] = chain
        if not chain and best_rejected is not None:
            entry.error = best_rejected.error
            entry.note = (f"gate: best candidate {best_rejected.label()} has error {best_rejected.error:.3g} > "
                          f"budget {options.budget:g}")
        log.info("sparsity gate %s: %s", site, ", ".join(f"{c.label()} err={c.error:.3g}" for c in cands))

    choice = {site: 0 for site, chain in accepted.items() if chain}

    def current() -> dict[str, torch.Tensor]:
        reps = {}
        for site, i in choice.items():
            cand = accepted[site][i]
            layer = evaluator.layers[site]
            reps[site] = materialize(layer.weight, cand.method, cand.params)
        return reps

    model_error = error(current()) if choice else 0.0
    backoffs = 0
    while model_error > options.budget and choice:
        worst = max(choice, key=lambda s: accepted[s][choice[s]].error)
        backoffs += 1
        if choice[worst] + 1 < len(accepted[worst]):
            choice[worst] += 1
        else:
            del choice[worst]
            entries[worst].note = "gate: reverted to exact (the whole model exceeded the budget)"
        model_error = error(current()) if choice else 0.0
    for site, i in choice.items():
        cand = accepted[site][i]
        e = entries[site]
        e.method, e.params, e.error, e.expected_speedup = cand.method, cand.params, cand.error, cand.expected_speedup
        e.note = ""
        if options.measure:
            e.measured_speedup = _measure(evaluator.layers[site], cand)
    for site, e in entries.items():
        if e.is_exact and not e.note and site in accepted:
            e.note = "gate: no candidate within budget"
    plan = SparsityPlan(list(entries.values()), options.budget, name, fingerprint or {}, model_error,
                        {"calibration_s": round(time.perf_counter() - started, 3), "backoffs": backoffs,
                         "methods": list(options.methods), "min_speedup": options.min_speedup, **options.extra})
    return plan


def _measure_candidates(site: str, weight: torch.Tensor, cands: list[Candidate], budget: float,
                        error: Callable[[dict[str, torch.Tensor]], float]) -> tuple[list[Candidate], Candidate | None]:
    """Measure each candidate alone; returns the back-off chain (acceptable candidates, fastest first,
    each with a lower error than the one before) and the least lossy rejected candidate."""
    svd = low_rank.svd(weight) if any(c.method == "low_rank" for c in cands) else None
    best_rejected: Candidate | None = None
    chain: list[Candidate] = []
    for cand in cands:  # fastest first
        cand.error = error({site: materialize(weight, cand.method, cand.params, svd)})
        if cand.error > budget:
            if best_rejected is None or cand.error < best_rejected.error:
                best_rejected = cand
        elif not chain or cand.error < chain[-1].error:
            chain.append(cand)
    return chain, best_rejected


def _measure(layer: Any, cand: Candidate) -> float | None:
    """Dense layer time over the candidate's kernel time on random rows (median of 5), CPU only."""
    try:
        from .speed import layer_speedup

        return layer_speedup(layer, cand.method, cand.params)
    except Exception as exc:  # noqa: BLE001  (measuring is advisory: a failure leaves the entry unmeasured)
        log.warning("could not measure %s (%s: %s)", layer.site, type(exc).__name__, exc)
        return None


def model_error_of(plan: SparsityPlan, evaluator: Evaluator, metric: str | Metric | None = None) -> float:
    """The metric with every applied entry of ``plan`` on ``evaluator``'s data (e.g. a held-out set)."""
    _, fn = metric_fn(metric or plan.metric)
    reference = getattr(evaluator, "reference", None) or evaluator.run({})
    reps = {}
    for e in plan.applied("linear", "conv"):
        layer = evaluator.layers.get(e.site)
        if layer is None:
            continue
        reps[e.site] = materialize(layer.weight, e.method, e.params)
    return float(fn(reference, evaluator.run(reps))) if reps else 0.0

