"""The GPU attention benchmark: refuses without CUDA; its code paths run as a CPU smoke test."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "attention_bench.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("attention_bench", BENCH)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_refuses_without_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    assert bench.main(["--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "attention_bench.json").exists()


def test_smoke_on_cpu_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every record field is produced (timings replaced by one call each; interpreter kernels)."""
    bench = _load()
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    monkeypatch.setattr(bench, "_bench", lambda fn, warmup, rep: (fn(), 1.0)[1])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    args = bench.parse_args(["--out", "unused", "--seqs", "40", "--head-dims", "16", "--dtypes", "float32",
                             "--tokens", "40", "--hidden", "32", "--decode-keys", "300", "--decode-batch", "1",
                             "--decode-heads", "4,2", "--decode-head-dim", "16", "--no-flex"])
    monkeypatch.setattr(bench, "FWD_CANDIDATES", [{"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 2, "num_stages": 1}])
    monkeypatch.setattr(bench, "BWD_CANDIDATES", [{"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 2, "num_stages": 1}])
    monkeypatch.setattr(bench, "DECODE_SPLITS", [4])
    prefill = bench.bench_prefill(args, 99 * 1024)
    decode = bench.bench_decode(args, 99 * 1024)
    assert {(r["mode"], r["causal"]) for r in prefill} == {("fwd", False), ("fwd", True),
                                                           ("fwd+bwd", False), ("fwd+bwd", True)}
    for rec in prefill + decode:
        assert rec["tflops"]["tilewright"] and "vs_sdpa_flash" in rec["ratio"] or "vs_sdpa" in rec["ratio"]
        assert rec.get("max_abs_err_vs_sdpa", 0.0) < 1e-4, rec
        assert rec["errors"] == [], rec["errors"]
    assert decode[0]["config"]["NUM_SPLITS"] >= 1 and decode[0]["gbps"]["tilewright"]
    json.dumps(prefill + decode, default=str)
