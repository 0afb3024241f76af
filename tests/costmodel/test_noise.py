"""Noise ceiling, robust labels and disturbed-record marking (no timing: measurements are stubbed)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from tilewright.autotune.measure import CpuMeasurer
from tilewright.costmodel.noise import ceilings_by_label, is_disturbed, label_table, paired_ceiling, round_medians
from tilewright.costmodel.records import read_records

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "costmodel_cpu" / "sample.jsonl"


def test_identical_measurements_reach_a_perfect_ceiling() -> None:
    table = {"p": {"a": 1.0, "b": 2.0, "c": 3.0}, "q": {"a": 5.0, "b": 4.0}}
    c = paired_ceiling(table, table)
    assert c["groups"] == 2 and c["configs"] == 5
    assert c["overall"]["spearman"] == pytest.approx(1.0) and c["overall"]["top5_recall"] == 1.0
    assert c["overall"]["top1_regret"] == 0.0 and c["spearman_perfect_estimate"] == pytest.approx(1.0)


def test_reversed_second_measurement_gives_negative_rho_and_regret() -> None:
    first = {"p": {h: float(i + 1) for i, h in enumerate("abcdefgh")}}
    second = {"p": {h: float(8 - i) for i, h in enumerate("abcdefgh")}}
    c = paired_ceiling(first, second)
    assert c["overall"]["spearman"] == pytest.approx(-1.0)
    assert c["overall"]["top1_regret"] == pytest.approx(7.0)  # 8/1 - 1 in both directions
    assert c["spearman_perfect_estimate"] == 0.0
    assert c["overall"]["top5_recall"] == 0.0  # the best is the 8th in the other ranking


def test_only_common_configs_and_problems_count() -> None:
    first = {"p": {"a": 1.0, "b": 2.0, "x": 9.0}, "only_first": {"a": 1.0, "b": 2.0}}
    second = {"p": {"a": 1.0, "b": 2.0, "y": 0.1}, "q": {"a": 1.0}}
    assert paired_ceiling(first, second)["configs"] == 2
    with pytest.raises(ValueError):
        paired_ceiling({"p": {"a": 1.0}}, {"p": {"a": 2.0}})


def _with_rounds(rec, rounds, disturbed=None):
    extra = {**rec.device_extra, "round_medians": rounds}
    if disturbed is not None:
        extra["disturbed"] = disturbed
    return dataclasses.replace(rec, device_extra=extra, time_median_s=min(rounds))


def test_labels_from_round_medians_and_disturbed_marks() -> None:
    rec = next(r for r in read_records(SAMPLE) if r.ok and r.time_p80_s < 1.1 * r.time_p20_s)
    assert round_medians(rec) == [rec.time_median_s] and not is_disturbed(rec)
    wide = dataclasses.replace(rec, time_p80_s=3 * rec.time_median_s)  # never got a calm batch
    assert is_disturbed(wide) and not is_disturbed(wide, max_spread=5.0)
    rec = dataclasses.replace(rec, time_p20_s=None, time_p80_s=None)
    stalled = _with_rounds(rec, [2e-5, 1e-2, 2.1e-5])  # one round 500x slower
    assert is_disturbed(stalled) and not is_disturbed(_with_rounds(rec, [2e-5, 2.2e-5]))
    assert is_disturbed(_with_rounds(rec, [2e-5, 2.2e-5], disturbed=True))
    assert label_table([stalled], "min_of_rounds")[rec.problem_key][rec.config_hash] == 2e-5
    assert label_table([stalled], "first_round")[rec.problem_key][rec.config_hash] == 2e-5
    assert label_table([stalled], "median_of_rounds")[rec.problem_key][rec.config_hash] == 2.1e-5
    with pytest.raises(ValueError):
        label_table([stalled], "mean")


def test_robust_label_removes_a_stall_that_the_first_round_keeps() -> None:
    recs = [r for r in read_records(SAMPLE) if r.ok]
    key = recs[0].problem_key
    group = [r for r in recs if r.problem_key == key][:4]
    assert len(group) >= 2
    truth = [1e-5 * (i + 1) for i in range(len(group))]
    a = [_with_rounds(r, [t, t]) for r, t in zip(group, truth)]
    # run b: the fastest config's first round stalled (1000x)
    b = [_with_rounds(r, [t * (1000 if i == 0 else 1), t]) for i, (r, t) in enumerate(zip(group, truth))]
    c = ceilings_by_label(a, b)
    assert c["min_of_rounds"]["overall"]["spearman"] == pytest.approx(1.0)
    assert c["first_round"]["overall"]["spearman"] < 1.0 and c["first_round"]["overall"]["top1_regret"] > 0


class _Kernel:
    name = "stub"


def test_cpu_measurer_rounds_keep_the_smallest_round_median_and_mark_disturbed(monkeypatch) -> None:
    # per config, the medians the stubbed timer returns round after round
    script = {"a": [1.0, 1.0, 1.0, 1.0, 1.0], "b": [2.0, 900.0, 2.1, 2.0, 2.0], "c": [3.0, 30.0, 300.0, 3000.0, 3e4]}
    calls: dict[str, int] = {h: 0 for h in script}
    m = CpuMeasurer(rounds=3, retries=2, disturbed_ratio=1.5)
    monkeypatch.setattr(m, "prepare", lambda kernel, configs: {})

    def fake_time(kernel, config, repeats):
        h = config["name"]
        value = script[h][calls[h]]
        calls[h] += 1
        if h == "c" and calls[h] > 4:
            raise RuntimeError("crashed")
        return [value] * repeats

    monkeypatch.setattr(m, "_time_one", fake_time)
    configs = [{"name": h} for h in script]
    results = m.measure(_Kernel(), configs)
    by = {r.config["name"]: r for r in results}
    assert by["a"].time_s == 1.0 and calls["a"] == 3  # calm: no extra round
    assert by["b"].time_s == 2.0 and calls["b"] == 5  # 900x stall: extra rounds, smallest median kept
    assert not by["c"].ok and "crashed" in by["c"].error  # a failure in an extra round is a failure
    assert {h for h, c in ((r.config["name"], r.config_hash) for r in results)} == set(script)
    b_hash = by["b"].config_hash
    assert m.round_medians[b_hash] == [2.0, 900.0, 2.1, 2.0, 2.0]
    assert b_hash in m.disturbed  # still 450x apart after the extra rounds: marked, not dropped
    assert math.isfinite(by["b"].time_s)


def test_throughput_target_is_bounded_and_zero_for_the_fastest() -> None:
    import numpy as np

    from tilewright.costmodel.gbm import throughput_loss_target

    times = np.array([1.0, 2.0, 1000.0, 5.0, 5.0])
    groups = np.array(["p", "p", "p", "q", "q"], dtype=object)
    out = throughput_loss_target(times, groups)
    assert out.tolist() == pytest.approx([0.0, 0.5, 0.999, 0.0, 0.0])


def test_disturbed_rows_are_counted_weighted_and_scored_apart() -> None:
    import numpy as np

    from tilewright.costmodel.dataset import build_dataset
    from tilewright.costmodel.gbm import GBMCostModel
    from tilewright.costmodel.train import cross_validate

    records = read_records(SAMPLE)
    data = build_dataset(records, feature_set="cpu")
    assert data.disturbed is not None and len(data.disturbed) == len(data)
    assert data.disturbed.sum() == sum(is_disturbed(r) for r in data.records)
    cv, _ = cross_validate(data, n_splits=3, fit=lambda d: GBMCostModel.fit(
        d, n_estimators=10, max_depth=2, objective="throughput", disturbed_weight=0.0))
    assert cv["disturbed"]["rows"] == int(data.disturbed.sum()) and cv["disturbed"]["of_rows"] == len(data)
    assert {"gbm", "roofline", "random"} <= set(cv["calm"])
    assert -1.0 <= cv["calm"]["gbm"]["spearman"] <= 1.0
    model = GBMCostModel.fit(data, n_estimators=10, max_depth=2, objective="throughput")
    assert model.payload["objective"] == "throughput" and not model.payload["baseline"]
    assert np.isfinite(model.predict_matrix(data.X)).all()
