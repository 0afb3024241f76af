"""Collection driver with a fake kernel and a fake measurer (no GPU; timings are SYNTHETIC)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tilewright.autotune.measure import MeasureResult
from tilewright.schedule.problem import KernelProblem
from tilewright.schedule.space import ScheduleSpace, config_hash
from tilewright.cli import main
from tilewright.costmodel.collect import ProblemSpec, collect, random_kernels, random_spec, sample_configs
from tilewright.costmodel.records import read_records

SPACE = ScheduleSpace("pointwise", {"XBLOCK": [64, 128, 256, 512, 1024], "num_warps": [1, 2, 4, 8]},
                      constraints=[lambda c: "too wide" if c["XBLOCK"] < 32 * c["num_warps"] else None],
                      default={"XBLOCK": 1024, "num_warps": 4})


@dataclass
class FakeKernel:
    problem: KernelProblem
    space: ScheduleSpace = field(default_factory=lambda: SPACE)
    name: str = "fake"

    def make_inputs(self, device):  # pragma: no cover - never launched
        return []

    def runner(self, config):  # pragma: no cover - never launched
        return lambda inputs: None


class FakeMeasurer:
    """SYNTHETIC timings; fails every config with num_warps == 8."""

    def __init__(self) -> None:
        self.calls = 0

    def device_info(self):
        return {"name": "SYNTHETIC GPU", "capability": "9.0", "sm_count": 132, "triton_version": "x"}

    def measure(self, kernel, configs):
        self.calls += 1
        out = []
        for c in configs:
            if c["num_warps"] == 8:
                out.append(MeasureResult.failure(c, "launch error"))
            else:
                t = 1e-6 * c["XBLOCK"] / c["num_warps"]
                out.append(MeasureResult(c, config_hash(c), t, (t, t * 1.1, t * 0.9)))
        return out


def _kernels(n: int):
    for i in range(n):
        yield "random:pointwise", FakeKernel(KernelProblem("pointwise", f"k{i}", {"numel": 1000 + i}, "float32"))


def test_sample_configs_spread_feasible_default_first() -> None:
    configs = sample_configs(SPACE, 6, random.Random(0))
    assert configs[0] == SPACE.default_config()
    assert len({config_hash(c) for c in configs}) == 6 and all(SPACE.is_feasible(c) for c in configs)
    assert len(sample_configs(SPACE, 100, random.Random(0))) == SPACE.size()


@pytest.mark.parametrize("kind", ["pointwise", "reduction", "matmul", "attention", "conv"])
def test_random_specs(kind: str) -> None:
    rng = random.Random(1)
    specs = [random_spec(kind, rng) for _ in range(20)]
    assert all(s.kind == kind and all(v >= (0 if k == "padding" else 1) for k, v in s.dims.items()) for s in specs)
    assert len({tuple(sorted(s.dims.items())) for s in specs}) > 10


def test_random_kernels_use_builders_and_skip_missing() -> None:
    def build(spec: ProblemSpec) -> FakeKernel:
        return FakeKernel(KernelProblem(spec.kind, "b", spec.dims, spec.dtype, meta=spec.meta))

    out = list(random_kernels(["pointwise", "nonexistent"], 3, builders={"pointwise": build}))
    assert [s for s, _ in out] == ["random:pointwise"] * 3


def test_collect_writes_records_and_failures(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    summary = collect(_kernels(4), FakeMeasurer(), out, configs_per_kernel=6, budget_s=None,
                      precompile=lambda k, cs: {config_hash(cs[-1]): "compile error"})
    records = read_records(out)
    assert summary.kernels == 4 and summary.records == len(records) == 24
    assert summary.failures == sum(1 for r in records if not r.ok) > 0
    assert any(r.failure == "compile error" for r in records)
    assert all(r.device_name == "SYNTHETIC GPU" and r.triton_version == "x" for r in records)
    assert summary.by_kind == {"pointwise": 4}


def test_collect_stops_at_budget(tmp_path: Path) -> None:
    measurer = FakeMeasurer()
    summary = collect(_kernels(50), measurer, tmp_path / "r.jsonl", configs_per_kernel=2, budget_s=0.0)
    assert summary.stopped_by_budget and summary.kernels == 0 and measurer.calls == 0


def test_collect_budget_runs_on_the_clock_it_is_given(tmp_path: Path) -> None:
    """The fake clock advances 5 s per read (one read per kernel): with a 35 s budget, the sixth
    kernel would end past it (30 s elapsed + 1.2 x 6 s mean), so exactly 5 are measured."""
    now = [0.0]

    def clock() -> float:
        now[0] += 5.0  # whatever the machine's speed
        return now[0]

    summary = collect(_kernels(50), FakeMeasurer(), tmp_path / "r.jsonl", configs_per_kernel=2, budget_s=35.0,
                      clock=clock)
    assert summary.stopped_by_budget and summary.kernels == 5


def test_collect_command_refuses_without_gpu(tmp_path: Path) -> None:
    assert main(["collect", "--out", str(tmp_path / "r.jsonl"), "--device", "cpu"]) == 3
    assert not (tmp_path / "r.jsonl").exists()
