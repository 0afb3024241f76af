"""Tables and helpers that map torch-dialect MLIR onto ATen operators.

The MLIR importer (:mod:`tilewright.frontend.mlir`) walks a ``func.func`` and turns every
``torch.aten.*`` / ``torch.prims.*`` op into a call of the matching ``torch.ops`` overload, so the
graph it builds is the same ATen-level FX graph the FX frontend hands to the compiler. This module
holds the parts that need no MLIR bindings: type parsing, dtype codes, overload resolution by
schema and the conversion of MLIR operand values into schema-typed Python arguments.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

#: MLIR element type (as printed inside ``!torch.vtensor<[...],T>``) -> torch dtype.
ELEMENT_TYPES: dict[str, torch.dtype] = {
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "f32": torch.float32,
    "f64": torch.float64,
    "si8": torch.int8,
    "si16": torch.int16,
    "si32": torch.int32,
    "si64": torch.int64,
    "ui8": torch.uint8,
    "i1": torch.bool,
    "complex<f32>": torch.complex64,
    "complex<f64>": torch.complex128,
    "f8E4M3FN": torch.float8_e4m3fn,
    "f8E5M2": torch.float8_e5m2,
}

#: c10::ScalarType codes as they appear in ``torch.constant.int`` dtype operands.
SCALAR_TYPE_CODES: dict[int, torch.dtype] = {
    0: torch.uint8, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.int64,
    5: torch.float16, 6: torch.float32, 7: torch.float64, 8: torch.complex32,
    9: torch.complex64, 10: torch.complex128, 11: torch.bool, 15: torch.bfloat16,
    23: torch.float8_e5m2, 24: torch.float8_e4m3fn,
}
DTYPE_TO_CODE: dict[torch.dtype, int] = {v: k for k, v in SCALAR_TYPE_CODES.items()}

#: c10::MemoryFormat and c10::Layout codes.
MEMORY_FORMAT_CODES: dict[int, torch.memory_format] = {
    0: torch.contiguous_format, 1: torch.preserve_format,
    2: torch.channels_last, 3: torch.channels_last_3d,
}
LAYOUT_CODES: dict[int, torch.layout] = {0: torch.strided, 1: torch.sparse_coo}

#: torch-mlir op names whose ATen overload is spelled differently.
#: NOTE: the "hacked_twin" variants exist because TorchScript could not type ``Tensor?[]``;
#: they compute exactly what the ATen overload computes.
OVERLOAD_RENAMES: dict[str, str] = {
    "index.Tensor_hacked_twin": "index.Tensor",
    "index_put.hacked_twin": "index_put.default",
    "_index_put_impl.hacked_twin": "_index_put_impl.default",
    "_unsafe_index_put.hacked_twin": "_unsafe_index_put.default",
    "_unsafe_index.Tensor_hacked_twin": "_unsafe_index.Tensor",
}

#: torch-mlir ops imported as a different but equal ATen op (``torch.`` prefix dropped).
#: NOTE: on value-semantic tensors ``aten.view`` means "reshape": torch-mlir turns ``reshape`` and
#: ``_unsafe_view`` into ``view`` even where the input is not contiguous. They are imported as
#: ``reshape``; :mod:`tilewright.frontend.mlir.check` lowers each to ``view`` (contiguous input)
#: or ``clone`` + ``view`` once strides are known, which is what the FX path produces.
VALUE_SEMANTIC_ALIASES: dict[str, str] = {
    "aten.view": "aten.reshape",
    "aten._unsafe_view": "aten.reshape",
    "aten.broadcast_to": "aten.expand",
}

#: torch-dialect ops that carry no computation on value-semantic tensors: result = operand 0.
IDENTITY_OPS: frozenset[str] = frozenset({
    "torch.derefine",
    "torch.tensor_static_info_cast",
    "torch.static_info_cast",
    "torch.prim.unchecked_cast",
})

#: Ops that only state facts (asserts, symbolic-shape bindings); they produce nothing we need.
IGNORED_OPS: frozenset[str] = frozenset({
    "torch.runtime.assert",
    "torch.bind_symbolic_shape",
    "torch.symbolic_int",
})

#: Ops that mean the module is not in value-semantic form; the reason is shown to the user.
NON_VALUE_OPS: dict[str, str] = {
    "torch.copy.to_tensor": "non-value (mutable) tensors",
    "torch.copy.to_vtensor": "non-value (mutable) tensors",
    "torch.overwrite.tensor.contents": "in-place tensor overwrites",
    "torch.tensor.literal": "non-value tensor literals",
    "torch.prim.If": "control flow (torch.prim.If)",
    "torch.prim.Loop": "control flow (torch.prim.Loop)",
    "func.call": "calls between functions (func.call)",
}


class MlirImportError(Exception):
    """A torch-dialect module cannot be imported (malformed text, unsupported form or op)."""


class MlirOpError(MlirImportError):
    """An MLIR op could not be imported; ``str()`` names the op and its location."""

    def __init__(self, op_name: str, location: str, reason: str) -> None:
        self.op_name = op_name
        self.location = location
        self.reason = reason
        super().__init__(f"cannot import '{op_name}' at {location}: {reason}")


@dataclasses.dataclass(frozen=True)
class MlirTensorType:
    """A ``!torch.vtensor`` type: ``shape`` has ``None`` for dynamic dims; ``None`` if unranked."""

    shape: tuple[int | None, ...] | None
    dtype: torch.dtype | None

    @property
    def is_static(self) -> bool:
        """True when the rank and every dimension are known."""
        return self.shape is not None and all(d is not None for d in self.shape)


Shape = tuple[int, ...]


def resolve_shapes(types: Sequence[MlirTensorType], shapes: Sequence[Shape] | None) -> list[Shape] | None:
    """Concrete input shapes from the declared types and the user's shapes; None if unknown."""
    if shapes is None:
        if all(t.is_static for t in types):
            return [tuple(int(d) for d in t.shape) for t in types]  # type: ignore[union-attr, arg-type]
        return None
    if len(shapes) != len(types):
        raise ValueError(f"{len(shapes)} input shapes given, the function takes {len(types)} inputs")
    for i, (ttype, shape) in enumerate(zip(types, shapes)):
        if ttype.shape is None:
            continue
        if len(ttype.shape) != len(shape) or any(
                d is not None and d != s for d, s in zip(ttype.shape, shape)):
            want = "x".join("?" if d is None else str(d) for d in ttype.shape)
            raise ValueError(f"input {i}: shape {'x'.join(map(str, shape))} does not fit declared {want}")
    return [tuple(s) for s in shapes]


_VTENSOR_RE = re.compile(r"^!torch\.(v?tensor)(?:<(?:\[(?P<dims>[^\]]*)\]|\*),(?P<elt>.+)>)?$")


def parse_tensor_type(type_str: str) -> MlirTensorType | None:
    """Parse a printed ``!torch.vtensor<[2,?],f32>`` type; ``None`` if it is not a tensor type.

    Raises:
        ValueError: for a non-value ``!torch.tensor`` or an element type torch cannot hold.
    """
    match = _VTENSOR_RE.match(type_str.strip())
    if match is None:
        return None
    if match.group(1) == "tensor":
        raise ValueError(f"non-value tensor type {type_str}; expected !torch.vtensor")
    dims = match.group("dims")
    shape: tuple[int | None, ...] | None = None
    if dims is not None:
        shape = tuple(None if d.strip() == "?" else int(d) for d in dims.split(",") if d.strip())
    elt = match.group("elt")
    dtype = None
    if elt is not None and elt != "unk":
        if elt not in ELEMENT_TYPES:
            raise ValueError(f"unsupported element type '{elt}' in {type_str}")
        dtype = ELEMENT_TYPES[elt]
    return MlirTensorType(shape, dtype)


def resolve_overload(op_name: str, n_operands: int, n_results: int) -> torch._ops.OpOverload | None:
    """The ``torch.ops`` overload for a torch-dialect op name, or ``None`` if there is none.

    ``op_name`` is ``namespace.name[.overload]`` without the leading ``torch.`` (for example
    ``aten.add.Tensor`` or ``prims.convert_element_type``). The named overload wins when its
    schema takes ``n_operands`` arguments (trailing ones may be left to their defaults) and
    returns ``n_results`` values; otherwise the first other overload of that name that fits.
    """
    op_name = _rename(op_name)
    namespace, _, rest = op_name.partition(".")
    name, _, overload = rest.partition(".")
    try:
        packet = getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None
    if not isinstance(packet, torch._ops.OpOverloadPacket):
        return None
    names = [overload or "default"] + [n for n in packet.overloads() if n != (overload or "default")]
    for candidate in names:
        try:
            op = getattr(packet, candidate)
        except (AttributeError, RuntimeError):
            continue
        schema = op._schema
        fits = len(schema.arguments) >= n_operands and all(
            a.has_default_value() for a in schema.arguments[n_operands:])
        if fits and len(schema.returns) == n_results:
            if candidate != (overload or "default"):
                logger.debug("%s resolved to overload %s by schema", op_name, candidate)
            return op
    return None


def _rename(op_name: str) -> str:
    namespace, _, rest = op_name.partition(".")
    return f"{namespace}.{OVERLOAD_RENAMES.get(rest, rest)}"


def schema_arguments(
    op: torch._ops.OpOverload, values: Sequence[Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split converted operand values into positional args and keyword-only kwargs.

    Integer codes are turned into the enum objects the schema asks for (``ScalarType`` ->
    ``torch.dtype``, ``Layout``, ``MemoryFormat``) and device strings into ``torch.device``.
    """
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for arg, value in zip(op._schema.arguments, values):
        value = _coerce(str(arg.type), value)
        if arg.kwarg_only:
            kwargs[arg.name] = value
        else:
            args.append(value)
    return tuple(args), kwargs


def _coerce(type_str: str, value: Any) -> Any:
    if value is None:
        return None
    base = type_str.removeprefix("Optional[").removesuffix("]")
    if base == "ScalarType" and isinstance(value, int):
        if value not in SCALAR_TYPE_CODES:
            raise ValueError(f"unknown ScalarType code {value}")
        return SCALAR_TYPE_CODES[value]
    if base == "MemoryFormat" and isinstance(value, int):
        return MEMORY_FORMAT_CODES[value]
    if base == "Layout" and isinstance(value, int):
        return LAYOUT_CODES[value]
    if base == "Device" and isinstance(value, str):
        return torch.device(value)
    return value
