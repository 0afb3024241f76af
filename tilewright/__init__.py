"""tilewright: a compiler and autotuner that lowers PyTorch graphs to Triton kernels.

Use it as a torch.compile backend::

    import tilewright
    compiled = torch.compile(model, backend="tilewright")

``tilewright.explain(model, *inputs)`` reports kernels, fallbacks and coverage.
"""
from __future__ import annotations

from .config import config
from .frontend.api import compile_graph, explain
from .frontend.backend import register_backend, tilewright_backend
from .report import Report

__version__ = "0.1.0"

register_backend()


def compile_mlir(module_or_path, input_shapes=None):  # type: ignore[no-untyped-def]
    """Compile a torch-dialect MLIR module (object or ``.mlir`` path); needs ``tilewright[mlir]``."""
    from .frontend.mlir import compile_mlir as _compile_mlir

    return _compile_mlir(module_or_path, input_shapes=input_shapes)


__all__ = ["config", "explain", "compile_graph", "compile_mlir", "tilewright_backend", "Report", "__version__"]
