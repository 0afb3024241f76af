"""Plan order, budget skipping and timers, without compiling anything."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_suite import Runner, relative_error, tolerance
from benchmarks.plan import build_plan
from benchmarks.timing import Budget, ItemTimeout, bench_cpu, deadline


def test_gpu_plan_puts_correctness_first_and_max_autotune_last() -> None:
    items = build_plan(cpu=False)
    phases = [i.phase for i in items]
    n_kernel_checks = phases.index("timing")
    assert n_kernel_checks >= 3 * 11 and set(phases[:n_kernel_checks]) == {"correctness"}
    assert {i.dtype for i in items[:n_kernel_checks]} == {"float16", "bfloat16", "float32"}
    assert items[-1].system == "inductor_max_autotune"
    assert len({i.key for i in items}) == len(items)
    assert any(i.system.startswith("vendor:") for i in items)


def test_plan_filters() -> None:
    items = build_plan(cpu=True, cases=["softmax"], dtypes=["float32"], systems=["eager"])
    assert [i.key for i in items] == ["correctness/kernel/softmax/float32/infer/tilewright",
                                      "timing/kernel/softmax/float32/infer/eager"]


def test_budget_skips_with_reason(tmp_path: Path) -> None:
    doc = {"records": [], "skipped": []}
    runner = Runner(doc, tmp_path / "r.json", torch.device("cpu"), small=True, budget=Budget(0.0, reserve_s=0.0))
    runner.run(build_plan(cpu=True, cases=["softmax"]))
    assert doc["records"] == [] and len(doc["skipped"]) == 5  # 2 checks + 3 timings
    assert all(s["reason"].startswith("budget:") for s in doc["skipped"])


def test_budget_learns_ratio() -> None:
    b = Budget(100.0, reserve_s=0.0)
    b.observe(1.0, 4.0)
    assert b.expected(10.0) > 10.0 and b.allows(10.0) and not b.allows(1000.0)


def test_relative_error_and_tolerance() -> None:
    ref = [torch.tensor([1.0, -2.0], dtype=torch.float64)]
    assert relative_error([torch.tensor([1.0, -2.0])], ref) == 0.0
    assert relative_error([torch.tensor([1.0, -1.0])], ref) == pytest.approx(0.5)
    assert relative_error([torch.tensor([float("nan"), 0.0])], ref) == float("inf")
    assert relative_error([torch.zeros(3)], ref) == float("inf")
    assert tolerance("float16", 1e-2) == pytest.approx(4e-2) and tolerance("float32", 0.0) == 1e-5


def test_bench_cpu_and_deadline() -> None:
    t = bench_cpu(lambda: time.sleep(0.001), warmup=0, rep_ms=10, min_reps=3)
    assert t.n >= 3 and t.median_ms >= 1.0 and t.method == "wall"
    with pytest.raises(ItemTimeout):
        with deadline(0.05):
            time.sleep(1.0)


_HANG = """
import contextlib, sys, time
from pathlib import Path
import torch
import benchmarks.gpu_suite as g
from benchmarks.plan import Item
from benchmarks.timing import Budget

g.deadline = lambda seconds: contextlib.nullcontext()  # simulate a hang SIGALRM cannot reach
doc = {"records": [], "skipped": []}
runner = g.Runner(doc, Path(sys.argv[1]), torch.device("cpu"), True, Budget(3.0, reserve_s=0.0))
runner._correctness = lambda item: time.sleep(60)
runner.start_watchdog()
runner.run([Item("correctness", "softmax", "kernel", "float32", False, "tilewright", 0.1)])
"""


def test_watchdog_ends_a_hung_run_within_budget(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "r.json"
    root = Path(__file__).resolve().parents[2]
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _HANG, str(out)], cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 30
    doc = json.loads(out.read_text())
    assert doc["finished"] is False and "correctness/kernel/softmax" in doc["aborted"]
    assert [s["key"] for s in doc["skipped"]] == ["correctness/kernel/softmax/float32/infer/tilewright"]
