"""The backend and the tuning database: max-autotune tunes misses, later compiles hit the database."""
from __future__ import annotations

from pathlib import Path
from typing import Any

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


def test_attention_template_is_tuned_and_served_from_the_database(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.nn.functional as F

    from tilewright.targets.triton.attention import launch as attention

    monkeypatch.setattr(tilewright.config, "tuning_db_url", f"sqlite:///{tmp_path / 'tuning.db'}")
    monkeypatch.setattr(tilewright.config, "autotune_trials", 2)
    launched: list[Any] = []
    original = attention.flash_attention_forward

    def recording(*args: Any, **kwargs: Any) -> Any:
        launched.append(kwargs.get("config"))
        return original(*args, **kwargs)

    monkeypatch.setattr(attention, "flash_attention_forward", recording)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))

    torch._dynamo.reset()
    with collect() as first:
        out = torch.compile(fn, backend="tilewright", mode="max-autotune")(q, k, v)
    torch.testing.assert_close(out, fn(q, k, v), rtol=1e-4, atol=1e-4)
    (template,) = [k for k in first.kernels if k["kind"] == "template"]
    assert template["schedule_source"] == "tuned" and template["schedule"]
    assert launched and launched[-1] == template["schedule"], "the launcher is given the tuned config"

    torch._dynamo.reset()
    with collect() as second:
        out = torch.compile(fn, backend="tilewright")(q, k, v)
    torch.testing.assert_close(out, fn(q, k, v), rtol=1e-4, atol=1e-4)
    (template,) = [k for k in second.kernels if k["kind"] == "template"]
    assert template["schedule_source"] == "database"
    assert launched[-1] == template["schedule"], "the launcher is given the stored config"


@pytest.mark.parametrize("source", ["replay", ""])
def test_untrusted_entries_are_not_served_at_compile_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          source: str) -> None:
    """A replayed (or source-less, pre-provenance) entry for this very kernel is not used."""
    import sqlalchemy as sa

    from tilewright.autotune.database import best_configs

    url = f"sqlite:///{tmp_path / 'tuning.db'}"
    monkeypatch.setattr(tilewright.config, "tuning_db_url", url)
    monkeypatch.setattr(tilewright.config, "autotune_trials", 2)
    fn = lambda x: torch.softmax(x * 3.0, -1)  # noqa: E731
    x = torch.randn(5, 40)
    torch._dynamo.reset()
    with collect() as first:
        torch.compile(fn, backend="tilewright", mode="max-autotune")(x)
    assert [k["schedule_source"] for k in first.kernels] == ["tuned"]
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        assert conn.execute(sa.select(best_configs.c.timing_source)).scalars().all() == ["interpreter"]
        conn.execute(sa.update(best_configs).values(timing_source=source))
    engine.dispose()

    torch._dynamo.reset()
    with collect() as second:
        out = torch.compile(fn, backend="tilewright")(x)
    torch.testing.assert_close(out, fn(x))
    assert [k["schedule_source"] for k in second.kernels] != ["database"]
    assert second.kernels[0]["schedule_source"] in ("costmodel", "default")
