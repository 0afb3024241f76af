"""Block indices of sparse attention and the static patterns (sinks + window, vertical + slash).

A :class:`BlockIndex` says, for every (batch, query head, query block), which key blocks the
attention visits: a CSR over rows ``(b * H + h) * nmb + mb`` (``rowptr`` int64, ``cols`` int32,
ascending). Query and key blocks are both ``block`` tokens. A kept block is computed exactly (the
causal limit and the end of the keys still apply inside it); a dropped block is treated as if
every score in it were -inf.

Token semantics of the patterns (query i, key j, ``o = i + causal_offset - j``, blocks of ``bn``)::

    vertical v   keeps every key block listed (absolute key-block ids)
    slash s      keeps the band s*bn <= o < (s+1)*bn (s = 0: the diagonal block band;
                 negative s look ahead, for non-causal attention)

and a block (mb, kb) is kept when any (i, j) in it (i < M, j < N) lies on the pattern and,
for causal attention, the block holds at least one visible key (j <= i + causal_offset).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

#: block sizes the kernels take (multiples of the CPU vector length)
BLOCK_SIZES = (16, 32, 64, 128, 256)


def check_block(block: int) -> int:
    """``block`` as an int; ValueError unless it is one of :data:`BLOCK_SIZES`."""
    if int(block) not in BLOCK_SIZES:
        raise ValueError(f"attention block size {block} is not supported; use one of {BLOCK_SIZES}")
    return int(block)


def visible_blocks(m: int, n: int, block: int, causal: bool, causal_offset: int = 0) -> Tensor:
    """bool [nmb, nkb]: blocks holding at least one key some query of the block may attend to."""
    nmb, nkb = -(-m // block), -(-n // block)
    if not causal:
        return torch.ones((nmb, nkb), dtype=torch.bool)
    last = torch.clamp(torch.arange(1, nmb + 1) * block, max=m) - 1 + causal_offset  # last row's key limit
    return torch.arange(nkb)[None, :] * block <= last[:, None]


@dataclass(frozen=True)
class BlockIndex:
    """Kept key blocks per (batch, query head, query block), as CSR (see the module doc)."""

    batch: int
    heads: int
    m: int
    n: int
    block: int
    #: int64 [batch * heads * nmb + 1]
    rowptr: Tensor
    #: int32 [nnz], ascending within each row
    cols: Tensor
    causal: bool = False
    causal_offset: int = 0

    @property
    def nmb(self) -> int:
        """Number of query blocks."""
        return -(-self.m // self.block)

    @property
    def nkb(self) -> int:
        """Number of key blocks."""
        return -(-self.n // self.block)

    @property
    def nnz(self) -> int:
        """Kept blocks in total."""
        return int(self.cols.numel())

    def row(self, b: int, h: int, mb: int) -> list[int]:
        """Key blocks kept for query block ``mb`` of (batch ``b``, head ``h``)."""
        r = (b * self.heads + h) * self.nmb + mb
        return [int(x) for x in self.cols[int(self.rowptr[r]):int(self.rowptr[r + 1])]]

    def to_mask(self) -> Tensor:
        """bool [batch, heads, nmb, nkb]: True where a block is kept."""
        rows = self.batch * self.heads * self.nmb
        counts = self.rowptr[1:] - self.rowptr[:-1]
        row_ids = torch.repeat_interleave(torch.arange(rows), counts)
        mask = torch.zeros((rows, self.nkb), dtype=torch.bool)
        mask[row_ids, self.cols.long()] = True
        return mask.view(self.batch, self.heads, self.nmb, self.nkb)

    def token_mask(self) -> Tensor:
        """bool [batch, heads, m, n]: the kept blocks at token level (for references; O(m n))."""
        mask = self.to_mask()
        mask = mask.repeat_interleave(self.block, dim=2).repeat_interleave(self.block, dim=3)
        return mask[:, :, :self.m, :self.n]

    def density(self) -> float:
        """Kept blocks over the blocks the dense kernel visits (the causally visible ones)."""
        vis = visible_blocks(self.m, self.n, self.block, self.causal, self.causal_offset)
        total = int(vis.sum()) * self.batch * self.heads
        kept = int((self.to_mask() & vis).sum())
        return kept / total if total else 1.0

    def to(self, device: torch.device | str) -> BlockIndex:
        """The same index with its tensors on ``device``."""
        return BlockIndex(self.batch, self.heads, self.m, self.n, self.block, self.rowptr.to(device),
                          self.cols.to(device), self.causal, self.causal_offset)

    @classmethod
    def from_mask(cls, mask: Tensor, m: int, n: int, block: int, causal: bool = False,
                  causal_offset: int = 0) -> BlockIndex:
        """The index of a bool block mask [batch, heads, nmb, nkb] (invisible causal blocks dropped)."""
        block = check_block(block)
        if mask.dim() != 4:
            raise ValueError(f"block mask of shape {list(mask.shape)}; expected [batch, heads, nmb, nkb]")
        batch, heads, nmb, nkb = (int(x) for x in mask.shape)
        if (nmb, nkb) != (-(-m // block), -(-n // block)):
            raise ValueError(f"block mask {list(mask.shape)} does not tile {m} x {n} with blocks of {block}")
        keep = mask.to(torch.bool).cpu() & visible_blocks(m, n, block, causal, causal_offset)
        flat = keep.reshape(-1, nkb)
        counts = flat.sum(1)
        rowptr = torch.zeros(flat.shape[0] + 1, dtype=torch.int64)
        rowptr[1:] = torch.cumsum(counts, 0)
        cols = flat.nonzero()[:, 1].to(torch.int32).contiguous()
        return cls(batch, heads, m, n, block, rowptr, cols, bool(causal), int(causal_offset))


def _per_head(x: Sequence[int] | Tensor, batch: int, heads: int) -> Tensor:
    """int64 [batch, heads, k] from a list (shared by every head) or a [k] / [batch, heads, k] tensor."""
    t = torch.as_tensor(x, dtype=torch.int64).cpu()
    if t.dim() == 1:
        t = t.expand(batch, heads, t.numel())
    if t.dim() != 3 or t.shape[0] != batch or t.shape[1] != heads:
        raise ValueError(f"per-head block lists of shape {list(t.shape)}; expected [k] or [{batch}, {heads}, k]")
    return t


def vertical_slash(batch: int, heads: int, m: int, n: int, block: int, vertical: Sequence[int] | Tensor,
                   slash: Sequence[int] | Tensor, causal: bool = True, causal_offset: int = 0) -> BlockIndex:
    """The index keeping vertical key blocks and slash bands (see the module doc for the semantics).

    ``vertical`` / ``slash``: one list for every head, or int tensors [batch, heads, k].
    """
    block = check_block(block)
    nmb, nkb = -(-m // block), -(-n // block)
    vert = _per_head(vertical, batch, heads)
    sl = _per_head(slash, batch, heads)
    mask = torch.zeros((batch, heads, nmb, nkb), dtype=torch.bool)
    if vert.shape[-1]:
        ok = (vert >= 0) & (vert < nkb)
        hot = torch.zeros((batch, heads, nkb + 1), dtype=torch.bool)
        hot.scatter_(2, torch.where(ok, vert, torch.full_like(vert, nkb)), True)
        mask |= hot[:, :, None, :nkb]
    if sl.shape[-1]:
        i0 = torch.arange(nmb) * block                               # [nmb]
        iend = torch.clamp(i0 + block, max=m) - 1
        lo = i0[:, None] + causal_offset - (sl[..., None, :] + 1) * block + 1  # [B, H, nmb, ns]
        hi = iend[:, None] + causal_offset - sl[..., None, :] * block
        lo, hi = lo.clamp(min=0), hi.clamp(max=n - 1)
        valid = lo <= hi
        klo = torch.div(lo, block, rounding_mode="floor")
        khi = torch.div(hi, block, rounding_mode="floor")
        # a band crosses at most (block + block - 1) keys per query block: up to 3 key blocks
        flat = torch.zeros((batch, heads, nmb, nkb + 1), dtype=torch.bool)
        span = int((khi - klo).masked_fill(~valid, 0).max()) + 1 if bool(valid.any()) else 0
        for step in range(span):
            kb = klo + step
            ok = valid & (kb <= khi)
            flat.scatter_(3, torch.where(ok, kb, torch.full_like(kb, nkb)), True)
        mask |= flat[..., :nkb]
    return BlockIndex.from_mask(mask, m, n, block, causal, causal_offset)


def sinks_window(batch: int, heads: int, m: int, n: int, block: int, sinks: int = 1, window: int = 4,
                 causal: bool = True, causal_offset: int = 0) -> BlockIndex:
    """Λ-shaped attention (StreamingLLM / LM-Infinite): the first ``sinks`` key blocks plus the
    ``window`` slash bands up to the diagonal, i.e. every key less than ``window * block`` tokens
    behind its query (a query block then keeps up to ``window + 1`` key blocks; non-causal:
    ``window`` bands on each side)."""
    slash = list(range(window)) if causal else list(range(-window + 1, window))
    return vertical_slash(batch, heads, m, n, block, list(range(sinks)), slash, causal, causal_offset)


def dense_index(batch: int, heads: int, m: int, n: int, block: int, causal: bool = False,
                causal_offset: int = 0) -> BlockIndex:
    """Every visible block kept (the sparse kernels then compute exact attention)."""
    nmb, nkb = -(-m // block), -(-n // block)
    return BlockIndex.from_mask(torch.ones((batch, heads, nmb, nkb), dtype=torch.bool), m, n, block, causal,
                                causal_offset)
