"""The backend and the tuning database: max-autotune tunes misses, later compiles hit the database."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tilewright
from tilewright.report import collect


def test_max_autotune_then_database_hit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tilewright.config, "tuning_db_url", f"sqlite:///{tmp_path / 'tuning.db'}")
    monkeypatch.setattr(tilewright.config, "autotune_trials", 3)
    fn = lambda x: torch.softmax(x * 2.0, -1)  # noqa: E731
    x = torch.randn(6, 50)

    torch._dynamo.reset()
    with collect() as first:
        out = torch.compile(fn, backend="tilewright", options={"mode": "max-autotune"})(x)
    torch.testing.assert_close(out, fn(x))
    assert [k["schedule_source"] for k in first.kernels] == ["tuned"]

    torch._dynamo.reset()
    with collect() as second:  # default mode: no tuning, the stored config is used
        out = torch.compile(fn, backend="tilewright")(x)
    torch.testing.assert_close(out, fn(x))
    assert [k["schedule_source"] for k in second.kernels] == ["database"]
    assert second.kernels[0]["schedule"] == first.kernels[0]["schedule"]


def test_mode_argument_also_enables_tuning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tilewright.config, "tuning_db_url", f"sqlite:///{tmp_path / 'tuning.db'}")
    monkeypatch.setattr(tilewright.config, "autotune_trials", 2)
    fn = lambda x: torch.relu(x) + 1  # noqa: E731
    x = torch.randn(300)
    torch._dynamo.reset()
    with collect() as report:
        out = torch.compile(fn, backend="tilewright", mode="max-autotune")(x)
    torch.testing.assert_close(out, fn(x))
    assert [k["schedule_source"] for k in report.kernels] == ["tuned"]
