"""Tuning the native CPU target's kernels on real wall-clock measurements (no timing assertions)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tilewright
from tilewright.autotune.database import TuningDatabase
from tilewright.autotune.measure import CpuMeasurer, spread
from tilewright.autotune.tuner import default_measurer, tune_kernels
from tilewright.frontend.api import tunable_kernels
from tilewright.report import collect
from tilewright.schedule.device import SOURCE_CPU, SOURCE_INTERPRETER, trusted_source

pytestmark = pytest.mark.usefixtures("cpu_target")


def _softmax(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x * w, -1)


def _inputs() -> list[torch.Tensor]:
    return [torch.randn(37, 301), torch.randn(301)]


def test_cpu_kernels_get_the_cpu_measurer_keyed_by_model_isa_and_compiler() -> None:
    kernel = tunable_kernels(_softmax, _inputs())[0]
    measurer = default_measurer(None, kernel)
    assert isinstance(measurer, CpuMeasurer)
    info = measurer.device_info()
    assert info["capability"].startswith("cpu:") and info["name"] and info["compiler"] and "isa" in info
    assert trusted_source(info) == SOURCE_CPU
    assert trusted_source({"is_gpu": False, "capability": "none"}) == SOURCE_INTERPRETER


def test_every_config_is_measured_and_a_bad_one_is_data() -> None:
    kernel = tunable_kernels(_softmax, _inputs())[0]
    configs = list(kernel.space.enumerate())[:3]
    bad = dict(configs[0], threads=0)  # not in the space: a failed result, never a crash
    results = CpuMeasurer(repeats=3, sample_s=2e-4).measure(kernel, configs + [bad])
    assert all(r.ok and r.time_s > 0 and len(r.times) == 3 and r.source == SOURCE_CPU for r in results[:-1])
    assert not results[-1].ok and results[-1].error


def test_cold_cache_samples_single_launches() -> None:
    kernel = tunable_kernels(_softmax, _inputs())[0]
    result = CpuMeasurer(repeats=2, cold_cache=True).measure(kernel, [kernel.space.default_config()])[0]
    assert result.ok and len(result.times) == 2


def test_spread() -> None:
    assert spread([1.0]) == 0.0
    assert spread([1.0, 1.0, 1.0]) == 0.0
    assert spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx((4.0 - 2.0) / 3.0)


def test_tuned_cpu_schedule_is_served_from_the_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'tuning.db'}"
    monkeypatch.setattr(tilewright.config, "tuning_db_url", url)
    kernel = tunable_kernels(_softmax, _inputs())[0]
    results = tune_kernels([kernel], trials=3, storage_url=url, progress=False, cost_model=None, seed=0)
    assert results[0].config is not None and results[0].timing_source == SOURCE_CPU and results[0].stored
    entry = TuningDatabase(url).lookup(kernel.problem, kernel.space, default_measurer(None, kernel).device_info())
    assert entry is not None and dict(entry.config) == results[0].config
    torch._dynamo.reset()
    x, w = _inputs()
    with collect() as report:
        out = torch.compile(_softmax, backend="tilewright")(x, w)
    torch.testing.assert_close(out, _softmax(x, w))
    assert [k["schedule_source"] for k in report.kernels] == ["database"]
    assert report.kernels[0]["schedule"] == results[0].config


def test_autotune_command_tunes_a_model_on_the_cpu_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tilewright.cli import main

    url = f"sqlite:///{tmp_path / 'tuning.db'}"
    monkeypatch.chdir(Path(__file__).parent)
    argv = ["autotune", "tw_cpu_models:factory", "--trials", "2", "--storage", url, "--json", "--no-progress",
            "--target", "cpu", "--seed", "0"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["timing_source"] == SOURCE_CPU and out["device"]["capability"].startswith("cpu:")
    assert out["kernels"] and all(r["timing_source"] == SOURCE_CPU and r["stored"] for r in out["kernels"])
    assert len(TuningDatabase(url).entries()) == len(out["kernels"])


def test_max_autotune_measures_cpu_kernels_before_their_graph_library_exists(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tilewright.config, "tuning_db_url", f"sqlite:///{tmp_path / 'tuning.db'}")
    monkeypatch.setattr(tilewright.config, "autotune_trials", 2)
    x, w = _inputs()
    with collect() as report:
        out = torch.compile(_softmax, backend="tilewright", mode="max-autotune")(x, w)
    torch.testing.assert_close(out, _softmax(x, w))
    assert [k["schedule_source"] for k in report.kernels] == ["tuned"]
    assert [k["status"] for k in report.kernels] == ["ran"]


def test_gemm_races_the_vendor_library_once_per_problem(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without a tuned schedule a GEMM's generated default and extern torch.mm are timed at compile
    time and the faster one runs ('measured' in explain); the same problem is not timed twice."""
    import torch.nn.functional as F

    import tilewright
    from tilewright import compiler

    monkeypatch.setattr(compiler, "_RACED", {})
    monkeypatch.setattr(tilewright.config, "cache_dir", tmp_path)  # no race records of earlier runs
    raced: list[int] = []
    real = CpuMeasurer.measure

    def counting(self: CpuMeasurer, kernel: object, configs: list[dict]) -> object:
        raced.append(len(configs))
        return real(self, kernel, configs)

    monkeypatch.setattr(CpuMeasurer, "measure", counting)
    x, w, b = torch.randn(33, 40), torch.randn(24, 40), torch.randn(24)
    fn = lambda x, w, b: F.gelu(F.linear(x, w, b)) + F.linear(x, w, b)  # noqa: E731
    with collect() as report:
        out = torch.compile(fn, backend="tilewright")(x, w, b)
    torch.testing.assert_close(out, fn(x, w, b), rtol=1e-4, atol=1e-4)
    matmuls = [k for k in report.kernels if k["kind"] == "matmul"]
    assert matmuls and all(k["schedule_source"] == "measured" for k in matmuls)
    assert all(isinstance(k["schedule"]["extern"], bool) for k in matmuls)
    assert raced and set(raced) == {2} and len(raced) <= len(matmuls)


def test_the_shipped_cpu_model_seeds_searches_on_the_cpu_it_was_trained_on() -> None:
    """``auto`` is the trained CPU model where it fits the CPU (it beat the roofline on held-out
    kernels), the roofline on any other CPU; compile time on CPU keeps the space default."""
    from tilewright.autotune.tuner import default_cost_model
    from tilewright.costmodel import DeviceDispatchModel, load_default_model
    from tilewright.costmodel.gbm import GBMCostModel
    from tilewright.costmodel.roofline import RooflineModel

    trained = GBMCostModel.load(Path(tilewright.__file__).parent / "data" / "costmodel_cpu_default.json")
    key, capability = trained.devices[0].split("|")  # device key: "cpu:<model>|<capability>"
    here = {"name": key.removeprefix("cpu:"), "capability": capability, "is_gpu": False}
    assert trained.matches_device(here)
    model = default_cost_model(here)
    assert isinstance(model, DeviceDispatchModel) and model.model_for(here) is not model.fallback
    other = dict(here, capability="cpu:0000000000000000")
    assert isinstance(load_default_model(other), RooflineModel)
