"""Ranking metrics against small hand-computed cases."""
from __future__ import annotations

import math

import pytest

from tilewright.costmodel.metrics import (average_ranks, group_metrics, random_expectations, spearman,
                                          summarize, top1_regret, topk_recall)


def test_average_ranks_with_ties() -> None:
    assert average_ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_spearman_hand_computed() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx(-1.0)
    # ranks (1,2,3) vs (1,3,2): d^2 = 0+1+1 = 2, rho = 1 - 6*2 / (3*8) = 0.5
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(spearman([1], [1]))
    # an infinite prediction is ranked last
    assert spearman([1, math.inf, 2], [1, 3, 2]) == pytest.approx(1.0)


def test_top1_regret_and_topk_recall() -> None:
    true = [1.0, 1.2, 1.04, 2.0, 3.0, 4.0, 5.0]
    assert top1_regret([0, 1, 2, 3, 4, 5, 6], true) == 0.0
    assert top1_regret([5, 0, 6, 1, 2, 3, 4], true) == pytest.approx(0.2)  # picks 1.2
    # predicted top 5 = indices 1,3,4,5,6 -> none within 5% of 1.0
    assert topk_recall([9, 0, 8, 1, 2, 3, 4], true, k=5) == 0.0
    # index 2 (1.04, within 5% of 1.0) is 5th
    assert topk_recall([9, 0, 4, 1, 2, 3, 8], true, k=5) == 1.0


def test_random_ranker_expectations() -> None:
    true = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    r = random_expectations(true)
    assert r["spearman"] == 0.0
    assert r["top1_regret"] == pytest.approx(3.5 - 1)  # mean/best - 1
    assert r["top5_recall"] == pytest.approx(1 - 1 / 6)  # 1 - C(5,5)/C(6,5)
    assert random_expectations([1.0, 1.01, 9.0])["top5_recall"] == 1.0


def test_summary_means_over_groups_and_kinds() -> None:
    rows = [group_metrics("a", "matmul", [1, 2, 3], [1, 2, 3]),
            group_metrics("b", "matmul", [3, 2, 1], [1, 2, 3]),
            group_metrics("c", "pointwise", [1, 1, 1], [1, 2, 3])]
    s = summarize(rows)
    assert s["overall"]["spearman"] == pytest.approx(0.0)  # NaN of group c skipped
    assert s["by_kind"]["matmul"]["top1_regret"] == pytest.approx((0 + 2) / 2)
    assert s["by_kind"]["pointwise"]["groups"] == 1
    assert len(s["groups"]) == 3
