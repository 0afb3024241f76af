"""One place that decides how Triton kernels run: compiled (CUDA) or in Triton's interpreter.

Hand-written kernels use :func:`triton_jit` instead of ``@triton.jit``; generated kernels go
through :func:`wrap_kernel`. Interpreter mode is on when ``TILEWRIGHT_INTERPRET=1`` (or
``tilewright.config.interpret``) at the time the kernel is wrapped; it is how the test suite
runs the very same kernels on CPU tensors. Nested helpers decorated the same way stay
consistent with the kernels that call them.
"""
from __future__ import annotations

import os
from typing import Any, Callable

# NOTE: triton is imported lazily: whether its own helpers are interpreted is fixed when it is
# first imported, so ``import tilewright`` must not import it before the CLI picks a mode.


def interpret_mode() -> bool:
    """True when kernels should run in Triton's interpreter (CPU tensors)."""
    from ..config import config

    return bool(config.interpret) or os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def wrap_kernel(fn: Callable[..., Any], interpret: bool | None = None, **kwargs: Any) -> Any:
    """Turn a plain Python kernel function into a launchable Triton kernel object."""
    if interpret is None:
        interpret = interpret_mode()
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction

        return InterpretedFunction(fn, **kwargs)
    from triton.runtime.jit import JITFunction

    return JITFunction(fn, **kwargs)


def triton_jit(fn: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
    """Drop-in for ``@triton.jit`` that honours tilewright's interpreter setting."""
    if fn is None:
        return lambda f: wrap_kernel(f, **kwargs)
    return wrap_kernel(fn, **kwargs)


def can_run_kernels(device: Any) -> bool:
    """Whether Triton kernels can run for tensors on ``device`` in this process."""
    dev_type = getattr(device, "type", str(device).split(":")[0])
    if dev_type == "cuda":
        return True
    return dev_type == "cpu" and interpret_mode()


def cdiv(a: int, b: int) -> int:
    """Ceiling division."""
    return -(-a // b)
