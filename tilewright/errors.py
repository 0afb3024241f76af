"""Exceptions tilewright raises to its users."""
from __future__ import annotations


class TilewrightError(RuntimeError):
    """Base class of tilewright's own errors."""


class StrictModeError(TilewrightError):
    """A fallback happened while ``tilewright.config.strict`` (``TILEWRIGHT_STRICT=1``) is on.

    Strict mode turns every runtime fallback (a generated kernel, a template such as fused
    attention or a convolution gradient, an extern call, or a whole graph running its reference
    instead of tilewright's kernels) into this error, so tests and benchmarks cannot pass on the
    reference path by accident. The message names the kernel, the ops it fused and the cause.
    """


class InterpreterSetupError(TilewrightError):
    """Triton's interpreter was requested but cannot be switched on in this process."""


class BuildError(RuntimeError):
    """A target cannot generate a group's kernel (the message says why); its ops run as ATen calls."""


class KernelIndexError(IndexError):
    """A generated kernel met an out-of-range index in its inputs: the program's error, not the kernel's.

    The runtime does not fall back on it (the kernel stays in use); the graph's eager path runs and
    raises the error an uncompiled program raises (ATen's own message).
    """
