"""The attention half of the accuracy gate: which attention sites go block-sparse, and how far.

The weight gate (:mod:`tilewright.sparsity.gate`) works on layers; this one on attention sites
(ordinals in graph order, the numbering :mod:`.rewrite` uses), through an
:class:`~.evaluate.AttentionEvaluator` (a Dynamo graph on the first call's inputs, or an eager
module on calibration batches). :func:`run_attention_gate`, per site:

1. :func:`~.calibrate.calibrate_attention` gives every candidate setting (each method's grid)
   its density and attention-output error ("local error") on the site's own q, k, v; settings
   whose expected speedup (:func:`expected_attention_speedup`) is below ``min_speedup`` go. With
   ``measure``, each setting that reaches step 2 is first timed (the sparse kernel, index
   estimation included, against the dense kernel on the same q, k, v; medians of 3) and skipped
   when it misses ``min_speedup``.
2. Model-level errors (that site sparse, the others exact, weight rewrites in force, against
   the exact model) are measured lazily, as each costs a forward pass: first the setting with
   the smallest local error (when even it exceeds the budget the site stays exact), which gives
   the site's sensitivity (model error per unit of local error; the largest seen so far); then
   the settings fastest first whose local error times the sensitivity fits the budget are run
   until one does. The model error of one site grows about linearly with its attention-output
   error, so a few runs per site suffice; every accepted setting's error is a measured one.
3. All chosen sites together; while the model error exceeds the budget, the site with the
   largest error backs off to its next slower setting with a lower error (or to exact), as the
   weight gate does.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..calibrate import Metric, metric_fn
from ..plan import PlanEntry, attention_site
from .calibrate import GRIDS, calibrate_attention
from .evaluate import AttentionCall, AttentionEvaluator, dense_forward, sparse_forward
from .op import METHODS, method_params

log = logging.getLogger(__name__)

__all__ = ["AttentionOptions", "expected_attention_speedup", "parse_attention", "run_attention_gate"]

Choice = Mapping[int, tuple[str, Mapping[str, Any]]]

#: methods the gate tries when the request says only ``"attention": True``
DEFAULT_METHODS = ("sinks_window", "xattention", "minference")
_KEYS = {"methods", "block", "candidates", "min_speedup", "measure"}


@dataclass
class AttentionOptions:
    """What the attention gate may try (``options["sparsity"]["attention"]``)."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    #: block size for every candidate (None: each method's default, 64)
    block: int | None = None
    #: method -> candidate params (default: :data:`~.calibrate.GRIDS`)
    candidates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    min_speedup: float = 1.1
    #: time each setting before its model run (sparse kernel + index estimation against the dense
    #: kernel, on the site's q, k, v; CPU) and skip it when it misses ``min_speedup``
    measure: bool = False


def parse_attention(value: Any, measure: bool = False) -> AttentionOptions | None:
    """``options["sparsity"]["attention"]``: ``True``, a list of methods, or a dict of
    :class:`AttentionOptions` fields; ``None``/``False``: no attention calibration. ValueError says what is wrong."""
    if value is None or value is False:
        return None
    if value is True:
        return AttentionOptions(measure=measure)
    if isinstance(value, (list, tuple)):
        value = {"methods": list(value)}
    if not isinstance(value, dict):
        raise TypeError(f"options['sparsity']['attention'] must be True, a list of methods {METHODS} or a dict "
                         f"with keys {sorted(_KEYS)}, got {type(value).__name__}")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise ValueError(f"unknown options['sparsity']['attention'] keys {unknown}; known: {sorted(_KEYS)}")
    methods = tuple(value.get("methods", DEFAULT_METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"attention methods {list(methods)}: choose one or more of {METHODS}")
    candidates = {str(m): [dict(c) for c in cs] for m, cs in dict(value.get("candidates") or {}).items()}
    for method, cands in candidates.items():
        for cand in cands:
            method_params(method, dict(cand, **({"block": value["block"]} if value.get("block") else {})))
    return AttentionOptions(methods, int(value["block"]) if value.get("block") else None, candidates,
                            float(value.get("min_speedup", 1.1)), bool(value.get("measure", measure)))


#: the dynamic methods' index estimation as a share of the dense kernel's time at 4096 queries
#: (measured on the CPU target, benchmarks/sparse_attention.py: XAttention 0.25-0.30, MInference
#: 0.33 at 4k; 0.04-0.05 at 16k); modelled as falling like 1/queries (conservative at 16k)
ESTIMATE_SHARE_4K = 0.3


def expected_attention_speedup(method: str, params: Mapping[str, Any], density: float, queries: int) -> float:
    """Dense over sparse attention time, modelled: the sparse kernel runs at the dense kernel's
    per-block speed (measured, docs/sparsity_attention.md), plus the index estimation of the dynamic
    methods (:data:`ESTIMATE_SHARE_4K` of dense at 4096 queries, scaled by ``4096 / queries``); the
    static patterns' index is built once per shape."""
    extra = ESTIMATE_SHARE_4K * 4096 / max(queries, 1) if method in ("xattention", "minference") else 0.0
    return 1.0 / max(density + extra, 1e-6)


@dataclass
class _Cand:
    method: str
    params: dict[str, Any]
    density: float
    local_error: float
    expected: float
    error: float = math.nan
    measured: float | None = None

    def label(self) -> str:
        shown = {k: v for k, v in self.params.items() if k != "block"}
        return f"{self.method} {shown} d={self.density:.3g}"


def _candidates(call: AttentionCall, options: AttentionOptions) -> list[_Cand]:
    """Every setting of every method on the site's q, k, v, fastest (expected) first."""
    out = []
    for method in options.methods:
        grid = options.candidates.get(method) or GRIDS[method]
        for params, density, err in calibrate_attention(call.q, call.k, call.v, method, grid, call.scale,
                                                        call.causal, call.causal_offset, options.block):
            out.append(_Cand(method, params, density, err,
                             expected_attention_speedup(method, params, density, int(call.q.shape[2]))))
    return sorted(out, key=lambda c: (-c.expected, c.local_error))


class _Site:
    """One site's settings (fastest first) with model-level errors measured on demand (module doc, step 2)."""

    def __init__(self, ordinal: int, cands: list[_Cand], budget: float, error: Callable[[Choice], float],
                 call: AttentionCall | None = None, min_speedup: float = 0.0) -> None:
        self.ordinal, self.cands, self.budget, self._error = ordinal, cands, budget, error
        #: the site's inputs when settings are timed before their model run (``measure``), else None
        self.call, self.min_speedup = call, min_speedup
        #: model error per unit of local error (the largest seen: conservative)
        self.sensitivity = 0.0
        self.pos: int | None = None
        self.runs = 0
        self._dense: float | None = None

    def too_slow(self, cand: _Cand) -> bool:
        """With ``measure``: time the setting (once) and say whether it misses ``min_speedup``."""
        if self.call is None or self.call.q.device.type != "cpu":
            return False
        if cand.measured is None:
            from ..speed import median_time

            if self._dense is None:
                self._dense = median_time(functools.partial(dense_forward, self.call), 3)
            sparse = median_time(functools.partial(sparse_forward, self.call, cand.method, cand.params), 3)
            cand.measured = round(self._dense / max(sparse, 1e-9), 3)
        return cand.measured < self.min_speedup

    def error(self, cand: _Cand) -> float:
        if math.isnan(cand.error):
            cand.error = self._error({self.ordinal: (cand.method, cand.params)})
            self.runs += 1
            self.sensitivity = max(self.sensitivity, cand.error / max(cand.local_error, 1e-12))
        return cand.error

    def predicted_within(self, cand: _Cand, below: float = math.inf) -> bool:
        """The measured error, else the local error times the sensitivity, within the budget and below ``below``."""
        value = cand.error if not math.isnan(cand.error) else cand.local_error * self.sensitivity
        return value <= self.budget and value < below

    def safest(self) -> _Cand:
        return min(self.cands, key=lambda c: (c.local_error, -c.expected))

    def advance(self, start: int = 0, below: float = math.inf) -> bool:
        """Move to the first setting from ``start`` within the budget and below ``below``; False: none."""
        for j in range(start, len(self.cands)):
            cand = self.cands[j]
            if not self.predicted_within(cand, below) or self.too_slow(cand):
                continue
            if self.error(cand) <= self.budget and cand.error < below:
                self.pos = j
                return True
        self.pos = None
        return False

    @property
    def current(self) -> _Cand:
        assert self.pos is not None
        return self.cands[self.pos]


def _gate_site(i: int, call: AttentionCall, options: AttentionOptions, budget: float,
               error: Callable[[Choice], float], entry: PlanEntry) -> _Site | None:
    """Steps 1-2 for one site: its :class:`_Site` at the fastest setting within the budget, or None (exact)."""
    if call.reason is not None:
        entry.note = f"stays exact: {call.reason}"
        return None
    cands = [c for c in _candidates(call, options) if c.expected >= options.min_speedup]
    if not cands:
        entry.note = f"no setting expected to reach {options.min_speedup:g}x"
        return None
    site = _Site(i, cands, budget, error, call if options.measure else None, options.min_speedup)
    safest = site.safest()
    if site.error(safest) > budget:
        entry.error = safest.error
        entry.note = (f"gate: least lossy setting {safest.label()} has model error {safest.error:.3g} > budget "
                      f"{budget:g}")
        return None
    if not site.advance():
        entry.error = safest.error
        entry.note = (f"gate: no setting within the budget measured {options.min_speedup:g}x faster than dense "
                      f"(least lossy: {safest.label()}, error {safest.error:.3g}, measured {safest.measured}x)")
        return None
    log.info("attention gate site %d: %s (%d model runs)", i, site.current.label(), site.runs)
    return site


def run_attention_gate(evaluator: AttentionEvaluator, options: AttentionOptions, budget: float,
                       metric: str | Metric = "rel_l2") -> tuple[list[PlanEntry], float, dict[str, Any]]:
    """Gate every site of ``evaluator`` (module docstring): the plan entries (one per site, exact
    ones with their reason), the model error with every chosen site applied, and meta."""
    _, fn = metric_fn(metric)
    started = time.perf_counter()
    runs = [0]

    def error(choice: Choice) -> float:
        runs[0] += 1
        return float(fn(evaluator.reference, evaluator.run(choice)))

    entries = [PlanEntry(attention_site(i), "attention", "exact", {}, 0.0, 1.0, None)
               for i in range(len(evaluator.sites))]
    picked: dict[int, _Site] = {}
    for i, call in enumerate(evaluator.sites):
        site = _gate_site(i, call, options, budget, error, entries[i])
        if site is not None:
            picked[i] = site
    model_error, backoffs = _back_off(picked, entries, budget, error)
    for i, site in picked.items():
        cand, entry = site.current, entries[i]
        entry.method, entry.error, entry.expected_speedup = cand.method, cand.error, round(cand.expected, 3)
        entry.params = dict(cand.params, density=round(cand.density, 4))
        entry.note = f"attention output error {cand.local_error:.3g} on calibration"
        entry.measured_speedup = cand.measured
    meta = {"attention_calibration_s": round(time.perf_counter() - started, 3), "attention_backoffs": backoffs,
            "attention_model_runs": runs[0], "attention_methods": list(options.methods)}
    return entries, model_error, meta


def _back_off(picked: dict[int, _Site], entries: list[PlanEntry], budget: float,
              error: Callable[[Choice], float]) -> tuple[float, int]:
    """Step 3: while the picked sites together exceed the budget, the worst one backs off."""

    def choice() -> dict[int, tuple[str, dict[str, Any]]]:
        return {i: (s.current.method, s.current.params) for i, s in picked.items()}

    model_error = error(choice()) if picked else 0.0
    backoffs = 0
    while model_error > budget and picked:
        worst = max(picked, key=lambda i: picked[i].current.error)
        site = picked[worst]
        backoffs += 1
        last = site.current
        if not site.advance(site.pos + 1, last.error):  # type: ignore[operator]
            del picked[worst]
            entries[worst].error = last.error
            entries[worst].note = (f"gate: reverted to exact (the whole model exceeded the budget; last setting "
                                   f"{last.label()} alone: {last.error:.3g})")
        model_error = error(choice()) if picked else 0.0
    return model_error, backoffs
