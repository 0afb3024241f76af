"""CPU cost-model pipeline end to end: collect (tiny) -> train -> evaluate -> replay (no timing assertions)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tilewright.cli import main
from tilewright.costmodel import RooflineModel, load_default_model
from tilewright.costmodel.dataset import build_dataset
from tilewright.costmodel.gbm import GBMCostModel
from tilewright.costmodel.records import read_records

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "costmodel_cpu" / "sample.jsonl"
TABLES = ROOT / "benchmarks" / "results" / "2026-12-02-cpu-tuner-tables.json"


def _has_compiler() -> bool:
    from tilewright.targets.cpu.toolchain import NoCompilerError, find_compiler

    try:
        find_compiler()
    except NoCompilerError:
        return False
    return True


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cpu_model")
    argv = ["train-costmodel", str(SAMPLE), "--out", str(out / "model.json"), "--json", str(out / "report.json"),
            "--folds", "3", "--estimators", "30", "--max-depth", "3", "--ship-to", str(out / "shipped.json")]
    assert main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_train_reports_model_roofline_and_random_held_out(trained: tuple[Path, dict]) -> None:
    out, report = trained
    assert report["feature_set"] == "cpu" and not report["synthetic"]
    for cv in (report["cv"], report["cv_by_model"]):
        assert {"gbm", "roofline", "random"} <= set(cv)
        for model in ("gbm", "roofline", "random"):
            o = cv[model]["overall"]
            assert -1.0 <= o["spearman"] <= 1.0 and o["top1_regret"] >= 0.0 and 0.0 <= o["top5_recall"] <= 1.0
    assert report["cv_by_model"]["holdout"] == "model" and report["cv"]["holdout"] == "problem"
    assert set(report["objectives"]) == {"logtime", "rank", "throughput"} and report["objective"] in report["objectives"]
    assert all(Path(p).exists() for p in report["plots"])
    # shipped only when it beats the roofline on held-out kernels
    assert (out / "shipped.json").exists() == bool(report["beats_roofline"])


def test_trained_cpu_model_loads_and_scores_only_its_cpu(trained: tuple[Path, dict]) -> None:
    out, _ = trained
    model = GBMCostModel.load(out / "model.json")
    records = read_records(SAMPLE)
    device = records[0].device()
    assert model.feature_set == "cpu" and model.matches_device(device)
    rec = next(r for r in records if r.kind == "matmul")
    scores = model.predict(rec.problem(), [rec.config, rec.config], device)
    assert len(scores) == 2 and scores[0] == scores[1]
    other_cpu = {**device, "capability": "cpu:ffffffffffffffff"}
    assert isinstance(load_default_model(other_cpu, path=out / "model.json"), RooflineModel)
    dispatch = load_default_model(device, path=out / "model.json")
    assert dispatch.model_for(device) is not None and not isinstance(dispatch, RooflineModel)
    assert isinstance(dispatch.model_for({"name": "NVIDIA H100", "capability": "9.0"}), RooflineModel)
    gpu = {"name": "NVIDIA H100", "capability": "9.0", "sm_count": 132}
    assert isinstance(load_default_model(gpu, path=out / "model.json"), RooflineModel)


def test_gpu_and_cpu_records_never_mix(trained: tuple[Path, dict]) -> None:
    records = read_records(SAMPLE)
    data = build_dataset(records, feature_set="gpu")
    assert len(data) == 0  # CPU records are not GPU training data


def test_replay_of_the_committed_cpu_tables() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.tuner_replay import run_cpu_strategies

    record = json.loads(TABLES.read_text())
    assert record["source"] == "cpu"
    entry = min(record["kernels"], key=lambda e: len(e["configs"]))
    result = run_cpu_strategies(entry, record["device"], 1, RooflineModel())
    assert {"tpe", "cmaes", "random", "tpe+costmodel", "random+costmodel"} <= set(result["strategies"])
    assert all(s["median_trials"] is None or 1 <= s["median_trials"] <= result["configs"]
               for s in result["strategies"].values())


@pytest.mark.skipif(not _has_compiler(), reason="no C++ compiler: the CPU target cannot build kernels")
def test_collect_on_the_cpu_target_writes_labelled_records_and_a_repeatability_report(tmp_path: Path) -> None:
    out = tmp_path / "records.jsonl"
    argv = ["collect", "--target", "cpu", "--out", str(out), "--kinds", "pointwise", "--per-kind", "1",
            "--configs-per-kernel", "3", "--no-suite", "--repeat-sample", "1", "--repeats", "2", "--rounds", "2",
            "--json"]
    assert main(argv) == 0
    records = read_records(out)
    assert records and all(r.capability.startswith("cpu:") and r.triton_version == "none" for r in records)
    assert all(r.source == "cpu:random:pointwise" and r.device_extra["simd_bytes"] > 0 for r in records)
    assert any(r.ok for r in records)
    for rec in (r for r in records if r.ok):  # robust label: the smallest of the rounds' medians, rounds kept
        rounds = rec.device_extra["round_medians"]
        assert len(rounds) >= 2 and rec.time_median_s == min(rounds)
        assert rec.device_extra["label"] == "min_of_rounds" and isinstance(rec.device_extra["disturbed"], bool)
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["repeatability"]["pairs"] >= 1 and "method" in meta["repeatability"]
    assert len(meta["loadavg_start_end"]) == 6 and meta["device"]["capability"].startswith("cpu:")
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_shipped_cpu_default_is_used_only_on_its_cpu() -> None:
    from tilewright.costmodel import CPU_DEFAULT_MODEL_PATH, DeviceDispatchModel

    if not CPU_DEFAULT_MODEL_PATH.exists():
        pytest.skip("no trained CPU default model shipped")
    model = GBMCostModel.load(CPU_DEFAULT_MODEL_PATH)  # hash-checked JSON, no pickle
    assert model.feature_set == "cpu" and not model.synthetic and model.payload["cv_overall"]
    device = read_records(SAMPLE)[0].device()
    assert isinstance(load_default_model(device), DeviceDispatchModel)
    assert isinstance(load_default_model({**device, "capability": "cpu:0000000000000000"}), RooflineModel)
    assert isinstance(load_default_model({"name": "NVIDIA H100", "capability": "9.0"}), RooflineModel)
