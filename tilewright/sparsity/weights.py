"""Compressed weight formats and the pruning that fills them: block-sparse (BSR) and N:M (2:4).

Weights follow ``nn.Linear``: ``W`` is ``[N, K]`` (out features x in features) and the layer
computes ``y = x @ W^T + b``. A convolution weight ``[Cout, Cin, kh, kw]`` is treated as the
``[Cout, Cin*kh*kw]`` matrix of its im2col form.

- :class:`BlockSparseWeight`: ``[N, K]`` cut into ``bn x bk`` blocks; only kept blocks are stored,
  block rows in CSR order (``row_ptr``/``col_idx``). Each block is stored k-major
  (``values[b, k, n]``), so one step of the CPU micro-kernel loads ``bn`` output lanes of one
  input column. N and K need not be multiples of the block: edge blocks are zero-padded.
- :class:`NMWeight`: in every group of ``m`` consecutive input columns of a row keep ``n``
  (2 of 4): ``values [N, Kp/m*n]`` plus the kept positions, two 2-bit indices packed per byte.

Pruning scores are magnitudes, optionally weighted by calibration activations (``col_scale``:
the root mean square of each input column, Wanda-style), so that a column that never carries
signal is pruned first. No retraining: the accuracy gate decides what is acceptable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BlockSparseWeight", "NMWeight", "as_matrix", "block_scores", "prune_blocks", "prune_nm"]


def as_matrix(weight: Tensor) -> Tensor:
    """A linear weight as is, a conv weight flattened to ``[Cout, Cin*kh*kw]`` (im2col order)."""
    return weight if weight.dim() == 2 else weight.reshape(weight.shape[0], -1)


def _importance(w: Tensor, col_scale: Tensor | None) -> Tensor:
    imp = w.detach().float().abs()
    if col_scale is not None:
        imp = imp * col_scale.detach().float().reshape(1, -1).to(imp.device)
    return imp


def block_scores(w: Tensor, block: tuple[int, int], col_scale: Tensor | None = None) -> Tensor:
    """Squared-importance sum of every ``bn x bk`` block of ``w [N, K]`` (edge blocks zero-padded)."""
    bn, bk = block
    n, k = w.shape
    imp = _importance(w, col_scale) ** 2
    imp = torch.nn.functional.pad(imp, (0, -k % bk, 0, -n % bn))
    return imp.reshape(imp.shape[0] // bn, bn, imp.shape[1] // bk, bk).sum(dim=(1, 3))


def prune_blocks(w: Tensor, density: float, block: tuple[int, int], col_scale: Tensor | None = None) -> Tensor:
    """Boolean block mask ``[ceil(N/bn), ceil(K/bk)]`` keeping the ``density`` share of blocks with the largest scores.

    Blocks are chosen over the whole matrix, but every block row keeps at least one block so that
    no output is silently replaced by its bias alone.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"block density must be in (0, 1], got {density}")
    scores = block_scores(w, block, col_scale)
    total = scores.numel()
    keep = max(1, min(total, round(density * total)))
    flat = scores.flatten()
    idx = torch.topk(flat, keep, sorted=False).indices
    mask = torch.zeros(total, dtype=torch.bool, device=flat.device)
    mask[idx] = True
    mask = mask.reshape(scores.shape)
    empty = ~mask.any(dim=1)
    if empty.any():
        best = scores.argmax(dim=1)
        mask[empty.nonzero().flatten(), best[empty]] = True
    return mask


@dataclass
class BlockSparseWeight:
    """A ``[N, K]`` weight in block-CSR form (see module docstring); float32 values."""

    values: Tensor  # [nnzb, bk, bn] float32, k-major blocks
    col_idx: Tensor  # [nnzb] int32: block column of each stored block
    row_ptr: Tensor  # [N/bn + 1] int32: CSR offsets per block row
    shape: tuple[int, int]
    block: tuple[int, int]  # (bn, bk)

    @property
    def nnzb(self) -> int:
        """Stored blocks."""
        return int(self.col_idx.numel())

    @property
    def density(self) -> float:
        """Share of blocks kept."""
        bn, bk = self.block
        n, k = self.shape
        return self.nnzb / (math.ceil(n / bn) * math.ceil(k / bk))

    @classmethod
    def from_dense(cls, w: Tensor, mask: Tensor, block: tuple[int, int]) -> BlockSparseWeight:
        """Pack the blocks of ``w [N, K]`` that ``mask`` keeps."""
        bn, bk = block
        n, k = w.shape
        wp = torch.nn.functional.pad(w.detach().float(), (0, -k % bk, 0, -n % bn))
        nbr, nbc = wp.shape[0] // bn, wp.shape[1] // bk
        if tuple(mask.shape) != (nbr, nbc):
            raise ValueError(f"block mask has shape {tuple(mask.shape)}, expected {(nbr, nbc)} for {tuple(w.shape)} "
                             f"in {bn}x{bk} blocks")
        blocks = wp.reshape(nbr, bn, nbc, bk).permute(0, 2, 3, 1)  # [nbr, nbc, bk, bn]
        rows, cols = mask.nonzero(as_tuple=True)
        values = blocks[rows, cols].contiguous()
        counts = mask.sum(dim=1)
        row_ptr = torch.zeros(nbr + 1, dtype=torch.int32)
        row_ptr[1:] = torch.cumsum(counts.cpu(), 0).to(torch.int32)
        return cls(values.cpu(), cols.to(torch.int32).cpu(), row_ptr, (n, k), (bn, bk))

    def block_mask(self) -> Tensor:
        """The boolean ``[N/bn, K/bk]`` mask of stored blocks."""
        bn, bk = self.block
        n, k = self.shape
        mask = torch.zeros(math.ceil(n / bn), math.ceil(k / bk), dtype=torch.bool)
        for r in range(mask.shape[0]):
            mask[r, self.col_idx[self.row_ptr[r]:self.row_ptr[r + 1]].long()] = True
        return mask

    def to_dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The dense ``[N, K]`` weight with pruned blocks zero (the sparse kernels' reference)."""
        bn, bk = self.block
        n, k = self.shape
        nbr, nbc = math.ceil(n / bn), math.ceil(k / bk)
        dense = torch.zeros(nbr, nbc, bk, bn, dtype=torch.float32)
        rows = torch.repeat_interleave(torch.arange(nbr), (self.row_ptr[1:] - self.row_ptr[:-1]).long())
        dense[rows, self.col_idx.long()] = self.values
        return dense.permute(0, 3, 1, 2).reshape(nbr * bn, nbc * bk)[:n, :k].to(dtype).contiguous()

    @property
    def nbytes(self) -> int:
        """Bytes stored (values and indices)."""
        return self.values.numel() * 4 + self.col_idx.numel() * 4 + self.row_ptr.numel() * 4


def prune_nm(w: Tensor, n_keep: int = 2, m: int = 4, col_scale: Tensor | None = None) -> Tensor:
    """Boolean ``[N, K]`` mask keeping the ``n_keep`` largest of every ``m`` consecutive inputs of a row."""
    rows, k = w.shape
    imp = torch.nn.functional.pad(_importance(w, col_scale), (0, -k % m))
    groups = imp.reshape(rows, -1, m)
    keep = torch.topk(groups, n_keep, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, -1)[:, :k]


@dataclass
class NMWeight:
    """A ``[N, K]`` weight in 2:4 form: ``values [N, G*2]`` (G = ceil(K/4) groups) and ``meta [N, G]``
    uint8 whose low and high 2-bit fields are the two kept positions of each group (ascending)."""

    values: Tensor
    meta: Tensor
    shape: tuple[int, int]

    @classmethod
    def from_dense(cls, w: Tensor, mask: Tensor) -> NMWeight:
        """Pack ``w`` under a 2:4 ``mask`` (exactly two kept per group of four; K padded with zeros)."""
        n, k = w.shape
        wp = torch.nn.functional.pad(w.detach().float(), (0, -k % 4)).reshape(n, -1, 4)
        mp = torch.nn.functional.pad(mask, (0, -k % 4)).reshape(n, -1, 4)
        pad_fix = mp.sum(-1) < 2  # a padded edge group may keep fewer: fill with padded zeros
        if pad_fix.any():
            order = torch.argsort(mp.to(torch.int8), dim=-1, descending=True, stable=True)
            mp = torch.zeros_like(mp).scatter_(-1, order[..., :2], True)
        if not bool((mp.sum(-1) == 2).all()):
            raise ValueError("a 2:4 mask must keep exactly 2 of every 4 consecutive inputs")
        pos = torch.sort(torch.topk(mp.to(torch.int8), 2, dim=-1, sorted=False).indices, dim=-1).values
        values = torch.gather(wp, -1, pos).reshape(n, -1).contiguous()
        meta = (pos[..., 0] | (pos[..., 1] << 2)).to(torch.uint8).contiguous()
        return cls(values.cpu(), meta.cpu(), (n, k))

    def to_dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The dense ``[N, K]`` weight with pruned entries zero."""
        n, k = self.shape
        g = self.meta.shape[1]
        pos = torch.stack([self.meta & 3, (self.meta >> 2) & 3], dim=-1).long()
        dense = torch.zeros(n, g, 4).scatter_(-1, pos, self.values.reshape(n, g, 2))
        return dense.reshape(n, g * 4)[:, :k].to(dtype).contiguous()

    @property
    def nbytes(self) -> int:
        """Bytes stored (float32 values and packed 2-bit indices)."""
        return self.values.numel() * 4 + self.meta.numel()
