"""Code-generation targets behind one interface (:class:`~tilewright.targets.base.Target`).

Triton (:mod:`tilewright.targets.triton`: CUDA, and CPU in Triton's interpreter) and native C++
(:mod:`tilewright.targets.cpu`, opt-in with ``TILEWRIGHT_TARGET=cpu`` while it grows); the
compiler asks :func:`target_for` for the target of a graph's device.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from .base import Target


TARGETS = ("auto", "triton", "cpu")


@lru_cache(maxsize=None)
def _triton() -> Target:
    from .triton.target import TritonTarget

    return TritonTarget()


@lru_cache(maxsize=None)
def _cpu() -> Target:
    from .cpu.target import CpuTarget

    return CpuTarget()


def target_for(device: Any = None) -> Target:
    """The target that builds kernels for tensors on ``device``.

    ``tilewright.config.target`` (``TILEWRIGHT_TARGET``): "cpu" builds C++ kernels for CPU
    tensors; "auto" and "triton" build Triton kernels (CUDA, or CPU in the interpreter).
    """
    from ..config import config

    if config.target not in TARGETS:
        raise ValueError(f"unknown tilewright target {config.target!r}: TILEWRIGHT_TARGET must be one of "
                         f"{', '.join(TARGETS)}")
    is_cpu = device is None or torch.device(device).type == "cpu"
    if config.target == "cpu" and is_cpu:
        return _cpu()
    return _triton()


__all__ = ["Target", "target_for"]
