"""The report renders speedups beside their baselines and geomeans from the same run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks import report


def _rec(case: str, system: str, ms: float, category: str = "kernel", dtype: str = "float16") -> dict[str, Any]:
    return {"phase": "timing", "case": case, "category": category, "dtype": dtype, "train": False,
            "system": system, "status": "ok", "median_ms": ms, "first_call_s": 1.0, "cache": "cold"}


def _doc() -> dict[str, Any]:
    records = [
        _rec("softmax", "eager", 2.0), _rec("softmax", "tilewright", 1.0), _rec("softmax", "inductor", 1.25),
        _rec("matmul", "eager", 4.0), _rec("matmul", "tilewright", 5.0), _rec("matmul", "inductor", 4.0),
        _rec("sdpa", "eager", 1.0), _rec("sdpa", "inductor", 0.5),  # no tilewright: left out of geomeans
        _rec("gpt2", "eager", 30.0, "model", "bfloat16"), _rec("gpt2", "tilewright", 20.0, "model", "bfloat16"),
        {"phase": "correctness", "case": "softmax", "category": "kernel", "dtype": "float16", "train": False,
         "system": "tilewright", "status": "mismatch", "max_rel_err": 0.1, "eager_rel_err": 1e-3, "tol": 2e-3},
    ]
    return {"schema": "tilewright-bench/1", "mode": "gpu", "finished": True,
            "env": {"gpu_name": "NVIDIA H100 80GB HBM3", "driver": "550.1", "torch": "2.11", "triton": "3.6",
                    "date": "2026-11-26T02:00:00+00:00"},
            "sut": {"backend": "tilewright", "substitute": False}, "records": records,
            "skipped": [{"key": "timing/model/llama/bfloat16/infer/inductor_max_autotune", "reason": "budget: x"}]}


def test_geomean_over_shared_cases() -> None:
    summary = dict((s, (g, n)) for s, g, n in report.geomean_summary(report.timings(_doc()), "kernel"))
    tw, n = summary["tilewright"]
    assert n == 2 and abs(tw - (2.0 * 0.8) ** 0.5) < 1e-9
    ind, n_ind = summary["inductor"]
    assert n_ind == 2 and abs(ind - (1.6 * 1.0) ** 0.5) < 1e-9  # sdpa excluded: no tilewright time


def test_markdown_names_card_and_baselines(tmp_path: Path) -> None:
    path = tmp_path / "2026-11-26-nvidia-h100.json"
    path.write_text(json.dumps(_doc()))
    text = report.markdown(report.load([tmp_path]))
    assert "NVIDIA H100 80GB HBM3" in text and "driver 550.1" in text
    assert "1.000 (2.00×)" in text  # tilewright softmax beside its eager speedup
    assert "Geomean speedup over eager" in text and "inductor **1.26×**" in text
    assert "mismatch" in text and "Skipped 1 items" in text


def test_cli_writes_markdown_and_charts(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps(_doc()))
    assert report.main([str(tmp_path), "--out-dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.md").read_text().startswith("### NVIDIA H100")
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["r-kernel-speedup.png", "r-model-speedup.png"]
