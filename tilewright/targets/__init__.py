"""Code-generation targets behind one interface (:class:`~tilewright.targets.base.Target`).

Triton (:mod:`tilewright.targets.triton`: CUDA, and CPU in Triton's interpreter) and native C++
(:mod:`tilewright.targets.cpu`: CPU tensors, the default there); the compiler asks
:func:`target_for` for the target of a graph's device.
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


def native_cpu_target() -> Target:
    """The native C++ CPU target (one instance per process)."""
    return _cpu()


def native_cpu_problem() -> str | None:
    """None when the native CPU target can build kernels here, else why not (no working C++ compiler)."""
    from .cpu.toolchain import NoCompilerError, find_compiler

    try:
        find_compiler()
    except NoCompilerError as exc:
        return str(exc)
    return None


def cpu_uses_triton() -> bool:
    """Whether CPU tensors go to the Triton target (its interpreter) instead of the native C++ one.

    ``TILEWRIGHT_TARGET=triton``, or ``auto`` with ``TILEWRIGHT_INTERPRET=1`` (asking for Triton's
    interpreter is asking for Triton kernels: that is how they are verified without a GPU).
    """
    from ..config import config
    from .triton.jit import interpret_mode

    return config.target == "triton" or (config.target == "auto" and interpret_mode())


def target_for(device: Any = None) -> Target:
    """The target that builds kernels for tensors on ``device``.

    CUDA tensors: Triton. CPU tensors: the native C++ target, unless :func:`cpu_uses_triton`
    (``tilewright.config.target`` / ``TILEWRIGHT_TARGET``: "auto", "cpu" or "triton").
    """
    from ..config import config

    if config.target not in TARGETS:
        raise ValueError(f"unknown tilewright target {config.target!r}: TILEWRIGHT_TARGET must be one of "
                         f"{', '.join(TARGETS)}")
    is_cpu = device is None or torch.device(device).type == "cpu"
    if is_cpu and not cpu_uses_triton():
        return _cpu()
    return _triton()


__all__ = ["Target", "cpu_uses_triton", "native_cpu_problem", "native_cpu_target", "target_for"]
