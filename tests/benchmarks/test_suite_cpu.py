"""The CPU mode of the suite, trimmed, run as CI runs it (subprocess).

It runs without a budget (``--no-budget``): every verdict here holds however slow or loaded
the machine is. The budget logic itself is tested on a fake clock in ``test_bench_plan.py``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASES = "softmax,resnet"

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """Run the trimmed CPU suite once; returns the JSON document and the printed output."""
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "TILEWRIGHT_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_suite", "--out", str(out), "--cpu", "--cases", CASES,
         "--no-budget", "--no-train"],
        cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=3600,  # a hang guard, not a speed test
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.glob("*-cpu.json"))
    assert len(files) == 1, list(out.iterdir())
    return json.loads(files[0].read_text()), proc.stdout


def test_document_structure(suite_run: tuple[dict, str]) -> None:
    doc, _ = suite_run
    assert doc["schema"] == "tilewright-bench/1"
    assert doc["mode"] == "cpu" and doc["finished"] is True
    for key in ("date", "torch", "triton", "python"):
        assert doc["env"][key]
    assert set(doc["sut"]) == {"backend", "substitute"}
    assert doc["config"]["budget_s"] is None and doc["elapsed_s"] > 0
    assert [r["key"] for r in doc["records"]] == doc["plan"], "without a budget every item runs, in order"
    assert doc["skipped"] == []


def test_correctness_first_and_passing(suite_run: tuple[dict, str]) -> None:
    doc, _ = suite_run
    phases = [r["phase"] for r in doc["records"]]
    n_kernel_checks = 1 * 2  # one kernel case, float32 and float16
    assert phases[:n_kernel_checks] == ["correctness"] * n_kernel_checks
    checks = [r for r in doc["records"] if r["phase"] == "correctness"]
    assert {(r["case"], r["dtype"]) for r in checks} >= {
        (c, d) for c in ("softmax",) for d in ("float32", "float16")}
    for r in checks:
        assert r["status"] == "ok", r
        assert r["max_rel_err"] <= r["tol"]
        assert r["eager_rel_err"] >= 0
        assert r["failing_tensors"] == 0 and r["tensors"] >= 1


def test_compile_pipeline_against_inductor(suite_run: tuple[dict, str]) -> None:
    doc, _ = suite_run
    recs = {(r["phase"], r["system"]): r for r in doc["records"] if r["case"] == "resnet"}
    tw = recs[("correctness", "tilewright")]
    assert tw["status"] == "ok" and tw["cache"] == "cold" and tw["first_call_s"] > 0
    assert tw["pipeline_s"] >= 0 and tw["method"] == "first call minus second call (wall)"
    inductor = recs[("compile", "inductor")]
    assert inductor["status"] == "ok", inductor
    assert inductor["pipeline_s"] > 0 and inductor["first_call_s"] >= inductor["second_call_s"]
    assert tw["method"] == inductor["method"]
    if not doc["sut"]["substitute"]:
        assert {"passes", "codegen"} <= set(tw["phases_s"]), tw
        assert tw["explain"]["n_kernels"] > 0


def test_table_printed_last(suite_run: tuple[dict, str]) -> None:
    _, stdout = suite_run
    assert "Correctness vs float64" in stdout
    assert "Compile time" in stdout
