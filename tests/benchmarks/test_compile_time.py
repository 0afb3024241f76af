"""``python -m benchmarks.compile_time`` reports tilewright's pipeline phases on tiny GPT-2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("transformers")


def test_compile_time_cli(tmp_path: Path) -> None:
    out = tmp_path / "ct.json"
    env = {**os.environ, "TILEWRIGHT_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_time", "--repeat", "1", "--device", "cpu",
                           "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=3600)  # a hang guard, not a speed test
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    (res,) = doc["results"]
    assert doc["model"] == "gpt2" and res["system"] == "tilewright"
    assert res["pipeline_s"] > 0 and res["first_minus_second_s"] >= 0
    if doc["sut"] == "tilewright":
        assert {"passes", "codegen"} <= set(res["phases_s"])
        assert "phase timings" in res["method"]
    else:
        assert "first call minus the second" in res["method"]
    assert "pipeline" in proc.stdout
