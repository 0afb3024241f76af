"""Export an ``nn.Module`` robustly with ``torch.export`` (and to torch-dialect MLIR).

Plain ``torch_mlir.fx.export_and_import(model, ...)`` fails on many ``transformers`` models
(checked with torch 2.13, transformers 5.24, torch-mlir 20261001):

* non-persistent buffers (``position_ids``, rotary ``inv_freq``, ...) are missing from the
  exported state dict: ``AssertionError: Could not find state mapping for buffer``;
* decoder models return a ``DynamicCache`` by default, which is not a pytree;
* strict (Dynamo) export trips over code that non-strict export traces fine;
* ``.view`` of a non-contiguous (e.g. transposed) tensor fails while tracing in some versions.

:func:`export_module` applies one workaround per failure, each undone afterwards so the
caller's model is left as it was, and tries the attempts in :data:`ATTEMPTS` order until one
works; :func:`export_to_mlir` then imports the program with torch-mlir.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["ExportError", "ExportAttempt", "ATTEMPTS", "export_module", "export_to_mlir"]


class ExportError(RuntimeError):
    """Every export attempt failed; ``attempts`` holds (attempt name, error message) pairs."""

    def __init__(self, attempts: list[tuple[str, str]]) -> None:
        self.attempts = attempts
        lines = "\n".join(f"  - {name}: {msg}" for name, msg in attempts)
        super().__init__(f"torch.export failed with every workaround:\n{lines}")


@dataclasses.dataclass(frozen=True)
class ExportAttempt:
    """One way to call ``torch.export.export``: strict or not, ``Tensor.view`` as reshape or not."""

    name: str
    strict: bool = False
    view_as_reshape: bool = False


#: Tried in order. NOTE: view-as-reshape is exact for inference code that does not mutate
#: through views; it is only tried after the plain attempt failed.
ATTEMPTS: tuple[ExportAttempt, ...] = (
    ExportAttempt("non-strict"),
    ExportAttempt("non-strict, Tensor.view as reshape", view_as_reshape=True),
    ExportAttempt("strict", strict=True),
)


@contextlib.contextmanager
def persistent_buffers(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily make every non-persistent buffer persistent (restored on exit)."""
    saved = {mod: set(mod._non_persistent_buffers_set) for mod in model.modules()
             if getattr(mod, "_non_persistent_buffers_set", None)}
    try:
        for mod in saved:
            mod._non_persistent_buffers_set.clear()
        yield
    finally:
        for mod, names in saved.items():
            mod._non_persistent_buffers_set.update(names)


@contextlib.contextmanager
def no_kv_cache(model: torch.nn.Module) -> Iterator[None]:
    """Temporarily set ``config.use_cache = False`` on a ``transformers`` model, if it has one."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if config is None or not old:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = old


@contextlib.contextmanager
def view_as_reshape() -> Iterator[None]:
    """Temporarily make ``Tensor.view(shape)`` behave as ``Tensor.reshape(shape)``."""
    original = torch.Tensor.view

    def view(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs or (len(args) == 1 and isinstance(args[0], torch.dtype)):
            return original(self, *args, **kwargs)  # view(dtype) has no reshape twin
        return self.reshape(*args)

    torch.Tensor.view = view  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.view = original  # type: ignore[method-assign]


def export_module(model: torch.nn.Module, example_inputs: Sequence[Any],
                  example_kwargs: dict[str, Any] | None = None, *,
                  dynamic_shapes: Any = None,
                  attempts: Sequence[ExportAttempt] = ATTEMPTS) -> torch.export.ExportedProgram:
    """``torch.export.export`` with the workarounds real models need.

    Non-persistent buffers are exported as persistent ones and a ``transformers`` KV cache is
    switched off for the duration; then each of ``attempts`` is tried until one succeeds.
    The model's mode (train/eval) is left alone: call ``model.eval()`` first for inference.

    Raises:
        ExportError: every attempt failed; the message lists each attempt's error.
    """
    return _first_success(model, example_inputs, example_kwargs, dynamic_shapes, attempts,
                          lambda program: program)


def export_to_mlir(model: torch.nn.Module, example_inputs: Sequence[Any],
                   example_kwargs: dict[str, Any] | None = None, *, output_type: str = "torch",
                   dynamic_shapes: Any = None,
                   attempts: Sequence[ExportAttempt] = ATTEMPTS) -> Any:
    """Export ``model`` (see :func:`export_module`) and import it with torch-mlir.

    An attempt counts as failed if ``torch.export`` or torch-mlir's import fails (GPT-2 with
    batch > 1 exports, then fails in torch-mlir's decompositions on a ``view`` of a transposed
    tensor; the view-as-reshape attempt gets it through).

    Returns:
        A ``torch_mlir.ir.Module`` in the ``torch`` dialect with value-semantic tensors (for the
        default ``output_type``), ready for :func:`tilewright.frontend.mlir.compile_mlir`.

    Raises:
        MlirExtraMissingError: torch-mlir is not installed.
        ExportError: every attempt failed.
    """
    from . import require_torch_mlir
    require_torch_mlir()
    from torch_mlir import fx

    return _first_success(model, example_inputs, example_kwargs, dynamic_shapes, attempts,
                          lambda program: fx.export_and_import(program, output_type=output_type))


def _first_success(model: torch.nn.Module, example_inputs: Sequence[Any],
                   example_kwargs: dict[str, Any] | None, dynamic_shapes: Any,
                   attempts: Sequence[ExportAttempt], finish: Callable[[Any], T]) -> T:
    """``finish(torch.export.export(...))`` under the first attempt for which both succeed."""
    errors: list[tuple[str, str]] = []
    args = tuple(example_inputs)
    with persistent_buffers(model), no_kv_cache(model):
        for attempt in attempts:
            ctx = view_as_reshape() if attempt.view_as_reshape else contextlib.nullcontext()
            try:
                with ctx:
                    program = torch.export.export(model, args, example_kwargs,
                                                  dynamic_shapes=dynamic_shapes, strict=attempt.strict)
                    result = finish(program)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and reported
                text = str(exc).strip()
                msg = f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
                logger.info("export attempt '%s' failed: %s", attempt.name, msg)
                errors.append((attempt.name, msg))
                continue
            if errors:
                logger.warning("exported %s with '%s' after: %s", type(model).__name__, attempt.name,
                               "; ".join(f"{n} ({m})" for n, m in errors))
            return result
    raise ExportError(errors)
