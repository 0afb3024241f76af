"""Kernels and replay timings made from the committed CPU sample (``data/costmodel_cpu/sample.jsonl``).

``factory`` is a ``module:factory`` target for ``tilewright autotune``: one kernel per sample
problem with the most configs, whose space holds exactly the configs the sample measured (the
others are infeasible, so the search can only propose measured ones). :func:`replay_file` writes
the matching ``--replay`` timing file: the sample's measured medians. Nothing here runs a kernel.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tilewright.costmodel.records import Record, read_records
from tilewright.schedule.problem import KernelProblem
from tilewright.schedule.space import Config, ScheduleSpace, config_hash

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "costmodel_cpu" / "sample.jsonl"
KERNELS = 3


def sample_groups(n: int = KERNELS) -> list[list[Record]]:
    """The ``n`` sample problems with the most successful configs (ties: problem key order)."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for rec in read_records(SAMPLE):
        if rec.ok:
            groups[rec.problem_key].append(rec)
    return sorted(groups.values(), key=lambda g: (-len(g), g[0].problem_key))[:n]


@dataclass
class SampleKernel:
    """A kernel of the sample: its problem and a space of exactly the measured configs."""

    name: str
    problem: KernelProblem
    space: ScheduleSpace

    def make_inputs(self, device: str) -> Sequence[Any]:
        """No inputs: the kernel is only ever replayed."""
        return []

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        """Replay only: there is no code to run."""
        raise RuntimeError("sample kernels are replayed, never run")


def _kernel(group: list[Record]) -> SampleKernel:
    measured = {r.config_hash for r in group}
    params: dict[str, list[Any]] = defaultdict(set)  # type: ignore[assignment]
    for rec in group:
        for name, value in rec.config.items():
            params[name].add(value)
    space = ScheduleSpace(group[0].kind, {k: sorted(v, key=lambda x: (type(x).__name__, x)) for k, v in params.items()},
                          [lambda c: None if config_hash(c) in measured else "not in the sample"],
                          default=dict(group[0].config), version=group[0].space_version)
    return SampleKernel(f"sample-{group[0].kind}-{group[0].problem_key[:8]}", group[0].problem(), space)


def factory() -> list[SampleKernel]:
    """The sample's kernels (``tilewright autotune tests.costmodel.tw_sample_kernels:factory``)."""
    return [_kernel(g) for g in sample_groups()]


def replay_file(path: Path) -> dict[str, dict[str, float]]:
    """Write the ``--replay`` file of :func:`factory`'s kernels; returns ``{name: {hash: seconds}}``."""
    kernels = factory()
    tables = {k.name: {r.config_hash: float(r.time_median_s) for r in g} for k, g in zip(kernels, sample_groups())}
    device = {**sample_groups(1)[0][0].device(), "triton_version": "none"}
    doc = {"format": "tilewright-timings", "source": "cpu (committed sample, data/costmodel_cpu/sample.jsonl)",
           "device": device, "kernels": [{"name": k.name, "problem_key": k.problem.key(), "timings": tables[k.name]}
                                         for k in kernels]}
    path.write_text(json.dumps(doc))
    return tables
