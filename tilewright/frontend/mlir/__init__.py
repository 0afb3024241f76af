"""Compile torch-dialect MLIR (as torch-mlir produces it) with tilewright.

A module in the ``torch`` dialect with value-semantic tensors -- what
``torch_mlir.fx.export_and_import(model, *inputs, output_type="torch")`` returns, or a ``.mlir``
file holding its text -- is imported into the same ATen-level ``torch.fx`` graph the FX frontend
builds, so the same op registry, passes and codegen apply::

    fn = tilewright.compile_mlir("model.mlir")           # or a torch_mlir ir.Module
    out = fn(torch.randint(0, 64, (1, 8)))

Weights held as ``dense``/``dense_resource`` literals become graph constants. An op with no torch
equivalent raises :class:`MlirImportError` naming the op and its location (``loc("f.mlir":L:C)``).
torch-mlir is an optional extra: without it every entry point raises
:class:`MlirExtraMissingError`, which says how to install it.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.fx

from .compile import CompiledMlir, prepare_graph
from .ops import MlirImportError, MlirOpError, Shape, MlirTensorType, resolve_shapes

logger = logging.getLogger(__name__)

__all__ = [
    "INSTALL_HINT", "MlirExtraMissingError", "MlirImportError", "MlirOpError", "ImportedMlir",
    "CompiledMlir", "import_mlir", "compile_mlir", "load_mlir_model", "parse_input_shapes",
    "prepare_graph", "require_torch_mlir",
]

INSTALL_HINT = "pip install 'tilewright[mlir]'  (torch-mlir; it keeps your torch: its only needs are numpy and packaging)"

ShapesArg = str | Sequence[Sequence[int]] | None


class MlirExtraMissingError(ImportError):
    """torch-mlir, the optional ``mlir`` extra, is not installed."""


def require_torch_mlir() -> tuple[Any, Any]:
    """Import torch-mlir's ``ir`` module and ``torch`` dialect, or say how to install them.

    Raises:
        MlirExtraMissingError: if ``torch_mlir`` cannot be imported.
    """
    try:
        importlib.import_module("torch_mlir")
        ir = importlib.import_module("torch_mlir.ir")
        torch_d = importlib.import_module("torch_mlir.dialects.torch")
    except ImportError as exc:
        raise MlirExtraMissingError(
            f"MLIR import needs torch-mlir, the optional 'mlir' extra: {INSTALL_HINT} ({exc})") from exc
    return ir, torch_d


# ---------------------------------------------------------------------- shapes
def parse_input_shapes(spec: ShapesArg) -> list[Shape] | None:
    """Parse ``--input-shapes``: comma-separated shapes, dims joined by ``x``.

    ``"1x16,1x16"`` -> ``[(1, 16), (1, 16)]``; ``"scalar"`` (or ``""`` between commas) is a 0-d
    tensor. A sequence of int sequences is accepted as is.

    Raises:
        ValueError: on anything that is not a positive integer dimension.
    """
    if spec is None:
        return None
    if not isinstance(spec, str):
        return [tuple(int(d) for d in shape) for shape in spec]
    shapes: list[Shape] = []
    for part in spec.split(","):
        part = part.strip().lower()
        if part in ("", "scalar", "()"):
            shapes.append(())
            continue
        try:
            dims = tuple(int(d) for d in part.split("x"))
        except ValueError:
            raise ValueError(f"bad input shape '{part}' in '{spec}': expected dims like 1x16") from None
        if any(d < 0 for d in dims):
            raise ValueError(f"bad input shape '{part}' in '{spec}': negative dimension")
        shapes.append(dims)
    return shapes


# ---------------------------------------------------------------------- import
@dataclasses.dataclass
class ImportedMlir:
    """The result of importing one MLIR function.

    Attributes:
        graph_module: ATen-level FX graph; its output is always a tuple.
        input_types: declared type of each argument (``None`` dims are dynamic).
        output_types: declared type of each result (``None`` for non-tensor results).
        source: the file path, ``"<string>"`` or ``"<module>"``.
        func_name: the imported function's symbol name.
    """

    graph_module: torch.fx.GraphModule
    input_types: list[MlirTensorType]
    output_types: list[MlirTensorType | None]
    source: str
    func_name: str

    def example_inputs(self, input_shapes: ShapesArg = None, device: str | torch.device = "cpu",
                       seed: int = 0) -> list[torch.Tensor]:
        """Random inputs of the declared types: floats ~N(0,1), integers in {0, 1}, bools True.

        Integers stay in {0, 1} so they are valid token ids, masks and indices for any model.

        Raises:
            ValueError: if a dynamic dimension has no size in ``input_shapes``.
        """
        shapes = resolve_shapes(self.input_types, parse_input_shapes(input_shapes))
        if shapes is None:
            raise ValueError(f"{self.source} has dynamic input dimensions "
                             f"({self.signature()}); give --input-shapes, e.g. 1x16,1x16")
        gen = torch.Generator().manual_seed(seed)
        out = []
        for ttype, shape in zip(self.input_types, shapes):
            dtype = ttype.dtype or torch.float32
            if dtype.is_floating_point or dtype.is_complex:
                t = torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)
            elif dtype == torch.bool:
                t = torch.ones(shape, dtype=torch.bool)
            else:
                t = torch.randint(0, 2, shape, generator=gen).to(dtype)
            out.append(t.to(device))
        return out

    def signature(self) -> str:
        """Inputs as ``1x?xf32, 1x8xi64``-style text for messages."""
        def one(t: MlirTensorType) -> str:
            dims = "*" if t.shape is None else "x".join("?" if d is None else str(d) for d in t.shape)
            return f"{dims}:{t.dtype}"
        return ", ".join(one(t) for t in self.input_types)


def import_mlir(module_or_path: Any, *, func_name: str | None = None, input_shapes: ShapesArg = None,
                recompose: bool = True, check_types: bool = True,
                device: str | torch.device | None = None) -> ImportedMlir:
    """Import a torch-dialect module into an ATen-level ``torch.fx.GraphModule``.

    Args:
        module_or_path: a ``torch_mlir.ir.Module``, a path to a ``.mlir`` file, or MLIR text.
        func_name: the function to import; default ``main``, else the only function.
        input_shapes: concrete shapes for inputs with dynamic dims (see :func:`parse_input_shapes`).
        recompose: fold torch-mlir's decompositions back into the ops the FX path sees
            (softmax, addmm), so the same fusion patterns match.
        check_types: run the graph on fake tensors and compare every result with its declared
            MLIR type (needs all input shapes known; skipped otherwise).
        device: device that device constants in the graph are rewritten to.

    Raises:
        MlirExtraMissingError: torch-mlir is not installed.
        MlirImportError: the text does not parse, or an op cannot be imported (names op and loc).
    """
    from .importer import FuncImporter

    module, source, asm_text = _load_module(module_or_path)
    func_op = _find_func(module, func_name, source)
    importer = FuncImporter(func_op, asm_text, torch.device(device) if device is not None else None)
    gm = importer.run()
    imported = ImportedMlir(gm, importer.input_types, importer.output_types, source,
                            str(func_op.attributes["sym_name"]).strip('"'))
    if recompose:
        from .recompose import recompose_graph
        recompose_graph(gm)
    shapes = resolve_shapes(imported.input_types, parse_input_shapes(input_shapes))
    if check_types and shapes is not None:
        from .check import check_declared_types
        with torch.no_grad():
            check_declared_types(gm, imported.example_inputs(shapes))
    logger.info("imported %s:@%s: %d nodes", source, imported.func_name, len(gm.graph.nodes))
    return imported


def _load_module(module_or_path: Any) -> tuple[Any, str, Callable[[], str]]:
    """(ir.Module, source name, printed-text thunk) for a module object, a path or MLIR text."""
    ir, torch_d = require_torch_mlir()
    if hasattr(module_or_path, "operation") and hasattr(module_or_path, "body"):
        module = module_or_path
        return module, "<module>", lambda: module.operation.get_asm(large_elements_limit=None)
    if isinstance(module_or_path, (str, os.PathLike)):
        text_or_path = os.fspath(module_or_path)
        is_text = not isinstance(module_or_path, os.PathLike) and (
            "\n" in text_or_path or "{" in text_or_path) and not os.path.isfile(text_or_path)
        ctx = ir.Context()
        torch_d.register_dialect(ctx)
        if not is_text:
            path = Path(text_or_path)
            if not path.is_file():
                raise FileNotFoundError(f"no such MLIR file: {path}")
            try:
                module = ir.Module.parseFile(str(path), ctx)
            except ir.MLIRError as exc:
                raise MlirImportError(f"{path} is not valid torch-dialect MLIR: {exc}") from exc
            return module, str(path), lambda: path.read_text()
        try:
            module = ir.Module.parse(text_or_path, ctx)
        except ir.MLIRError as exc:
            raise MlirImportError(f"<string> is not valid torch-dialect MLIR: {exc}") from exc
        return module, "<string>", lambda: text_or_path
    raise TypeError(f"expected a torch_mlir ir.Module, a .mlir path or MLIR text, got {type(module_or_path)}")


def _find_func(module: Any, func_name: str | None, source: str) -> Any:
    funcs = [op for op in module.body.operations
             if op.operation.name == "func.func" and len(op.regions[0].blocks) > 0]
    names = [str(f.attributes["sym_name"]).strip('"') for f in funcs]
    if func_name is None:
        func_name = "main" if "main" in names or len(names) != 1 else names[0]
    if func_name not in names:
        raise MlirImportError(f"{source} has no function @{func_name} (functions: {names or 'none'})")
    return funcs[names.index(func_name)]


def compile_mlir(module_or_path: Any, input_shapes: ShapesArg = None, *, func_name: str | None = None,
                 **compile_options: Any) -> CompiledMlir:
    """Import a torch-dialect module and return a callable over torch tensors.

    Args:
        module_or_path: a ``torch_mlir.ir.Module``, a ``.mlir`` path or MLIR text.
        input_shapes: sizes for dynamic dims, used to check the import (``"1x16,1x16"``);
            the callable itself accepts any shapes the module allows.
        func_name: the function to compile (default ``main``).
        **compile_options: passed to ``tilewright.frontend.api.compile_graph``.

    Raises:
        MlirExtraMissingError: torch-mlir is not installed (the message says how to install it).
        MlirImportError: the module does not parse, or has an op tilewright cannot import.
    """
    return CompiledMlir(import_mlir(module_or_path, func_name=func_name, input_shapes=input_shapes),
                        **compile_options)


def load_mlir_model(path: str | os.PathLike[str], input_shapes: ShapesArg = None,
                    ) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    """What ``tilewright explain|autotune model.mlir [--input-shapes 1x16,1x16]`` compiles.

    Returns:
        The imported ATen-level ``GraphModule`` (an ``nn.Module`` returning a tuple, ready for
        ``compile_graph`` or ``torch.compile``) and example inputs of the declared types
        (see :meth:`ImportedMlir.example_inputs`).

    Raises:
        ValueError: the module has dynamic dims and ``input_shapes`` does not size them.
    """
    imported = import_mlir(path, input_shapes=input_shapes)
    return imported.graph_module, imported.example_inputs(input_shapes)
