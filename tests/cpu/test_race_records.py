"""Compile-time race winners persist on disk: a second process reuses them; corrupt, foreign or stale
records are ignored and the race runs again."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright import compiler
from tilewright.autotune import race_records
from tilewright.autotune.measure import CpuMeasurer
from tilewright.report import collect


def _compile_once(x: torch.Tensor, w: torch.Tensor) -> list[dict]:
    torch._dynamo.reset()
    with collect() as report:
        out = torch.compile(lambda x, w: F.relu(x @ w), backend="tilewright")(x, w)
    torch.testing.assert_close(out, F.relu(x @ w), rtol=1e-4, atol=1e-4)
    return [k for k in report.kernels if k["kind"] == "matmul"]


@pytest.fixture
def races(cpu_target: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """Counts the races timed; the cache (and so the race records) starts empty."""
    monkeypatch.setattr(tilewright.config, "cache_dir", tmp_path)
    monkeypatch.setattr(compiler, "_RACED", {})
    timed: list[int] = []
    real = CpuMeasurer.measure

    def counting(self: CpuMeasurer, kernel: object, configs: list[dict]) -> object:
        timed.append(len(configs))
        return real(self, kernel, configs)

    monkeypatch.setattr(CpuMeasurer, "measure", counting)
    return timed


def test_a_new_process_reuses_the_stored_winner(races: list[int], monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    x, w = torch.randn(37, 45), torch.randn(45, 29)
    first = _compile_once(x, w)
    assert races == [2] and [k["schedule_source"] for k in first] == ["measured"]
    files = list((tmp_path / "races").glob("*.json"))
    assert len(files) == 1
    monkeypatch.setattr(compiler, "_RACED", {})  # what a new process starts with
    second = _compile_once(x, w)
    assert races == [2], "the stored winner must be reused, not timed again"
    assert second[0]["schedule"] == first[0]["schedule"] and second[0]["schedule_source"] == "measured"


@pytest.mark.parametrize("damage", ["garbage", "foreign", "stale"])
def test_a_bad_record_is_ignored_and_rewritten(races: list[int], monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path, damage: str) -> None:
    x, w = torch.randn(21, 19), torch.randn(19, 35)
    _compile_once(x, w)
    (path,) = (tmp_path / "races").glob("*.json")
    doc = json.loads(path.read_text())
    if damage == "garbage":
        path.write_text("{not json")
    elif damage == "foreign":  # another problem's record under this name
        doc["identity"]["problem"] = "someone-else"
        path.write_text(json.dumps(doc))
    else:  # a config that is no longer a candidate
        doc["config"]["MC"] = -1
        path.write_text(json.dumps(doc))
    monkeypatch.setattr(compiler, "_RACED", {})
    _compile_once(x, w)
    assert races == [2, 2], "a bad record must not be trusted"
    assert json.loads(path.read_text())["identity"]["problem"] != "someone-else"


def test_records_are_keyed_by_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tilewright.config, "cache_dir", tmp_path)
    cand = [{"a": 1}, {"a": 2}]
    here = {"name": "cpu-x", "capability": "cpu:1"}
    other = {"name": "cpu-x", "capability": "cpu:2"}
    race_records.store_winner("k", "1", here, cand[1], {"h": 1.0})
    assert race_records.load_winner("k", "1", here, cand) == cand[1]
    assert race_records.load_winner("k", "1", other, cand) is None
    assert race_records.load_winner("k", "2", here, cand) is None
