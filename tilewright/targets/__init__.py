"""Code-generation targets behind one interface (:class:`~tilewright.targets.base.Target`).

Today there is one, Triton (:mod:`tilewright.targets.triton`); the compiler asks
:func:`target_for` for the target of a graph's device.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from .base import Target


@lru_cache(maxsize=None)
def _triton() -> Target:
    from .triton.target import TritonTarget

    return TritonTarget()


def target_for(device: Any = None) -> Target:
    """The target that builds kernels for tensors on ``device`` (Triton for CUDA and CPU)."""
    return _triton()


__all__ = ["Target", "target_for"]
