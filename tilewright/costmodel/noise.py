"""How well *any* model could rank configs against noisy labels: the measurement's noise ceiling.

A cost model is scored against one measurement per config. If the same configs are measured
twice, independently (two processes, some time apart), ranking by the first measurement is
what a model that knew every config's time *as well as one measurement does* would predict;
scored against the second measurement it gives the figures no model can be expected to beat
by much on labels of that quality:

- **ρ between two measurements** (per kernel problem, then averaged): the test-retest
  reliability of the labels. A perfect model (one predicting the noise-free times) correlates
  with one noisy measurement by about ``sqrt(reliability)`` when the noise is independent of the
  config (the classical attenuation relation), reported as ``spearman_perfect_estimate``.
- **top-1 regret / top-5 recall** of ranking by one measurement, scored on the other (both
  directions averaged).

Labels are per-config times; a *label statistic* turns a record's timings into one number
(:data:`LABELS`): the median of the first round (one measurement, as a plain
``CpuMeasurer.measure`` gives) or the smallest median of interleaved rounds (robust to stalls).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .metrics import GroupMetrics, group_metrics, summarize
from .records import Record

Table = Mapping[str, Mapping[str, float]]


def round_medians(record: Record) -> list[float]:
    """The round medians a record keeps (``device_extra["round_medians"]``), else its median alone."""
    rounds = record.device_extra.get("round_medians") if record.device_extra else None
    if isinstance(rounds, list) and rounds and all(isinstance(v, (int, float)) and v > 0 for v in rounds):
        return [float(v) for v in rounds]
    return [float(record.time_median_s)] if record.time_median_s else []


#: Label statistics: name -> function of a record's round medians.
LABELS: dict[str, Callable[[Sequence[float]], float]] = {
    "first_round": lambda m: m[0],
    "median_of_rounds": lambda m: float(np.median(m)),
    "min_of_rounds": lambda m: min(m),
}


def is_disturbed(record: Record, ratio: float = 1.5, max_spread: float = 1.0) -> bool:
    """True when the measurer marked the record disturbed, its round medians differ by more than
    ``ratio`` (a stall spoiled some rounds), or its samples' spread ((p80 − p20) / median) is
    above ``max_spread`` although the measurer re-sampled it (it never got a calm batch)."""
    extra = record.device_extra or {}
    if extra.get("disturbed"):
        return True
    rounds = round_medians(record)
    if len(rounds) > 1 and max(rounds) > ratio * min(rounds):
        return True
    p20, p80, med = record.time_p20_s, record.time_p80_s, record.time_median_s
    return bool(p20 and p80 and med and (p80 - p20) / med > max_spread)


def label_table(records: Iterable[Record], label: str = "min_of_rounds") -> dict[str, dict[str, float]]:
    """``{problem_key: {config_hash: label}}`` of the successful records (the last of duplicates)."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {sorted(LABELS)}, not {label!r}")
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for rec in records:
        rounds = round_medians(rec) if rec.ok else []
        if rounds:
            out[rec.problem_key][rec.config_hash] = LABELS[label](rounds)
    return dict(out)


def _pairs(first: Table, second: Table) -> Iterable[tuple[str, list[float], list[float]]]:
    for key in sorted(set(first) & set(second)):
        common = sorted(set(first[key]) & set(second[key]))
        if len(common) >= 2:
            yield key, [first[key][h] for h in common], [second[key][h] for h in common]


def paired_ceiling(first: Table, second: Table, kinds: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Noise ceiling from two independent measurements of the same configs (see the module doc).

    Args:
        first, second: ``{problem_key: {config_hash: seconds}}``; only problems and configs in
            both are compared, problems with fewer than two common configs are skipped.
        kinds: kernel kind per problem key (for the per-kind summary).

    Returns:
        ``{"groups", "configs", "overall", "by_kind", "spearman_perfect_estimate", "rows"}`` where
        ``overall`` holds mean ρ, top-1 regret (mean and median) and top-5 recall over problems.
    """
    rows: list[GroupMetrics] = []
    configs = 0
    for key, a, b in _pairs(first, second):
        kind = (kinds or {}).get(key, "?")
        ab, ba = group_metrics(key, kind, a, b), group_metrics(key, kind, b, a)
        rows.append(GroupMetrics(key, kind, len(a), ab.spearman, (ab.top1_regret + ba.top1_regret) / 2,
                                 (ab.top5_recall + ba.top5_recall) / 2))
        configs += len(a)
    if not rows:
        raise ValueError("no kernel problem has two or more configs measured in both tables")
    summary = summarize(rows)
    rho = float(summary["overall"]["spearman"])  # type: ignore[index]
    return {"groups": len(rows), "configs": configs, "overall": summary["overall"], "by_kind": summary["by_kind"],
            "spearman_perfect_estimate": math.sqrt(rho) if rho > 0 else 0.0, "rows": summary["groups"]}


def ceilings_by_label(first: Sequence[Record], second: Sequence[Record]) -> dict[str, Any]:
    """:func:`paired_ceiling` of two record sets for every label statistic (:data:`LABELS`)."""
    kinds = {r.problem_key: r.kind for r in [*first, *second]}
    return {label: paired_ceiling(label_table(first, label), label_table(second, label), kinds)
            for label in LABELS}
