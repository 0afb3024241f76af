"""Candidate rewrites of one weight layer, their dense equivalents and their expected speedups.

A candidate is ``(method, params)`` as a plan entry stores it. :func:`materialize` turns it into
the dense weight with the approximation applied (what the gate measures the model with), and
:func:`compress` into the tensors the compiled graph's sparse op takes. Both are deterministic
given the params: a block-sparse entry stores its block mask in the plan (``params["mask"]``,
base64 of the row-major bits), so applying a plan never needs calibration data again. 2:4 uses
weight magnitudes only; low rank is the truncated SVD (:mod:`.low_rank`).

Expected speedups are simple models, recorded as such in the plan next to measured ones:
block-sparse ``efficiency / density`` (``BLOCK_EFFICIENCY``: the share of the dense GEMM's
per-FLOP speed the CPU kernel reaches, measured in benchmarks/sparse_weights.py), 2:4
``NM_SPEEDUP`` (measured: slower than dense on CPU), low rank the FLOP ratio.
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import low_rank
from .weights import BlockSparseWeight, NMWeight, as_matrix, prune_blocks, prune_nm

__all__ = ["BLOCK_EFFICIENCY", "NM_SPEEDUP", "Candidate", "compress", "decode_mask", "encode_mask", "expected_speedup",
           "materialize", "propose"]

#: measured speed per FLOP of the block-sparse CPU kernel relative to our dense GEMM (32x32 blocks,
#: 1024x2048x2048: ~0.62 at densities 0.25 and 1.0, 0.74 at 0.5; benchmarks/sparse_weights.py)
BLOCK_EFFICIENCY = 0.65
#: measured 2:4 CPU kernel time relative to dense (it is slower: see docs/sparsity.md)
NM_SPEEDUP = 0.5
#: default block (output rows x input columns): a multiple of AVX-512's 16 lanes
DEFAULT_BLOCK = (32, 32)
DEFAULT_DENSITIES = (0.125, 0.25, 0.375, 0.5)


@dataclass
class Candidate:
    """One way to approximate a layer, with its model-level error once measured."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    expected_speedup: float = 1.0
    error: float = math.nan

    def label(self) -> str:
        """Short text for logs and notes."""
        p = self.params
        if self.method == "block_sparse":
            return f"block_sparse d={p['density']:.3g} {p['block'][0]}x{p['block'][1]}"
        if self.method == "low_rank":
            return f"low_rank r={p['rank']}/{p['full_rank']}"
        return self.method


def encode_mask(mask: Tensor) -> str:
    """Base64 of a boolean tensor's row-major bits."""
    bits = mask.flatten().to(torch.uint8).numpy()
    import numpy as np

    return base64.b64encode(np.packbits(bits).tobytes()).decode()


def decode_mask(text: str, shape: tuple[int, int]) -> Tensor:
    """Inverse of :func:`encode_mask`."""
    import numpy as np

    raw = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    bits = np.unpackbits(raw)[: shape[0] * shape[1]]
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


def expected_speedup(method: str, params: dict[str, Any], shape: tuple[int, int]) -> float:
    """The speedup model of a candidate over the dense layer (see module docstring)."""
    if method == "block_sparse":
        return BLOCK_EFFICIENCY / max(params["density"], 1e-6)
    if method == "2:4":
        return NM_SPEEDUP
    if method == "low_rank":
        return low_rank.expected_speedup(shape[0], shape[1], int(params["rank"]))
    return 1.0


def block_candidate(w: Tensor, density: float, block: tuple[int, int], col_scale: Tensor | None) -> Candidate:
    """Prune ``w`` (matrix form) to ``density`` of its blocks; the mask goes into the params."""
    mask = prune_blocks(w, density, block, col_scale)
    actual = float(mask.float().mean())
    params = {"density": actual, "block": list(block), "mask": encode_mask(mask), "mask_shape": list(mask.shape)}
    return Candidate("block_sparse", params, expected_speedup("block_sparse", params, tuple(w.shape)))


def propose(weight: Tensor, methods: tuple[str, ...], col_scale: Tensor | None = None,
            densities: tuple[float, ...] = DEFAULT_DENSITIES, block: tuple[int, int] = DEFAULT_BLOCK,
            ranks: list[int] | None = None) -> list[Candidate]:
    """Candidates for one layer's weight, most aggressive (highest expected speedup) first.

    Low rank is only proposed for 2-D (linear) weights and ranks that save FLOPs.
    """
    w = as_matrix(weight)
    out: list[Candidate] = []
    if "block_sparse" in methods:
        out += [block_candidate(w, d, block, col_scale) for d in densities]
    if "2:4" in methods:
        out.append(Candidate("2:4", {"n": 2, "m": 4}, expected_speedup("2:4", {}, tuple(w.shape))))
    if "low_rank" in methods and weight.dim() == 2:
        n, k = w.shape
        for r in ranks if ranks is not None else low_rank.rank_grid(n, k):
            params = {"rank": int(r), "full_rank": min(n, k)}
            out.append(Candidate("low_rank", params, expected_speedup("low_rank", params, (n, k))))
    return sorted(out, key=lambda c: -c.expected_speedup)


def materialize(weight: Tensor, method: str, params: dict[str, Any], decomposition: Any = None) -> Tensor:
    """The dense weight (same shape and dtype as ``weight``) with the candidate applied."""
    w = as_matrix(weight)
    if method == "exact":
        return weight
    if method == "block_sparse":
        bs = _bsr(w, params)
        dense = bs.to_dense(torch.float32)
    elif method == "2:4":
        dense = (w.float() * prune_nm(w, int(params.get("n", 2)), int(params.get("m", 4))))
    elif method == "low_rank":
        dense = low_rank.reconstruct(w, int(params["rank"]), decomposition).float()
    else:
        raise ValueError(f"unknown weight method {method!r}")
    return dense.to(weight.dtype).reshape(weight.shape)


def _bsr(w: Tensor, params: dict[str, Any]) -> BlockSparseWeight:
    block = (int(params["block"][0]), int(params["block"][1]))
    mask = decode_mask(params["mask"], tuple(params["mask_shape"]))
    return BlockSparseWeight.from_dense(w, mask, block)


def compress(weight: Tensor, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """The tensors (and ints) a compiled graph's op takes for this candidate.

    ``block_sparse``: values/col_idx/row_ptr/block; ``2:4``: values/meta; ``low_rank``: u/v in
    the weight's dtype.
    """
    w = as_matrix(weight)
    if method == "block_sparse":
        bs = _bsr(w, params)
        return {"values": bs.values, "col_idx": bs.col_idx, "row_ptr": bs.row_ptr, "block": bs.block}
    if method == "2:4":
        nm = NMWeight.from_dense(w, prune_nm(w, int(params.get("n", 2)), int(params.get("m", 4))))
        return {"values": nm.values, "meta": nm.meta}
    if method == "low_rank":
        u, v = low_rank.factorize(w, int(params["rank"]))
        return {"u": u, "v": v}
    raise ValueError(f"no compressed form for method {method!r}")
