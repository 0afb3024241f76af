"""Grouped cross-validation, transfer evaluation and the train-costmodel command (SYNTHETIC data)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tilewright.cli import main
from tilewright.costmodel.dataset import build_dataset
from tilewright.costmodel.gbm import GBMCostModel
from tilewright.costmodel.records import write_records
from tilewright.costmodel.train import _folds, cross_validate, transfer

FAST = {"n_estimators": 40, "max_depth": 3}


def _fit(d):
    return GBMCostModel.fit(d, **FAST)


def test_dataset_drops_failures_and_singletons(synthetic_records) -> None:
    data = build_dataset(synthetic_records)
    assert len(data) == sum(1 for r in synthetic_records if r.ok)
    for g in set(data.groups.tolist()):
        mask = data.groups == g
        assert mask.sum() >= 2
        assert abs(data.y[mask].mean()) < 1e-9  # normalized per kernel problem
    assert len(build_dataset(synthetic_records[:1])) == 0
    cpu = [replace(r, device_name="cpu-interpreter") for r in synthetic_records[:40]]
    assert len(build_dataset(cpu)) == 0  # interpreter timings never train the model


def test_folds_hold_out_whole_kernels() -> None:
    kernels = np.array(["a", "a", "b", "c", "c", "d", "e"], dtype=object)
    folds = _folds(kernels, 3, seed=1)  # whole units: "a" and "c" never split
    flat = [k for f in folds for k in f]
    assert sorted(flat) == ["a", "b", "c", "d", "e"] and len(folds) == 3


def test_cross_validation_scores_all_models(synthetic_records) -> None:
    data = build_dataset(synthetic_records)
    report, oof = cross_validate(data, n_splits=3, fit=_fit)
    assert set(report) == {"gbm", "roofline", "random", "folds", "holdout", "disturbed", "calm"}
    g, r, x = (report[m]["overall"] for m in ("gbm", "roofline", "random"))
    assert g["groups"] == r["groups"] == x["groups"] == len(set(data.groups.tolist()))
    assert g["spearman"] > x["spearman"] and g["top5_recall"] > x["top5_recall"]
    assert oof.shape == data.y.shape
    strict, _ = cross_validate(data, n_splits=2, holdout="fingerprint", fit=_fit)
    assert strict["holdout"] == "fingerprint" and strict["folds"] == 2
    with pytest.raises(ValueError, match="holdout"):
        cross_validate(data, holdout="shape", fit=_fit)


def test_transfer_between_devices(synthetic_records) -> None:
    data = build_dataset(synthetic_records)
    res = transfer(data, "H100-SXM", "A100-80GB", shots=(0, 3), fit=_fit)
    assert set(res["shots"]) == {"0", "3"}
    assert res["shots"]["0"]["target_rows_added"] == 0 and res["shots"]["3"]["target_rows_added"] > 0
    assert res["shots"]["3"]["gbm"]["groups"] < res["shots"]["0"]["gbm"]["groups"]


def test_train_costmodel_command(synthetic_records, tmp_path: Path) -> None:
    data = tmp_path / "synthetic.jsonl"
    write_records(data, synthetic_records)
    out, report = tmp_path / "model.json", tmp_path / "report.json"
    args = ["train-costmodel", str(data), "--out", str(out), "--json", str(report), "--folds", "3",
            "--estimators", "30", "--max-depth", "3"]
    assert main(args) == 4  # synthetic records need an explicit opt-in
    assert main(args + ["--allow-synthetic"]) == 0
    doc = json.loads(report.read_text())
    assert {"gbm", "roofline", "random"} <= set(doc["cv"]) and doc["synthetic"] is True
    assert doc["transfer"] and doc["targets"]["checks"] and doc["targets"]["counts"] is False
    assert all(Path(p).stat().st_size > 0 for p in doc.get("plots", []))
    assert GBMCostModel.load(out).synthetic


def test_train_costmodel_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"kind": "matmul"}\n')
    assert main(["train-costmodel", str(bad), "--out", str(tmp_path / "m.json")]) == 1
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["train-costmodel", str(empty), "--out", str(tmp_path / "m.json")]) == 3
