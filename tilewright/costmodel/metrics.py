"""Ranking metrics for cost models, computed per group (one kernel problem on one device).

- **Spearman ρ** between predicted scores and measured times (ties get average ranks).
- **Top-1 regret**: measured time of the predicted-best config over the measured best, minus 1
  (0 means the model picked the best config; 0.25 means it picked one 25% slower).
- **Top-k recall**: 1 when one of the k configs predicted fastest is within ``tol`` (5%) of
  the measured best, else 0; averaged over groups it is the share of kernels where searching
  the model's top k would have found a near-best config.
- A **random ranker** baseline, as exact expectations (no sampling noise): ρ = 0, regret =
  mean(time)/best − 1, recall@k = 1 − C(n−g, k)/C(n, k) with g configs within ``tol``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values share the mean of their ranks."""
    arr = np.asarray(values, dtype=float)
    order = np.argsort(arr, kind="mergesort")
    ranks = np.empty(len(arr), dtype=float)
    i = 0
    while i < len(arr):
        j = i
        while j + 1 < len(arr) and arr[order[j + 1]] == arr[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(pred: Sequence[float], true: Sequence[float]) -> float:
    """Spearman rank correlation; NaN when fewer than 2 items or either side is constant."""
    if len(pred) != len(true):
        raise ValueError("pred and true must have the same length")
    if len(pred) < 2:
        return math.nan
    a = average_ranks(_finite(pred))
    b = average_ranks(true)
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else math.nan


def _finite(values: Sequence[float]) -> list[float]:
    """Replace inf/NaN predictions by a value above every finite one (ranked last)."""
    finite = [v for v in values if math.isfinite(v)]
    top = (max(finite) + abs(max(finite)) + 1.0) if finite else 1.0
    return [v if math.isfinite(v) else top for v in values]


def top1_regret(pred: Sequence[float], true: Sequence[float]) -> float:
    """Measured time of the predicted best over the measured best, minus 1 (0 is perfect)."""
    scores = _finite(pred)
    best = min(range(len(scores)), key=lambda i: (scores[i], i))
    return float(true[best] / min(true) - 1.0)


def topk_recall(pred: Sequence[float], true: Sequence[float], k: int = 5, tol: float = 0.05) -> float:
    """1.0 if a config among the k predicted fastest is within ``tol`` of the best, else 0.0."""
    scores = _finite(pred)
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))[:k]
    best = min(true)
    return 1.0 if any(true[i] <= best * (1 + tol) for i in order) else 0.0


def random_expectations(true: Sequence[float], k: int = 5, tol: float = 0.05) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking of ``true`` (exact, no sampling)."""
    n = len(true)
    best = min(true)
    good = sum(1 for t in true if t <= best * (1 + tol))
    k = min(k, n)
    recall = 1.0 - math.comb(n - good, k) / math.comb(n, k)
    return {"spearman": 0.0, "top1_regret": float(np.mean(true) / best - 1.0), "top5_recall": recall}


@dataclass(frozen=True)
class GroupMetrics:
    """Metrics of one model on one group (kernel problem + device)."""

    group: str
    kind: str
    n: int
    spearman: float
    top1_regret: float
    top5_recall: float


def group_metrics(group: str, kind: str, pred: Sequence[float], true: Sequence[float]) -> GroupMetrics:
    """All metrics of one group."""
    return GroupMetrics(group, kind, len(true), spearman(pred, true), top1_regret(pred, true),
                        topk_recall(pred, true, 5))


def random_group_metrics(group: str, kind: str, true: Sequence[float]) -> GroupMetrics:
    """The random ranker's expected metrics on one group."""
    r = random_expectations(true)
    return GroupMetrics(group, kind, len(true), r["spearman"], r["top1_regret"], r["top5_recall"])


def summarize(rows: Iterable[GroupMetrics]) -> dict[str, object]:
    """Means over groups (NaN ρ skipped), overall and per kernel kind, plus the per-group rows."""
    rows = list(rows)

    def agg(sel: list[GroupMetrics]) -> dict[str, float]:
        rhos = [r.spearman for r in sel if not math.isnan(r.spearman)]
        return {
            "groups": float(len(sel)),
            "spearman": float(np.mean(rhos)) if rhos else math.nan,
            "top1_regret": float(np.mean([r.top1_regret for r in sel])) if sel else math.nan,
            "top1_regret_median": float(np.median([r.top1_regret for r in sel])) if sel else math.nan,
            "top5_recall": float(np.mean([r.top5_recall for r in sel])) if sel else math.nan,
        }

    kinds = sorted({r.kind for r in rows})
    return {"overall": agg(rows), "by_kind": {k: agg([r for r in rows if r.kind == k]) for k in kinds},
            "groups": [asdict(r) for r in rows]}


def overall(summary: Mapping[str, object]) -> Mapping[str, float]:
    """The ``overall`` part of a :func:`summarize` result."""
    return summary["overall"]  # type: ignore[return-value]
