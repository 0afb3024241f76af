"""Random ops for fusable dropout: ``tilewright::seed`` and ``tilewright::dropout_mask``.

``aten.native_dropout`` is decomposed (``frontend/decompositions.py``) into a fresh seed and a
keep-mask computed from (seed, element index). Inside generated kernels the mask is
``tl.rand(seed, linear_index) >= p`` — no mask tensor has to be read, and the dropout fuses with
the residual add or activation around it. The torch implementation below (used when kernels
cannot run, and as the fallback) draws from a generator seeded the same way; it is deterministic
for a given seed but not bit-identical to Triton's Philox stream, which no caller relies on: the
forward's mask is what the backward uses.
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor

_sites = itertools.count()


def _seeded_op(name: str):  # type: ignore[no-untyped-def]
    try:  # torch >= 2.6 knows tags on custom ops; randomness must not be merged by CSE
        return torch.library.custom_op(name, mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
    except TypeError:
        return torch.library.custom_op(name, mutates_args=())


@_seeded_op("tilewright::seed")
def seed(site: int, device: torch.device) -> Tensor:
    """A fresh random 31-bit seed (int64 tensor of one element); ``site`` keeps call sites apart."""
    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)


@seed.register_fake
def _seed_fake(site: int, device: torch.device) -> Tensor:
    return torch.empty((1,), dtype=torch.int64, device=device)


@torch.library.custom_op("tilewright::dropout_mask", mutates_args=())
def dropout_mask(x: Tensor, seed: Tensor, p: float) -> Tensor:
    """Keep-mask of ``x``'s shape: True with probability ``1 - p``, a function of (seed, index)."""
    gen = torch.Generator(device=x.device)
    gen.manual_seed(int(seed.reshape(-1)[0].item()))
    return torch.rand(x.shape, generator=gen, device=x.device) >= p


@dropout_mask.register_fake
def _dropout_mask_fake(x: Tensor, seed: Tensor, p: float) -> Tensor:
    return torch.empty(x.shape, dtype=torch.bool, device=x.device)


def next_site() -> int:
    """A number unique to one dropout call site in this process."""
    return next(_sites)
