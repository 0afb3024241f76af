"""issue #14's "done when": ``tilewright train-costmodel`` then ``tilewright autotune`` end to end on the
committed CPU sample, the search seeded by the model just trained (replayed timings: no timing
assertions, nothing measured, every number asserted comes from the sample file)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tilewright.cli import main
from tilewright.schedule.space import config_hash

from .tw_sample_kernels import SAMPLE, factory, replay_file


@pytest.fixture(scope="module")
def sample_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample_model")
    argv = ["train-costmodel", str(SAMPLE), "--out", str(out / "model.json"), "--folds", "3",
            "--estimators", "20", "--max-depth", "3", "--no-cv", "--objective", "rank"]
    assert main(argv) == 0
    return out / "model.json"


def test_autotune_on_the_sample_seeded_by_the_model_trained_on_it(sample_model: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("TILEWRIGHT_COSTMODEL", str(sample_model))
    tables = replay_file(tmp_path / "timings.json")
    capsys.readouterr()
    argv = ["autotune", "costmodel.tw_sample_kernels:factory", "--replay", str(tmp_path / "timings.json"),
            "--storage", f"sqlite:///{tmp_path / 'tune.db'}", "--trials", "40", "--json", "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["timing_source"] == "replay"
    names = {k.name for k in factory()}
    assert {row["kernel"] for row in out["kernels"]} == names
    for row in out["kernels"]:
        table = tables[row["kernel"]]
        # the winner is a measured config of the sample, reported with the sample's time, and -
        # every config being reachable within the trials - the sample's fastest one
        chash = config_hash(row["config"])
        assert chash in table and row["time_s"] == pytest.approx(table[chash])
        assert row["time_s"] == pytest.approx(min(table.values()))
        assert row["default_time_s"] is None or row["time_s"] <= row["default_time_s"]


def test_the_model_trained_on_the_sample_ranks_the_sample_kernels(sample_model: Path) -> None:
    from tilewright.costmodel import load_default_model

    from .tw_sample_kernels import sample_groups

    group = sample_groups(1)[0]
    model = load_default_model(group[0].device(), path=sample_model)
    scores = model.predict(group[0].problem(), [r.config for r in group], group[0].device())
    assert len(scores) == len(group) and len(set(scores)) > 1  # a trained model, not a constant
