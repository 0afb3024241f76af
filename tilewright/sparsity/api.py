"""``sparsify``: calibrate a model once and return its sparsity plan (the API behind ``tilewright sparsify``)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from .attention.evaluate import ModuleAttentionEvaluator
from .attention.gate import parse_attention, run_attention_gate
from .attention.rewrite import site_ordinal
from .calibrate import Metric, ModuleEvaluator, metric_fn
from .candidates import DEFAULT_BLOCK, DEFAULT_DENSITIES, materialize
from .gate import GateOptions, model_error_of, run_gate
from .plan import SparsityPlan, model_fingerprint

log = logging.getLogger(__name__)

__all__ = ["evaluate_plan", "sparsify"]


def sparsify(model: nn.Module, calibration: Sequence[Any], budget: float = 0.01, metric: str | Metric = "rel_l2",
             methods: Sequence[str] = ("block_sparse", "low_rank"), densities: Sequence[float] = DEFAULT_DENSITIES,
             block: tuple[int, int] = DEFAULT_BLOCK, min_speedup: float = 1.1, measure: bool = False,
             holdout: Sequence[Any] | None = None, skip: Callable[[str], bool] | None = None,
             rank_step: int = 16, attention: Any = None) -> SparsityPlan:
    """Choose per layer a block-sparse / 2:4 / low-rank rewrite within ``budget`` and return the plan.

    ``calibration`` (and ``holdout``) are lists of batches: a tensor, a tuple of positional
    arguments or a dict of keyword arguments each. ``metric`` is ``rel_l2`` (relative L2 error of
    the outputs), ``kl`` (KL divergence of the first output's softmax: logits) or a callable
    ``f(reference_outputs, approximate_outputs) -> float``. The model is not modified. With
    ``holdout``, the plan's ``meta["holdout_error"]`` is the error on it (not gated). Save the
    plan with ``plan.save(path)`` and compile with
    ``torch.compile(model, backend="tilewright", options={"sparsity": {"plan": path}})`` under
    ``torch.no_grad()``. Low-rank candidates are ranks on a ``rank_step`` grid that save FLOPs
    (``min_speedup >= 1``), or every rank below full with ``min_speedup < 1``.

    ``attention`` (``True``, a list of methods or a dict, as ``options["sparsity"]["attention"]``)
    also gates the model's ``scaled_dot_product_attention`` calls (sites ``attention:<call
    order>``) with the weight rewrites in force; pass ``methods=()`` for attention only.
    """
    evaluator = ModuleEvaluator(model, calibration)
    options = GateOptions(budget=budget, metric=metric, methods=tuple(methods), densities=tuple(densities),
                          block=tuple(block), min_speedup=min_speedup, measure=measure, skip=skip,
                          rank_step=rank_step)  # type: ignore[arg-type]
    plan = run_gate(evaluator, options, model_fingerprint(model))
    attention_options = parse_attention(attention, measure)
    if attention_options is not None:
        weights = _weights(plan, evaluator.layers)
        att = ModuleAttentionEvaluator(model, calibration, weights, evaluator.reference)
        entries, model_error, meta = run_attention_gate(att, attention_options, budget, metric)
        for entry in entries:
            plan.set_entry(entry)
        plan.fingerprint = model_fingerprint(model, len(att.sites))
        plan.meta.update(meta)
        if any(not e.is_exact for e in entries):
            plan.model_error = model_error
    plan.meta["calibration_batches"] = len(calibration)
    if holdout:
        plan.meta["holdout_error"] = evaluate_plan(model, plan, holdout)
        plan.meta["holdout_batches"] = len(holdout)
    return plan


def evaluate_plan(model: nn.Module, plan: SparsityPlan, batches: Sequence[Any], metric: str | Metric | None = None
                  ) -> float:
    """The model's error with ``plan`` applied (dense equivalents), on ``batches`` (e.g. held-out data)."""
    plan.check_model(model)
    evaluator = ModuleEvaluator(model, batches)
    attention = plan.applied("attention")
    if not attention:
        return model_error_of(plan, evaluator, metric)
    _, fn = metric_fn(metric or plan.metric)
    att = ModuleAttentionEvaluator(model, batches, _weights(plan, evaluator.layers), evaluator.reference)
    choice = {site_ordinal(e.site): (e.method, e.params) for e in attention}
    return float(fn(att.reference, att.run(choice)))


def _weights(plan: SparsityPlan, layers: dict[str, Any]) -> dict[str, Any]:
    """``{layer: dense approximate weight}`` of the plan's applied weight entries."""
    return {e.site: materialize(layers[e.site].weight, e.method, e.params)
            for e in plan.applied("linear", "conv") if e.site in layers}
