"""Walks one torch-dialect ``func.func`` and builds the ATen-level ``torch.fx`` graph for it.

Every ``torch.aten.*``/``torch.prims.*`` op becomes a ``call_function`` of its ``torch.ops``
overload (resolved by name, then by schema), ``torch.vtensor.literal`` constants become
buffers read with ``get_attr``, and scalar/list ops (``torch.constant.*``,
``torch.prim.ListConstruct``, ...) become literal arguments. Each node remembers the op name,
its MLIR location and the declared result type (``node.meta["mlir_op"|"mlir_loc"|"mlir_type"]``)
so that later checks and error messages can point back into the ``.mlir`` file.

Only :mod:`tilewright.frontend.mlir` should use this module; it needs the torch-mlir bindings.
"""
from __future__ import annotations

import logging
import operator
import re
from typing import Any, Callable

import numpy as np
import torch
import torch.fx

from .ops import (
    DTYPE_TO_CODE,
    IDENTITY_OPS,
    IGNORED_OPS,
    NON_VALUE_OPS,
    MlirOpError,
    VALUE_SEMANTIC_ALIASES,
    MlirTensorType,
    parse_tensor_type,
    resolve_overload,
    schema_arguments,
)

logger = logging.getLogger(__name__)

_RESOURCE_REF_RE = re.compile(r"dense_resource<\s*(\"[^\"]*\"|[^>\s]+)\s*>")


def parse_resource_blobs(asm: str) -> dict[str, bytes]:
    """The ``builtin`` dialect resources of a printed module: key -> raw bytes (no header).

    MLIR prints each blob as ``key: "0x<alignment: u32 LE><data>"``.
    """
    start = asm.rfind("{-#")
    if start < 0:
        return {}
    blobs: dict[str, bytes] = {}
    for match in re.finditer(r"(\"[^\"]*\"|[\w.$-]+)\s*:\s*\"0x([0-9A-Fa-f]*)\"", asm[start:]):
        raw = bytes.fromhex(match.group(2))
        blobs[match.group(1).strip('"')] = raw[4:]
    return blobs


class FuncImporter:
    """Builds a ``torch.fx.GraphModule`` from one ``func.func`` op.

    Args:
        func_op: the ``func.func`` operation (torch-mlir Python bindings object).
        resource_text: returns the module's printed text; called only if a ``dense_resource``
            constant needs its blob.
        device: if given, replaces every device constant (``torch.constant.device``), so
            tensors the graph creates land where its inputs live.
    """

    def __init__(self, func_op: Any, resource_text: Callable[[], str],
                 device: torch.device | None = None) -> None:
        self.func_op = func_op
        self._resource_text = resource_text
        self._blobs: dict[str, bytes] | None = None
        self.device = device
        self.graph = torch.fx.Graph()
        self.root = torch.nn.Module()
        self.env: dict[Any, Any] = {}
        self.input_types: list[MlirTensorType] = []
        self.output_types: list[MlirTensorType | None] = []
        self._n_consts = 0
        self._resource_nodes: dict[str, torch.fx.Node] = {}

    # ------------------------------------------------------------------ driver
    def run(self) -> torch.fx.GraphModule:
        """Import the function body; returns a GraphModule whose output is a tuple."""
        block = self.func_op.regions[0].blocks[0]
        for i, arg in enumerate(block.arguments):
            ttype = self._tensor_type(arg.type, "func.func", str(self.func_op.location))
            if ttype is None:
                raise MlirOpError("func.func", str(self.func_op.location),
                                  f"argument {i} has type {arg.type}; only tensor arguments are supported")
            node = self.graph.placeholder(f"arg{i}")
            node.meta["mlir_type"] = ttype
            self.input_types.append(ttype)
            self.env[arg] = node
        for op in block.operations:
            self._import_op(op.operation)
        gm = torch.fx.GraphModule(self.root, self.graph)
        gm.graph.lint()
        return gm

    # ------------------------------------------------------------------ ops
    def _import_op(self, op: Any) -> None:
        name = op.name
        loc = str(op.location)
        if name in IGNORED_OPS:
            return
        if name in NON_VALUE_OPS:
            raise MlirOpError(name, loc, f"{NON_VALUE_OPS[name]} are not supported; export the module "
                              "with value-semantic tensors (export_and_import(..., output_type='torch'))")
        if name == "func.return":
            outs = [self._value(v) for v in op.operands]
            self.output_types = [self._tensor_type(v.type, name, loc) for v in op.operands]
            self.graph.output(tuple(outs))
            return
        if name in IDENTITY_OPS:
            self._bind(op, [self._value(op.operands[0])])
            return
        handler = _SPECIAL.get(name)
        if handler is not None:
            self._bind(op, handler(self, op))
            return
        if name == "torch.operator":
            target = str(op.attributes["name"]).strip('"')
            self._import_aten(op, target, f"torch.operator \"{target}\"")
            return
        if name.startswith(("torch.aten.", "torch.prims.")):
            qualified = name[len("torch."):]
            self._import_aten(op, VALUE_SEMANTIC_ALIASES.get(qualified, qualified), name)
            return
        raise MlirOpError(name, loc, "not an op the tilewright MLIR importer knows "
                          "(expected torch-dialect aten/prims/prim/constant ops)")

    def _import_aten(self, op: Any, qualified: str, shown: str) -> None:
        loc = str(op.location)
        operands = list(op.operands)
        results = list(op.results)
        target = resolve_overload(qualified, len(operands), len(results))
        if target is None:
            raise MlirOpError(shown, loc, f"no torch operator matches it ({len(operands)} operands, "
                              f"{len(results)} results); it has no torch equivalent to call")
        if target._schema.is_mutable:
            raise MlirOpError(shown, loc, "mutating ops are not supported on value-semantic tensors")
        values = [self._value(v) for v in operands]
        try:
            args, kwargs = schema_arguments(target, values)
        except (KeyError, ValueError) as exc:
            raise MlirOpError(shown, loc, str(exc)) from exc
        result_types = [self._tensor_type(r.type, shown, loc) for r in results]
        tensor_result = any(t is not None for t in result_types) or any(
            "vtensor" in str(r.type) for r in results)
        if not tensor_result and not _has_node((args, kwargs)):
            # scalar arithmetic on constants (aten.add.int, aten.Int.float, ...): fold it now
            try:
                folded = target(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - report which op failed
                raise MlirOpError(shown, loc, f"constant folding failed: {exc}") from exc
            self._bind(op, list(folded) if len(results) > 1 else [folded])
            return
        node = self.graph.call_function(target, args, kwargs)
        self._annotate(node, shown, loc, result_types[0] if len(results) == 1 else None)
        if len(results) == 1:
            self._bind(op, [node])
            return
        outs = []
        for i, rtype in enumerate(result_types):
            item = self.graph.call_function(operator.getitem, (node, i))
            self._annotate(item, shown, loc, rtype)
            outs.append(item)
        self._bind(op, outs)

    # ------------------------------------------------------------------ helpers
    def _bind(self, op: Any, values: list[Any]) -> None:
        results = list(op.results)
        if len(values) != len(results):
            raise MlirOpError(op.name, str(op.location),
                              f"expected {len(results)} results, importer produced {len(values)}")
        for res, val in zip(results, values):
            self.env[res] = val

    def _value(self, v: Any) -> Any:
        try:
            return self.env[v]
        except KeyError:
            raise MlirOpError(v.owner.name if hasattr(v.owner, "name") else "?", str(v.location),
                              "operand defined outside the function body") from None

    @staticmethod
    def _annotate(node: torch.fx.Node, op_name: str, loc: str, ttype: MlirTensorType | None) -> None:
        node.meta["mlir_op"] = op_name
        node.meta["mlir_loc"] = loc
        if ttype is not None:
            node.meta["mlir_type"] = ttype

    @staticmethod
    def _tensor_type(mlir_type: Any, op_name: str, loc: str) -> MlirTensorType | None:
        try:
            return parse_tensor_type(str(mlir_type))
        except ValueError as exc:
            raise MlirOpError(op_name, loc, str(exc)) from exc

    def _constant_node(self, tensor: torch.Tensor, op: Any, key: str | None = None) -> torch.fx.Node:
        if key is not None and key in self._resource_nodes:
            return self._resource_nodes[key]
        name = f"_mlir_const{self._n_consts}"
        self._n_consts += 1
        self.root.register_buffer(name, tensor)
        node = self.graph.get_attr(name)
        self._annotate(node, op.name, str(op.location), self._tensor_type(op.results[0].type, op.name,
                                                                          str(op.location)))
        if key is not None:
            self._resource_nodes[key] = node
        return node

    def blobs(self) -> dict[str, bytes]:
        """The module's dense resource blobs, parsed once on first use."""
        if self._blobs is None:
            self._blobs = parse_resource_blobs(self._resource_text())
        return self._blobs


def _has_node(tree: Any) -> bool:
    found = False

    def visit(x: Any) -> Any:
        nonlocal found
        found = found or isinstance(x, torch.fx.Node)
        return x

    torch.fx.node.map_aggregate(tree, visit)
    return found


# ---------------------------------------------------------------------- special ops
def _attr_value(attr: Any) -> Any:
    if hasattr(attr, "value"):
        return attr.value
    text = str(attr)
    return text.strip('"')


def _constant(imp: FuncImporter, op: Any) -> list[Any]:
    kind = op.name.rsplit(".", 1)[1]
    if kind == "none":
        return [None]
    value = _attr_value(op.attributes["value"])
    if kind == "device":
        return [str(imp.device) if imp.device is not None else str(value)]
    if kind == "bool":
        return [bool(value)]
    if kind == "int":
        return [int(value)]
    return [value]


def _literal(imp: FuncImporter, op: Any) -> list[Any]:
    loc = str(op.location)
    ttype = imp._tensor_type(op.results[0].type, op.name, loc)
    if ttype is None or not ttype.is_static or ttype.dtype is None:
        raise MlirOpError(op.name, loc, f"literal of type {op.results[0].type} must be static")
    attr = op.attributes["value"]
    text = str(attr)
    shape = tuple(int(d) for d in ttype.shape)  # type: ignore[union-attr, arg-type]
    match = _RESOURCE_REF_RE.match(text)
    if match is not None:
        key = match.group(1).strip('"')
        blob = imp.blobs().get(key)
        if blob is None:
            raise MlirOpError(op.name, loc, f"dense_resource '{key}' has no blob in the module")
        tensor = torch.frombuffer(bytearray(blob), dtype=ttype.dtype) if blob else torch.empty(0, dtype=ttype.dtype)
        if tensor.numel() != int(np.prod(shape)):
            raise MlirOpError(op.name, loc, f"dense_resource '{key}' holds {tensor.numel()} elements, "
                              f"type needs {int(np.prod(shape))}")
        return [imp._constant_node(tensor.reshape(shape).clone(), op, key)]
    if not text.startswith("dense<"):
        raise MlirOpError(op.name, loc, f"unsupported literal attribute {text[:60]}")
    try:
        if attr.is_splat:
            value = _attr_value(attr.get_splat_value())
            if ttype.dtype == torch.bool:
                value = bool(value)
            tensor = torch.full(shape, value, dtype=ttype.dtype)
        else:
            array = np.array(attr)
            tensor = torch.from_numpy(array.copy()).reshape(shape).to(ttype.dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise MlirOpError(op.name, loc, f"cannot read dense constant: {exc}") from exc
    return [imp._constant_node(tensor, op)]


def _list_construct(imp: FuncImporter, op: Any) -> list[Any]:
    return [[imp._value(v) for v in op.operands]]


def _tuple_construct(imp: FuncImporter, op: Any) -> list[Any]:
    return [tuple(imp._value(v) for v in op.operands)]


def _unpack(imp: FuncImporter, op: Any) -> list[Any]:
    seq = imp._value(op.operands[0])
    n = len(list(op.results))
    if isinstance(seq, (list, tuple)):
        return list(seq)
    outs = []
    for i, res in enumerate(op.results):
        item = imp.graph.call_function(operator.getitem, (seq, i))
        imp._annotate(item, op.name, str(op.location), imp._tensor_type(res.type, op.name, str(op.location)))
        outs.append(item)
    assert len(outs) == n
    return outs


def _tuple_index(imp: FuncImporter, op: Any) -> list[Any]:
    seq = imp._value(op.operands[0])
    index = imp._value(op.operands[1])
    if isinstance(seq, (list, tuple)) and isinstance(index, int):
        return [seq[index]]
    return [imp.graph.call_function(operator.getitem, (seq, index))]


def _size_int(imp: FuncImporter, op: Any) -> list[Any]:
    loc = str(op.location)
    ttype = imp._tensor_type(op.operands[0].type, op.name, loc)
    dim = imp._value(op.operands[1])
    if ttype is not None and ttype.shape is not None and isinstance(dim, int):
        size = ttype.shape[dim]
        if size is not None:
            return [size]
    node = imp.graph.call_function(torch.ops.aten.sym_size.int, (imp._value(op.operands[0]), dim))
    imp._annotate(node, op.name, loc, None)
    return [node]


def _dim(imp: FuncImporter, op: Any) -> list[Any]:
    ttype = imp._tensor_type(op.operands[0].type, op.name, str(op.location))
    if ttype is None or ttype.shape is None:
        node = imp.graph.call_function(torch.ops.aten.dim.default, (imp._value(op.operands[0]),))
        return [node]
    return [len(ttype.shape)]


def _prim_dtype(imp: FuncImporter, op: Any) -> list[Any]:
    ttype = imp._tensor_type(op.operands[0].type, op.name, str(op.location))
    if ttype is None or ttype.dtype is None:
        raise MlirOpError(op.name, str(op.location), "dtype of an unranked/unknown tensor")
    return [DTYPE_TO_CODE[ttype.dtype]]


def _prim_device(imp: FuncImporter, op: Any) -> list[Any]:
    return [str(imp.device) if imp.device is not None else "cpu"]


def _num_to_tensor(imp: FuncImporter, op: Any) -> list[Any]:
    loc = str(op.location)
    ttype = imp._tensor_type(op.results[0].type, op.name, loc)
    dtype = ttype.dtype if ttype is not None else None
    node = imp.graph.call_function(torch.ops.aten.scalar_tensor.default, (imp._value(op.operands[0]),),
                                   {"dtype": dtype})
    imp._annotate(node, op.name, loc, ttype)
    return [node]


_SPECIAL: dict[str, Callable[[FuncImporter, Any], list[Any]]] = {
    "torch.constant.int": _constant,
    "torch.constant.float": _constant,
    "torch.constant.bool": _constant,
    "torch.constant.str": _constant,
    "torch.constant.none": _constant,
    "torch.constant.device": _constant,
    "torch.constant.number": _constant,
    "torch.vtensor.literal": _literal,
    "torch.prim.ListConstruct": _list_construct,
    "torch.prim.TupleConstruct": _tuple_construct,
    "torch.prim.ListUnpack": _unpack,
    "torch.prim.TupleUnpack": _unpack,
    "torch.prim.TupleIndex": _tuple_index,
    "torch.aten.size.int": _size_int,
    "torch.aten.dim": _dim,
    "torch.prim.dtype": _prim_dtype,
    "torch.prim.device": _prim_device,
    "torch.prim.NumToTensor.Scalar": _num_to_tensor,
}
