"""Sparse weight kernels against their dense reference with the same blocks (entries) zeroed.

CPU: the native block-sparse and 2:4 GEMMs and the block-sparse conv; Triton: the block-sparse
matmul in the interpreter (tiny sizes). Odd sizes (no dimension a multiple of a block), strided
inputs, bias or none, float32 and bfloat16; the float64 product is the judge.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tilewright.sparsity.weights import (
    BlockSparseWeight,
    NMWeight,
    as_matrix,
    prune_blocks,
    prune_nm,
)
from tilewright.targets.cpu.toolchain import NoCompilerError, find_compiler


def _has_compiler() -> bool:
    try:
        find_compiler()
    except NoCompilerError:
        return False
    return True


native = pytest.mark.skipif(not _has_compiler(), reason="no C++ compiler for the native CPU kernels")


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}


def _bsr(n: int, k: int, block: tuple[int, int], density: float, seed: int) -> tuple[torch.Tensor, BlockSparseWeight]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    scale = torch.rand(k, generator=g) + 0.1
    bs = BlockSparseWeight.from_dense(w, prune_blocks(w, density, block, scale), block)
    return w, bs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "n", "k", "block", "density"), [
    (37, 53, 71, (32, 16), 0.4), (5, 33, 17, (16, 8), 0.5), (1, 70, 40, (32, 32), 0.3), (130, 49, 97, (16, 16), 0.25),
])
def test_cpu_block_sparse_linear_matches_dense_with_blocks_zeroed(m, n, k, block, density, dtype) -> None:
    from tilewright.sparsity import ops  # noqa: F401  (registers the ops)

    if not _has_compiler():
        pytest.skip("no C++ compiler")
    w, bs = _bsr(n, k, block, density, seed=m + n + k)
    dense = bs.to_dense()
    pruned = dense.ne(0).logical_not() & w.ne(0)
    assert pruned.any() and torch.equal(dense[~pruned], w[~pruned])  # kept entries verbatim, others zero
    assert bs.block_mask().float().mean().item() == pytest.approx(bs.density)
    x = torch.randn(m, 2 * k)[:, ::2].to(dtype)  # strided rows and columns
    bias = torch.randn(n).to(dtype)
    for b in (bias, None):
        y = torch.ops.tilewright.bsr_linear(x, bs.values, bs.col_idx, bs.row_ptr, b, n, *block)
        ref = F.linear(x.double(), dense.double(), None if b is None else b.double())
        assert y.dtype == dtype and y.shape == (m, n)
        torch.testing.assert_close(y.double(), ref, **_tol(dtype))


@native
def test_cpu_block_sparse_linear_batched_input_and_empty_rows() -> None:
    from tilewright.targets.cpu.sparse_gemm import bsr_linear

    _w, bs = _bsr(45, 29, (16, 16), 0.34, seed=3)
    x = torch.randn(2, 3, 29)
    y = bsr_linear(x, bs.values, bs.col_idx, bs.row_ptr, None, 45, 29, (16, 16))
    torch.testing.assert_close(y, F.linear(x, bs.to_dense()), rtol=1e-4, atol=1e-4)
    assert bsr_linear(torch.randn(0, 29), bs.values, bs.col_idx, bs.row_ptr, None, 45, 29, (16, 16)).shape == (0, 45)


@native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("m", "n", "k"), [(37, 53, 71), (3, 9, 6), (129, 31, 45)])
def test_cpu_2_4_linear_matches_dense_with_entries_zeroed(m, n, k, dtype) -> None:
    from tilewright.sparsity import ops  # noqa: F401

    w = torch.randn(n, k)
    mask = prune_nm(w)
    nm = NMWeight.from_dense(w, mask)
    dense = nm.to_dense()
    assert torch.equal(dense, w * mask)
    groups = torch.nn.functional.pad(mask, (0, -k % 4)).reshape(n, -1, 4).sum(-1)
    assert bool((groups[:, : k // 4] == 2).all())  # every full group keeps exactly two
    x = torch.randn(m, k).t().contiguous().t().to(dtype)  # column-major input
    bias = torch.randn(n)
    y = torch.ops.tilewright.nm_linear(x, nm.values, nm.meta, bias, n)
    ref = F.linear(x.double(), dense.double(), bias.double())
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, **_tol(dtype))


@native
@pytest.mark.parametrize(("kernel", "stride", "padding", "dilation"), [
    ((1, 1), (1, 1), (0, 0), (1, 1)), ((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 3), (2, 1), (0, 1), (1, 2)),
])
def test_cpu_block_sparse_conv2d_matches_dense_conv(kernel, stride, padding, dilation) -> None:
    from tilewright.sparsity import ops  # noqa: F401

    cout, cin = 37, 11
    w = torch.randn(cout, cin, *kernel)
    block = (16, 8)
    mat = as_matrix(w)
    bs = BlockSparseWeight.from_dense(mat, prune_blocks(mat, 0.5, block), block)
    dense = bs.to_dense().reshape(w.shape)
    x = torch.randn(2, cin, 9, 7)
    bias = torch.randn(cout)
    y = torch.ops.tilewright.bsr_conv2d(x, bs.values, bs.col_idx, bs.row_ptr, bias, cout, *block, list(kernel),
                                        list(stride), list(padding), list(dilation))
    ref = F.conv2d(x.double(), dense.double(), bias.double(), stride, padding, dilation)
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_block_sparse_matmul_matches_dense_in_interpreter(dtype) -> None:
    from tilewright.targets.triton.jit import ensure_interpreter
    from tilewright.targets.triton.sparse_matmul import bsr_matmul

    ensure_interpreter()
    m, n, k, block = 19, 37, 45, (16, 16)
    _w, bs = _bsr(n, k, block, 0.5, seed=7)
    x = torch.randn(m, 2 * k)[:, ::2].to(dtype)
    bias = torch.randn(n)
    y = bsr_matmul(x, bs.values, bs.col_idx, bs.row_ptr, bias, n, k, block)
    ref = F.linear(x.double(), bs.to_dense().double(), bias.double())
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), ref, **_tol(dtype))
    with pytest.raises(ValueError, match="at least 16x16"):
        bsr_matmul(x, bs.values, bs.col_idx, bs.row_ptr, bias, n, k, (8, 16))


def test_pruning_keeps_the_requested_share_and_the_largest_blocks() -> None:
    w = torch.randn(64, 64) * 0.01
    w[:32, 32:] = 5.0  # one dominant 32x32 block
    mask = prune_blocks(w, 0.25, (32, 32))
    # the dominant block; the second block row keeps its best block too (no output loses every input)
    assert bool(mask[0, 1]) and not bool(mask[0, 0]) and int(mask[1].sum()) == 1
    with pytest.raises(ValueError, match="density"):
        prune_blocks(w, 0.0, (32, 32))
