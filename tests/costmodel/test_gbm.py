"""The learned model: exact export of sklearn trees, save/load, refusal of bad files, default."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from tilewright.costmodel import DeviceDispatchModel, load_default_model
from tilewright.costmodel.dataset import build_dataset
from tilewright.costmodel.gbm import (ForeignModelError, GBMCostModel, IncompatibleModelError, ModelFileError,
                                      TamperedModelError, _Forest, export_sklearn, payload_digest)
from tilewright.costmodel.roofline import RooflineModel

H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sm_count": 132}


@pytest.fixture(scope="module")
def model(synthetic_records) -> GBMCostModel:
    return GBMCostModel.fit(build_dataset(synthetic_records), n_estimators=30, max_depth=3)


def test_exported_trees_predict_exactly_like_sklearn() -> None:
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    y = 2 * X[:, 0] + np.sin(3 * X[:, 1]) + (X[:, 2] > 0.3)
    reg = GradientBoostingRegressor(n_estimators=25, max_depth=4, learning_rate=0.1).fit(X, y)
    doc = export_sklearn(reg)
    forest = _Forest(doc["trees"], 6)
    Xt = rng.normal(size=(200, 6))
    ours = doc["init"] + doc["learning_rate"] * forest.predict_sum(Xt)
    np.testing.assert_allclose(ours, reg.predict(Xt), rtol=1e-12, atol=1e-12)


def test_save_load_round_trip(model: GBMCostModel, synthetic_records, tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    model.save(path)
    loaded = GBMCostModel.load(path)
    rec = synthetic_records[0]
    configs = [r.config for r in synthetic_records if r.problem_key == rec.problem_key][:8]
    assert loaded.predict(rec.problem(), configs, rec.device()) == model.predict(rec.problem(), configs, rec.device())
    assert loaded.synthetic and set(loaded.devices) == {"H100-SXM", "A100-80GB"}
    assert loaded.payload["feature_version"] and loaded.payload["record_schema_version"] == 1
    assert json.loads(path.read_text())["sha256"] == payload_digest(loaded.payload)


def test_tampered_file_is_refused(model: GBMCostModel, tmp_path: Path) -> None:
    doc = model.to_dict()
    doc["payload"]["trees"][0]["threshold"][0] += 1.0
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(TamperedModelError, match="sha256"):
        GBMCostModel.load(path)


@pytest.mark.parametrize("content", [
    pickle.dumps({"format": "tilewright-costmodel"}),  # a pickle is never unpickled
    b"\x00\x01garbage",
    json.dumps({"learner": "xgboost", "trees": []}).encode(),
    json.dumps([1, 2, 3]).encode(),
    json.dumps({"format": "tilewright-costmodel", "format_version": 99, "payload": {}}).encode(),
])
def test_foreign_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "foreign.json"
    path.write_bytes(content)
    with pytest.raises(ForeignModelError):
        GBMCostModel.load(path)


def _resigned(doc: dict) -> dict:
    doc["sha256"] = payload_digest(doc["payload"])
    return doc


def test_incompatible_and_malformed_models_are_refused(model: GBMCostModel) -> None:
    doc = json.loads(json.dumps(model.to_dict()))
    doc["payload"]["feature_version"] = "0"
    with pytest.raises(IncompatibleModelError, match="feature version"):
        GBMCostModel.from_dict(_resigned(doc))
    doc = json.loads(json.dumps(model.to_dict()))
    doc["payload"]["feature_names"] = doc["payload"]["feature_names"][::-1]
    with pytest.raises(IncompatibleModelError):
        GBMCostModel.from_dict(_resigned(doc))
    doc = json.loads(json.dumps(model.to_dict()))
    doc["payload"]["trees"][0]["left"][0] = 0  # a cycle: must not hang
    with pytest.raises(ModelFileError, match="out of range"):
        GBMCostModel.from_dict(_resigned(doc))
    doc = json.loads(json.dumps(model.to_dict()))
    doc["payload"]["trees"][0]["feature"][0] = 10_000
    with pytest.raises(ModelFileError, match="out of range"):
        GBMCostModel.from_dict(_resigned(doc))


def test_default_model_is_roofline_without_a_real_trained_model(model: GBMCostModel, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TILEWRIGHT_COSTMODEL", raising=False)
    assert isinstance(load_default_model(), RooflineModel)  # nothing shipped yet
    synthetic = tmp_path / "synthetic.json"
    model.save(synthetic)
    assert isinstance(load_default_model(path=synthetic), RooflineModel)  # synthetic: refused
    # pretend the model came from real records (test only, never saved outside tmp_path)
    real = GBMCostModel({**model.payload, "synthetic": False, "devices": ["H100-SXM"]})
    real.save(tmp_path / "real.json")
    chosen = load_default_model(path=tmp_path / "real.json")
    assert isinstance(chosen, DeviceDispatchModel)
    assert isinstance(chosen.model_for(H100), GBMCostModel)
    assert isinstance(chosen.model_for({"name": "NVIDIA A100-SXM4-80GB"}), RooflineModel)
    assert isinstance(load_default_model({"name": "Tesla V100"}, path=tmp_path / "real.json"), RooflineModel)
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    assert isinstance(load_default_model(path=broken), RooflineModel)
