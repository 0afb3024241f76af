"""The GPU block-sparse benchmark's pieces that run without a GPU: the language-model-like block
mask, the same blocks as tilewright's index and as FlexAttention's BlockMask, its float64 reference
against the Triton block-sparse kernel (interpreter), argument parsing, the no-CUDA refusal, and
the GPU session script's dry run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_sparse as G  # noqa: E402


@pytest.mark.parametrize("n", [4096, 16384])
def test_default_mask_is_lm_like_and_is_the_ops_block_index(n: int) -> None:
    mask = G.lm_block_mask(1, 3, n, n, 128, sinks=1, window=2, density=0.15, seed=1)
    index = G.block_index(mask, n, n, 128)
    assert torch.equal(index.to_mask(), mask)
    assert 0.10 <= index.density() <= 0.20
    assert mask[..., 0].all() and mask.diagonal(dim1=-2, dim2=-1).all()  # sinks and the diagonal
    assert not torch.equal(mask[0, 0], mask[0, 1])  # random blocks drawn per head


def test_flex_block_mask_keeps_the_same_blocks() -> None:
    pytest.importorskip("torch.nn.attention.flex_attention")
    m = 1000  # not a multiple of the block
    mask = G.lm_block_mask(2, 2, m, m, 64, sinks=1, window=2, density=0.3, seed=3)
    flex = G.flex_block_mask(mask, m, m, 64, "cpu")
    assert torch.equal(flex.to_dense().bool(), G.block_index(mask, m, m, 64).to_mask())


def test_reference_matches_the_triton_block_sparse_kernel() -> None:
    from tilewright.targets.triton.attention.sparse import triton_block_sparse_forward

    torch.manual_seed(0)
    m, block = 150, 32
    q, k, v = (torch.randn(1, 2, m, 16) for _ in range(3))
    mask = G.lm_block_mask(1, 2, m, m, block, sinks=1, window=1, density=0.5, seed=2)
    out, _ = triton_block_sparse_forward(q, k, v, G.block_index(mask, m, m, block), causal=True)
    want = G.reference_attention(q, k, v, mask, block, chunk=64)
    assert G._error(out, want)["max_abs"] < 1e-4
    dense = G.reference_attention(q, k, v, None, block, chunk=64)
    assert G._error(out, dense)["max_abs"] > 1e-2  # the dropped blocks matter


def test_arguments() -> None:
    args = G.parse_args(["--lengths", "8192,509", "--gemm", "64,96,128", "--density", "0.1"])
    assert args.lengths == [8192, 509] and args.gemm == [64, 96, 128] and args.density == 0.1
    defaults = G.parse_args([])
    assert defaults.lengths == [4096, 16384] and defaults.block == 128 and defaults.out is None
    with pytest.raises(SystemExit):
        G.parse_args(["--gemm", "64,96"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_it_exits_2_with_a_message(tmp_path: Path) -> None:
    out = tmp_path / "sparse.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_sparse", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "needs a CUDA device" in proc.stderr
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is the no-CUDA path")
def test_gpu_session_dry_run_stops_in_the_preflight_and_its_limits_fit(tmp_path: Path) -> None:
    script = (ROOT / "benchmarks" / "gpu_session.sh").read_text()
    limits = [int(line.split()[2]) for line in script.splitlines() if line.startswith(("step ", "if ! step "))
              for line in [line.replace("if ! ", "")]]
    assert "gpu_sparse" in script and sum(limits) <= 480, limits
    env = {**os.environ, "OUT": str(tmp_path / "out"), "TW_SESSION_DIR": str(tmp_path / "work")}
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    steps = (tmp_path / "out" / "steps.txt").read_text()
    assert steps.startswith("preflight rc=1") and (tmp_path / "out" / "summary.json").exists()
