"""The GPU benchmark refuses on CPU, and its kernels/blocks compute the right thing (interpreter)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("conv_bench", ROOT / "benchmarks" / "conv_bench.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["conv_bench"] = mod
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "DEVICE", "cpu")
    yield mod
    sys.modules.pop("conv_bench", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_refuses_without_gpu(bench, tmp_path, capsys):
    assert bench.main(["--out", str(tmp_path / "x.json")]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("block", ["conv", "conv_bias_relu", "conv_bias_add_relu"])
@pytest.mark.parametrize("groups", [1, 6])
def test_bench_conv_paths(bench, block, groups):
    case = bench.Case("t", "t", 6, 12, 9, 3, 2, 1, groups, block=block)
    t = bench._conv_inputs(case, 1, torch.float32, "nhwc")
    torch.testing.assert_close(bench._tilewright_fn(case, t, None)(), bench._reference_fn(case, t)(),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("block", ["bottleneck", "convnext_block"])
def test_bench_blocks(bench, block):
    case = bench.Case("t", "t", 16, 8, 7, 7, 1, 3, 16, block=block)
    build = bench._bottleneck if block == "bottleneck" else bench._convnext_block
    torch.manual_seed(0)
    ref = build(case, 1, torch.float32, "nhwc", False)
    torch.manual_seed(0)
    ours = build(case, 1, torch.float32, "nhwc", True)
    torch.testing.assert_close(ours(), ref(), atol=1e-4, rtol=1e-4)
