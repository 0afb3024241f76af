"""LoRD-style low-rank factorization of linear weights: ``W [N, K] ~= U [N, r] @ V [r, K]``.

The factors come from a truncated SVD of ``W`` (``U = U_r * sqrt(S_r)``, ``V = sqrt(S_r) * V_r^T``,
balanced so neither factor carries all the scale), computed in float64 and stored in the
weight's dtype. The layer then runs as two GEMMs, ``y = (x @ V^T) @ U^T + b``, the bias and any
fused epilogue on the second. It is faster than the dense GEMM only when
``r * (N + K) < N * K``: :func:`expected_speedup` is that FLOP ratio, and :func:`max_useful_rank`
the largest rank that still saves FLOPs. The rank per layer is picked by the accuracy gate
(:mod:`tilewright.sparsity.gate`): the smallest rank on a grid whose error is within budget.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["expected_speedup", "factorize", "max_useful_rank", "rank_grid", "reconstruct", "svd"]


SVD = tuple[Tensor, Tensor, Tensor]


def svd(w: Tensor) -> SVD:
    """``(U, S, Vh)`` of ``w`` in float64 (pass it to :func:`factorize` to factor several ranks)."""
    return torch.linalg.svd(w.detach().double(), full_matrices=False)


def factorize(w: Tensor, rank: int, decomposition: SVD | None = None) -> tuple[Tensor, Tensor]:
    """``(U [N, rank], V [rank, K])`` with ``U @ V`` the best rank-``rank`` approximation of ``w``."""
    n, k = w.shape
    if not 1 <= rank <= min(n, k):
        raise ValueError(f"rank must be in [1, {min(n, k)}] for a {n}x{k} weight, got {rank}")
    u, s, vh = decomposition if decomposition is not None else svd(w)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(w.dtype).contiguous(), (root[:, None] * vh[:rank]).to(w.dtype).contiguous()


def reconstruct(w: Tensor, rank: int, decomposition: SVD | None = None) -> Tensor:
    """``U @ V`` of :func:`factorize` as a dense weight (what the gate measures)."""
    u, v = factorize(w, rank, decomposition)
    return (u.double() @ v.double()).to(w.dtype)


def max_useful_rank(n: int, k: int) -> int:
    """The largest rank whose two GEMMs do fewer FLOPs than the dense one (0 when none does)."""
    return max(0, (n * k - 1) // (n + k))


def expected_speedup(n: int, k: int, rank: int) -> float:
    """Dense FLOPs over low-rank FLOPs: ``N*K / (r*(N+K))``."""
    return n * k / (rank * (n + k)) if rank > 0 else float("inf")


def rank_grid(n: int, k: int, step: int = 16, useful_only: bool = True) -> list[int]:
    """Candidate ranks, multiples of ``step`` (ascending): below :func:`max_useful_rank`, or below full
    rank with ``useful_only=False`` (rank reduction measured for its own sake, as LoRD reports it)."""
    top = max_useful_rank(n, k) if useful_only else min(n, k) - 1
    step = max(1, min(step, top // 4 or 1))
    return list(range(step, top + 1, step))
