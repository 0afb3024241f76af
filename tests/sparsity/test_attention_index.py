"""Block indices of sparse attention: static patterns against a token-level brute force, the CSR
round trip, XAttention's fused C++ scores against torch, its threshold selection, MInference's
estimate, and clear errors for bad parameters."""
from __future__ import annotations

import pytest
import torch

from tilewright.sparsity.attention import (
    BlockIndex,
    minference_estimate,
    select_blocks,
    sinks_window,
    vertical_slash,
    visible_blocks,
    xattention_scores,
    xattention_scores_reference,
    xattention_select,
)


def _brute(m: int, n: int, block: int, vertical: list[int], slash: list[int], causal: bool, offset: int) -> torch.Tensor:
    """bool [nmb, nkb] from the token-level definition (module doc of tilewright.sparsity.attention.index)."""
    i = torch.arange(m)[:, None]
    j = torch.arange(n)[None, :]
    o = i + offset - j
    on = torch.zeros((m, n), dtype=torch.bool)
    for vb in vertical:
        on |= (j // block) == vb
    for s in slash:
        on |= (o >= s * block) & (o < (s + 1) * block)
    if causal:
        vis_tok = j <= i + offset
    nmb, nkb = -(-m // block), -(-n // block)
    out = torch.zeros((nmb, nkb), dtype=torch.bool)
    for mb in range(nmb):
        for kb in range(nkb):
            rows, cols = slice(mb * block, (mb + 1) * block), slice(kb * block, (kb + 1) * block)
            hit = bool(on[rows, cols].any())
            if causal:
                hit = hit and bool(vis_tok[rows, cols].any())
            out[mb, kb] = hit
    return out


@pytest.mark.parametrize("m,n,block,vertical,slash,causal,offset", [
    (77, 101, 16, [0, 3], [0, 2], True, 24),
    (130, 130, 32, [1], [0, 1], True, 0),
    (50, 70, 16, [0], [-1, 0, 1], False, 0),
    (200, 150, 64, [0, 2], [0], True, -30),
])
def test_vertical_slash_equals_brute_force(m: int, n: int, block: int, vertical: list[int], slash: list[int],
                                           causal: bool, offset: int) -> None:
    index = vertical_slash(2, 3, m, n, block, vertical, slash, causal, offset)
    want = _brute(m, n, block, vertical, slash, causal, offset)
    assert torch.equal(index.to_mask(), want.expand(2, 3, *want.shape))
    assert index.row(1, 2, 0) == [int(x) for x in want[0].nonzero().flatten()]


def test_sinks_window_is_the_lambda_shape() -> None:
    index = sinks_window(1, 2, 300, 300, 32, sinks=1, window=2, causal=True)
    want = _brute(300, 300, 32, [0], [0, 1], True, 0)
    assert torch.equal(index.to_mask()[0, 1], want)
    # query block 7 keeps the sink and the keys up to 2 blocks (64 tokens) back: blocks 5 to 7
    assert index.row(0, 0, 7) == [0, 5, 6, 7]
    assert 0 < index.density() < 1


def test_per_head_patterns_and_csr_round_trip() -> None:
    vert = torch.tensor([[[0, 4]], [[2, 5]]]).reshape(2, 1, 2)
    index = vertical_slash(2, 1, 100, 100, 16, vert, [0], causal=False)
    assert index.row(0, 0, 0) == [0, 4]
    assert index.row(1, 0, 0) == [0, 2, 5]
    assert index.row(1, 0, 3) == [2, 3, 5]
    again = BlockIndex.from_mask(index.to_mask(), 100, 100, 16)
    assert torch.equal(again.rowptr, index.rowptr) and torch.equal(again.cols, index.cols)
    tok = index.token_mask()
    assert tok.shape == (2, 1, 100, 100) and bool(tok[1, 0, 3, 90]) and not bool(tok[1, 0, 3, 70])


def test_visible_blocks_and_density() -> None:
    vis = visible_blocks(64, 64, 16, causal=True)
    assert torch.equal(vis, torch.ones(4, 4, dtype=torch.bool).tril())
    full = BlockIndex.from_mask(torch.ones(1, 1, 4, 4, dtype=torch.bool), 64, 64, 16, causal=True)
    assert full.nnz == 10 and full.density() == 1.0


@pytest.mark.parametrize("causal,offset,stride", [(True, 0, 8), (True, 37, 4), (False, 0, 16)])
def test_xattention_cpu_scores_match_torch(causal: bool, offset: int, stride: int) -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 150, 40, generator=g)
    k = torch.randn(1, 2, 181, 40, generator=g)
    got = xattention_scores(q, k, 32, stride, None, causal, offset, backend="cpu")
    want = xattention_scores_reference(q, k, 32, stride, None, causal, offset)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-4)
    vis = visible_blocks(150, 181, 32, causal, offset)
    torch.testing.assert_close(got.sum(-1), torch.ones_like(got.sum(-1)))  # every row is a distribution
    assert float(got.masked_fill(vis, 0.0).abs().sum()) == 0.0  # invisible blocks score nothing


def test_xattention_antidiagonal_definition() -> None:
    """Scores from the definition, with loops: reduced scores sum_s q[S*a + S-1-s] . k[S*c + s] * scale / S,
    softmax per reduced row, summed per block and averaged over the block's reduced rows."""
    g = torch.Generator().manual_seed(4)
    S, block, m, n, d = 2, 16, 32, 48, 3
    q = torch.randn(1, 1, m, d, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, n, d, generator=g, dtype=torch.float64)
    t = torch.empty(m // S, n // S, dtype=torch.float64)
    for a in range(m // S):
        for c in range(n // S):
            t[a, c] = sum(float(q[0, 0, S * a + S - 1 - s] @ k[0, 0, S * c + s]) for s in range(S)) * d ** -0.5 / S
    p = torch.softmax(t, -1)
    want = p.reshape(m // block, block // S, n // block, block // S).sum(3).mean(1)
    torch.testing.assert_close(xattention_scores_reference(q, k, block, S)[0, 0].double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xattention_scores(q.float(), k.float(), block, S, backend="cpu")[0, 0].double(), want,
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.95])
def test_xattention_keeps_at_least_threshold_of_the_mass(threshold: float) -> None:
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, 2, 300, 32, generator=g) * 2
    k = torch.randn(2, 2, 300, 32, generator=g) * 2
    scores = xattention_scores(q, k, 16, 8, causal=True, backend="cpu")
    index = select_blocks(scores, threshold, 300, 300, 16, causal=True)
    kept = (scores * index.to_mask()).sum(-1)
    assert bool((kept >= threshold * scores.sum(-1) - 1e-6).all())
    # minimal: dropping the smallest kept non-forced block would fall below the threshold
    assert index.density() < 1.0
    lower = select_blocks(scores, threshold / 2, 300, 300, 16, causal=True)
    assert lower.nnz <= index.nnz
    full = xattention_select(q, k, 1.0, 16, 8, causal=True)
    assert full.density() == pytest.approx(1.0)


def test_minference_keeps_sinks_diagonal_and_heavy_columns() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 2, 256, 16, generator=g)
    k = torch.randn(1, 2, 256, 16, generator=g)
    k[:, :, 100] = q[:, :, -8:].mean(2) * 8  # a key every late query attends to: block 6 (of 16)
    index = minference_estimate(q, k, last_q=16, vertical=2, slash=1, block=16, causal=True)
    mask = index.to_mask()
    assert bool(mask[:, :, :, 0].all())                                 # sinks
    assert bool(mask.diagonal(dim1=2, dim2=3).all())                    # band 0
    assert bool(mask[:, :, 10:, 6].all())                               # the heavy column
    assert index.density() < 0.5


def test_bad_parameters_say_what_to_use() -> None:
    with pytest.raises(ValueError, match="block size 48"):
        sinks_window(1, 1, 64, 64, 48)
    with pytest.raises(ValueError, match="stride 5 must divide"):
        xattention_scores(torch.randn(1, 1, 32, 16), torch.randn(1, 1, 32, 16), 32, 5)
    with pytest.raises(ValueError, match="threshold"):
        select_blocks(torch.zeros(1, 1, 2, 2), 1.5, 32, 32, 16)


@pytest.mark.parametrize("m,n,block,causal,offset,threshold", [
    (300, 300, 16, True, 0, 0.8), (150, 181, 32, True, 37, 0.5), (200, 150, 16, True, -30, 0.9),
    (100, 130, 32, False, 0, 0.7)])
def test_cpu_selection_equals_torch_selection(m: int, n: int, block: int, causal: bool, offset: int,
                                              threshold: float) -> None:
    from tilewright.targets.cpu.sparse_attention import cpu_select_blocks

    g = torch.Generator().manual_seed(5)
    q = torch.randn(2, 3, m, 32, generator=g) * 2
    k = torch.randn(2, 3, n, 32, generator=g) * 2
    scores = xattention_scores(q, k, block, 8, None, causal, offset, backend="cpu")
    want = select_blocks(scores, threshold, m, n, block, causal, offset)
    got = cpu_select_blocks(scores, threshold, m, n, block, 32, causal, offset)
    assert torch.equal(got.rowptr, want.rowptr) and torch.equal(got.cols, want.cols)
    assert want.density() < 1.0


@pytest.mark.parametrize("m,n,block,causal,offset", [(150, 150, 16, True, 0), (77, 101, 16, True, 24),
                                                     (200, 150, 16, True, -30), (100, 130, 32, False, 0)])
def test_cpu_vertical_slash_and_minference_equal_torch(m: int, n: int, block: int, causal: bool, offset: int) -> None:
    from tilewright.targets.cpu.sparse_attention import cpu_vertical_slash

    g = torch.Generator().manual_seed(7)
    vert = torch.randint(0, 5, (2, 4, 3), generator=g)
    sl = torch.randint(-2, 4, (2, 4, 3), generator=g)
    got = cpu_vertical_slash(2, 4, m, n, block, vert, sl, causal, offset)
    want = vertical_slash(2, 4, m, n, block, vert, sl, causal, offset)
    assert torch.equal(got.rowptr, want.rowptr) and torch.equal(got.cols, want.cols)
    q = torch.randn(2, 4, m, 32, generator=g)
    k = torch.randn(2, 2, n, 32, generator=g)
    fast = minference_estimate(q, k, 16, 3, 3, block, None, causal, offset, backend="cpu")
    slow = minference_estimate(q, k, 16, 3, 3, block, None, causal, offset, backend="torch")
    assert torch.equal(fast.to_mask(), slow.to_mask())
