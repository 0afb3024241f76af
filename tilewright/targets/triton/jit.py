"""One place that decides how Triton kernels run: compiled (CUDA) or in Triton's interpreter.

Hand-written kernels use :func:`triton_jit` instead of ``@triton.jit``; generated kernels go
through :func:`wrap_kernel`. Interpreter mode is on when ``TILEWRIGHT_INTERPRET=1`` (or
``tilewright.config.interpret``) at the time the kernel is wrapped; it is how the test suite
runs the very same kernels on CPU tensors. Nested helpers decorated the same way stay
consistent with the kernels that call them.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

log = logging.getLogger(__name__)
_interpreter_ready = False

# NOTE: triton is imported lazily: whether its own helpers are interpreted is fixed when it is
# first imported, so ``import tilewright`` must not import it before the CLI picks a mode.


def interpret_mode() -> bool:
    """True when kernels should run in Triton's interpreter (CPU tensors)."""
    from ...config import config

    return bool(config.interpret) or os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def ensure_interpreter() -> None:
    """Switch Triton to its interpreter for this process, whatever imported Triton first.

    Triton decides when ``triton.language`` is imported whether its own jit'd helpers
    (``tl.sum``, ``tl.sigmoid``, ``tl.rand``...) are interpreted, and ``torch._dynamo`` imports
    Triton before a backend found through its entry point is loaded; an interpreted kernel then
    fails with "Cannot call @triton.jit'd outside of the scope of a kernel". This rebuilds every
    compiled-mode helper of ``triton.language`` as the interpreted function Triton would have
    made had ``TRITON_INTERPRET=1`` been set first (once per process; the helpers stay usable
    by the offline GPU compiler, as they are when the variable is set at start-up).
    """
    global _interpreter_ready
    if _interpreter_ready:
        return
    os.environ["TRITON_INTERPRET"] = "1"
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "runtime"):
        knobs.runtime.interpret = True
    converted: dict[int, Any] = {}

    def interpreted(value: Any) -> Any:
        if id(value) not in converted:
            converted[id(value)] = InterpretedFunction(value.fn)
        return converted[id(value)]

    namespaces: list[Any] = [module for name, module in list(sys.modules.items())
                             if module is not None and (name == "triton.language" or name.startswith("triton.language."))]
    namespaces.append(tl.core.tensor)
    for namespace in namespaces:
        for attr, value in list(vars(namespace).items()):
            if isinstance(value, JITFunction):
                setattr(namespace, attr, interpreted(value))
    if converted:
        log.info("Triton was imported before the interpreter was requested: %d of its helpers now run "
                 "interpreted", len(converted))
    _language_snapshot.extend((ns, dict(vars(ns))) for ns in namespaces + [tl.core.dtype])
    _squeeze_scalar_index()
    _interpreter_ready = True


def _squeeze_scalar_index() -> None:
    """Triton <= 3.6's interpreter converts a scalar to an int (``range(lo, hi)`` with bounds from
    ``tl.program_id``) by ``int()`` of a one-element array, which NumPy >= 2.4 refuses ("only
    0-dimensional arrays can be converted to Python scalars"); Triton 3.9 squeezes it first. Do
    the same on older versions."""
    from triton.runtime import interpreter

    patch_tensor = getattr(interpreter, "_patch_lang_tensor", None)
    if patch_tensor is None or getattr(patch_tensor, "squeezes_index", False):
        return

    def patched(tensor: Any, scope: Any) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched.squeezes_index = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patched


#: (namespace, its attributes) of triton.language as ensure_interpreter left it
_language_snapshot: list[tuple[Any, dict[str, Any]]] = []


def restore_triton_language() -> int:
    """Undo the patches Triton's interpreter leaves on ``triton.language``; returns how many.

    The interpreter swaps ``triton.language.core``'s builtins (``program_id``, ``load``,
    ``tensor.to``...) for NumPy versions while a kernel runs, and a helper called from inside a
    kernel (``tl.sum`` -> ``core.reduce``) patches them again without undoing it. A later
    compile for a real GPU in the same process then fails on its first line ("'block_argument'
    object has no attribute 'dtype'"). Call this before compiling for a GPU in a process that
    has run interpreted kernels.
    """
    restored = 0
    for namespace, attrs in _language_snapshot:
        for attr, value in attrs.items():
            if vars(namespace).get(attr) is not value:
                setattr(namespace, attr, value)
                restored += 1
    return restored


def wrap_kernel(fn: Callable[..., Any], interpret: bool | None = None, **kwargs: Any) -> Any:
    """Turn a plain Python kernel function into a launchable Triton kernel object."""
    if interpret is None:
        interpret = interpret_mode()
    if interpret:
        ensure_interpreter()
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
