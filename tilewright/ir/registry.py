"""The one op registry: every op tilewright knows, with its kind, reference and lowering facts.

Each :class:`OpDef` gives
- ``kind``: how the op is lowered (``pointwise``, ``reduction``, ``view``, ``matmul``,
  ``template`` for hand-written kernels, ``extern`` for ATen calls);
- the reference implementation: always the torch op the node came from (``node.target``),
  so the shape/dtype rule is torch's own meta function and verification compares against it;
- ``scalar``: for pointwise ops, a function building the Triton expression from operand code;
- ``flops``: FLOPs per output element (pointwise/reduction) or a function of the node.

Everything else (fusion, codegen, verification, explain) reads this table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

aten = torch.ops.aten

#: scalar body: (operand code strings, kwargs) -> Triton expression
ScalarBody = Callable[[list[str], dict[str, Any]], str]


@dataclass(frozen=True)
class OpDef:
    """Registry entry for one op (keyed by ATen packet name like ``aten.add``)."""

    name: str
    kind: str
    scalar: ScalarBody | None = None
    #: how operands are converted before the body: "out" (to the output's compute dtype),
    #: "promote" (to the promoted compute dtype of the operands), "none".
    cast: str = "out"
    flops_per_element: float = 1.0
    #: reduction combine kind ("sum", "max", "min", "prod") for reductions
    combine: str | None = None
    #: argument positions that are tensors the op reads (None = every tensor argument)
    extra: dict[str, Any] = field(default_factory=dict)


REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    """Add ``op`` to the registry (one entry per name)."""
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name} registered twice")
    REGISTRY[op.name] = op
    return op


def _pw(name: str, body: ScalarBody, cast: str = "out", flops: float = 1.0) -> None:
    register(OpDef(name, "pointwise", scalar=body, cast=cast, flops_per_element=flops))


def nan_max(a: str, b: str) -> str:
    """``max(a, b)`` that returns NaN when either is NaN, as torch does (``tl.maximum`` alone
    drops NaN on GPUs and in the interpreter)."""
    return f"tl.maximum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)"


def nan_min(a: str, b: str) -> str:
    """``min(a, b)`` that returns NaN when either is NaN, as torch does."""
    return f"tl.minimum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)"


def _alpha(a: list[str], k: dict[str, Any]) -> str:
    alpha = k.get("alpha", 1)
    return a[1] if alpha == 1 else f"({alpha!r} * {a[1]})"


# --- pointwise arithmetic ----------------------------------------------------------------
_pw("aten.add", lambda a, k: f"({a[0]} + {_alpha(a, k)})")
_pw("aten.sub", lambda a, k: f"({a[0]} - {_alpha(a, k)})")
_pw("aten.rsub", lambda a, k: f"({_alpha(a, k)} - {a[0]})")
_pw("aten.mul", lambda a, k: f"({a[0]} * {a[1]})")


def _div(a: list[str], k: dict[str, Any]) -> str:
    mode = k.get("rounding_mode")
    if mode is None:
        return f"({a[0]} / {a[1]})"
    if mode == "floor":
        return f"tl.floor({a[0]} / {a[1]})"
    if mode == "trunc":
        q = f"({a[0]} / {a[1]})"
        return f"tl.where({q} < 0, tl.ceil({q}), tl.floor({q}))"
    raise NotImplementedError(f"div rounding_mode={mode}")


_pw("aten.div", _div)
_pw("aten.true_divide", lambda a, k: f"({a[0]} / {a[1]})")
_pw("aten.neg", lambda a, k: f"(-{a[0]})")
_pw("aten.abs", lambda a, k: f"tl.abs({a[0]})")
_pw("aten.exp", lambda a, k: f"tl.exp({a[0]})", flops=4)
_pw("aten.exp2", lambda a, k: f"tl.exp2({a[0]})", flops=4)
_pw("aten.expm1", lambda a, k: f"(tl.exp({a[0]}) - 1.0)", flops=4)
_pw("aten.log", lambda a, k: f"tl.log({a[0]})", flops=4)
_pw("aten.log2", lambda a, k: f"tl.log2({a[0]})", flops=4)
_pw("aten.log1p", lambda a, k: f"tl.log(1.0 + {a[0]})", flops=4)
_pw("aten.sqrt", lambda a, k: f"tl.sqrt({a[0]})", flops=4)
_pw("aten.rsqrt", lambda a, k: f"tl.rsqrt({a[0]})", flops=4)
_pw("aten.reciprocal", lambda a, k: f"(1.0 / {a[0]})")
_pw("aten.sin", lambda a, k: f"tl.sin({a[0]})", flops=4)
_pw("aten.cos", lambda a, k: f"tl.cos({a[0]})", flops=4)
_pw("aten.tanh", lambda a, k: f"(2.0 * tl.sigmoid(2.0 * {a[0]}) - 1.0)", flops=6)
_pw("aten.sigmoid", lambda a, k: f"tl.sigmoid({a[0]})", flops=4)
_pw("aten.relu", lambda a, k: nan_max(a[0], "0.0"))
_pw("aten.silu", lambda a, k: f"({a[0]} * tl.sigmoid({a[0]}))", flops=5)
_pw("aten.erf", lambda a, k: f"tl.erf({a[0]})", flops=8)
_pw("aten.floor", lambda a, k: f"tl.floor({a[0]})")
_pw("aten.ceil", lambda a, k: f"tl.ceil({a[0]})")
_pw("aten.round", lambda a, k: (f"tl.where((tl.floor({a[0]}) + 0.5 == {a[0]}) & "
                                f"(tl.floor({a[0]} * 0.5) * 2.0 == tl.floor({a[0]})), tl.floor({a[0]}), "
                                f"tl.floor({a[0]} + 0.5))"))  # round half to even, like torch
_pw("aten.trunc", lambda a, k: f"tl.where({a[0]} < 0, tl.ceil({a[0]}), tl.floor({a[0]}))")
_pw("aten.sign", lambda a, k: f"tl.where({a[0]} > 0, 1.0, tl.where({a[0]} < 0, -1.0, 0.0))")


def _gelu(a: list[str], k: dict[str, Any]) -> str:
    x = a[0]
    if k.get("approximate", "none") == "tanh":
        inner = f"0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})"
        return f"(0.5 * {x} * (1.0 + (2.0 * tl.sigmoid(2.0 * ({inner})) - 1.0)))"
    return f"(0.5 * {x} * (1.0 + tl.erf({x} * 0.7071067811865476)))"


register(OpDef("aten.gelu", "pointwise", scalar=_gelu, flops_per_element=10))


def _pow(a: list[str], k: dict[str, Any]) -> str:
    base, exp = a[0], a[1]
    try:
        e = float(exp)
    except ValueError:
        return f"tl.exp({exp} * tl.log({base}))" if not base.replace(".", "").isdigit() else f"tl.exp({exp} * {math.log(float(base))!r})"
    if e == 2.0:
        return f"({base} * {base})"
    if e == 3.0:
        return f"({base} * {base} * {base})"
    if e == 0.5:
        return f"tl.sqrt({base})"
    if e == -0.5:
        return f"tl.rsqrt({base})"
    if e == 1.0:
        return base
    if e == -1.0:
        return f"(1.0 / {base})"
    if e == float(int(e)) and abs(e) <= 8:
        n = int(abs(e))
        prod = " * ".join([base] * n)
        return f"(1.0 / ({prod}))" if e < 0 else f"({prod})"
    # general case: sign-correct only for positive bases, as x**y is for non-integer y
    return f"tl.exp({e!r} * tl.log({base}))"


register(OpDef("aten.pow", "pointwise", scalar=_pow, flops_per_element=4))
_pw("aten.maximum", lambda a, k: nan_max(a[0], a[1]))
_pw("aten.minimum", lambda a, k: nan_min(a[0], a[1]))


def _clamp(a: list[str], k: dict[str, Any]) -> str:
    x = a[0]
    lo = a[1] if len(a) > 1 else k.get("min")
    hi = a[2] if len(a) > 2 else k.get("max")
    if lo is not None and lo != "None":
        x = nan_max(x, lo)
    if hi is not None and hi != "None":
        x = nan_min(x, hi)
    return x


_pw("aten.clamp", _clamp)
_pw("aten.clamp_min", lambda a, k: nan_max(a[0], a[1]))
_pw("aten.clamp_max", lambda a, k: nan_min(a[0], a[1]))
_pw("aten.hardtanh", lambda a, k: nan_min(nan_max(a[0], a[1] if len(a) > 1 else "-1.0"), a[2] if len(a) > 2 else "1.0"))
_pw("aten.leaky_relu", lambda a, k: f"tl.where({a[0]} > 0, {a[0]}, {a[0]} * {a[1] if len(a) > 1 else 0.01})")

# --- comparisons and logic -----------------------------------------------------------------
for _name, _sym in [("eq", "=="), ("ne", "!="), ("lt", "<"), ("le", "<="), ("gt", ">"), ("ge", ">=")]:
    _pw(f"aten.{_name}", (lambda s: lambda a, k: f"({a[0]} {s} {a[1]})")(_sym), cast="promote")
_pw("aten.logical_not", lambda a, k: f"({a[0]} == 0)", cast="none")
_pw("aten.logical_and", lambda a, k: f"(({a[0]} != 0) & ({a[1]} != 0))", cast="none")
_pw("aten.logical_or", lambda a, k: f"(({a[0]} != 0) | ({a[1]} != 0))", cast="none")
_pw("aten.bitwise_not", lambda a, k: f"(~{a[0]})", cast="out")
_pw("aten.bitwise_and", lambda a, k: f"({a[0]} & {a[1]})", cast="out")
_pw("aten.bitwise_or", lambda a, k: f"({a[0]} | {a[1]})", cast="out")
_pw("aten.isnan", lambda a, k: f"({a[0]} != {a[0]})", cast="none")
_pw("aten.where", lambda a, k: f"tl.where({a[0]} != 0, {a[1]}, {a[2]})", cast="where")
_pw("aten.masked_fill", lambda a, k: f"tl.where({a[1]} != 0, {a[2]}, {a[0]})", cast="masked_fill")

# --- copies and casts ----------------------------------------------------------------------
_pw("aten._to_copy", lambda a, k: a[0], flops=0)
_pw("aten.clone", lambda a, k: a[0], flops=0)
_pw("aten.lift_fresh_copy", lambda a, k: a[0], flops=0)
_pw("aten.copy", lambda a, k: a[1], flops=0)
# in-place copy into a graph input (functionalised buffer mutations, e.g. batch-norm running stats):
# the kernel writes straight into the input's memory
register(OpDef("aten.copy_", "pointwise", scalar=lambda a, k: a[1], flops_per_element=0, extra={"inplace": True}))
_pw("prims.convert_element_type", lambda a, k: a[0], flops=0)

# --- generators (no tensor inputs; value from the index) ------------------------------------
register(OpDef("aten.full", "pointwise", scalar=lambda a, k: a[1], cast="none", flops_per_element=0,
               extra={"generator": True}))
register(OpDef("aten.scalar_tensor", "pointwise", scalar=lambda a, k: a[0], cast="none", flops_per_element=0,
               extra={"generator": True}))
register(OpDef("aten.arange", "pointwise", scalar=None, cast="none", flops_per_element=0,
               extra={"generator": True, "iota": True}))
register(OpDef("prims.iota", "pointwise", scalar=None, cast="none", flops_per_element=0,
               extra={"generator": True, "iota": True}))

# --- gathers (indirect loads) -------------------------------------------------------------
register(OpDef("aten.embedding", "pointwise", scalar=None, cast="none", flops_per_element=0,
               extra={"gather": True}))
register(OpDef("aten.cat", "pointwise", scalar=None, cast="none", flops_per_element=0,
               extra={"concat": True}))
for _g in ("gather", "index_select", "slice_scatter", "select_scatter", "index", "constant_pad_nd", "scatter"):
    register(OpDef(f"aten.{_g}", "pointwise", scalar=None, cast="none", flops_per_element=0, extra={"indexing": _g}))

# --- randomness: dropout keep-masks from (seed, element index) ------------------------------
register(OpDef("tilewright.dropout_mask", "pointwise", scalar=None, cast="none", flops_per_element=8,
               extra={"random_mask": True}))
register(OpDef("tilewright.seed", "extern"))

# --- sliding windows (pooling): a small unrolled reduction per output element -------------
register(OpDef("aten.max_pool2d_with_indices", "pointwise", scalar=None, cast="none", flops_per_element=9,
               extra={"window": "max"}))
register(OpDef("aten.max_pool2d_with_indices_backward", "pointwise", scalar=None, cast="none",
               flops_per_element=9, extra={"window": "max_backward"}))
register(OpDef("aten.avg_pool2d", "pointwise", scalar=None, cast="none", flops_per_element=9,
               extra={"window": "avg"}))

# --- scatters: copy + indexed store / atomic add -----------------------------------------
register(OpDef("aten.index_put", "scatter", flops_per_element=1))

# --- reductions ----------------------------------------------------------------------------
register(OpDef("aten.sum", "reduction", combine="sum"))
register(OpDef("aten.mean", "reduction", combine="sum", extra={"mean": True}))
register(OpDef("aten.amax", "reduction", combine="max"))
register(OpDef("aten.amin", "reduction", combine="min"))
register(OpDef("aten.prod", "reduction", combine="prod"))
register(OpDef("aten.any", "reduction", combine="max"))
register(OpDef("aten.all", "reduction", combine="min"))

# --- views (index transforms, or aliases of materialised buffers) -----------------------------
for _v in ["view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "unsqueeze",
           "squeeze", "slice", "select", "alias", "detach", "split", "split_with_sizes", "unbind",
           "as_strided", "view_as", "expand_as", "numpy_T", "diagonal", "unfold"]:
    register(OpDef(f"aten.{_v}", "view", flops_per_element=0))

# --- convolutions: implicit-GEMM / direct templates with fused epilogues ---------------------
register(OpDef("aten.convolution", "conv"))
register(OpDef("aten.convolution_backward", "template"))

# --- matmul templates ----------------------------------------------------------------------
register(OpDef("aten.mm", "matmul"))
register(OpDef("aten.bmm", "matmul"))
register(OpDef("aten.addmm", "matmul"))
register(OpDef("aten.baddbmm", "matmul"))

#: ops that may be removed when unused (pure); anything random or mutating is kept
IMPURE_OPS = {"tilewright.seed", "aten.copy_", "aten.rand", "aten.randn", "aten.rand_like", "aten.randn_like", "aten.bernoulli",
              "aten.native_dropout", "aten.randint", "aten.normal", "aten.uniform", "aten.randperm",
              "aten.index_put_", "aten.set_", "aten.resize_", "aten._assert_async", "aten._assert_scalar",
              "aten.empty", "aten.empty_strided", "aten.empty_like"}


def packet_name(target: Any) -> str:
    """``aten.add`` for ``torch.ops.aten.add.Tensor`` (and any callable's qualified name)."""
    if isinstance(target, torch._ops.OpOverload):
        ns = target.namespace
        return f"{ns}.{target._schema.name.split('::')[-1]}"
    if isinstance(target, torch._ops.OpOverloadPacket):
        return f"{target._qualified_op_name.replace('::', '.')}"
    return getattr(target, "__qualname__", getattr(target, "__name__", str(target)))


def overload_name(target: Any) -> str:
    """``aten.add.Tensor`` for ``torch.ops.aten.add.Tensor``."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{packet_name(target)}.{target._overloadname}"
    return packet_name(target)


_EXTERN = OpDef("extern", "extern", flops_per_element=0)
_TEMPLATE = OpDef("template", "template", flops_per_element=0)


def lookup(target: Any) -> OpDef:
    """The registry entry for a torch op; ops in the ``tilewright`` namespace are templates,
    anything unknown is an extern ATen call."""
    name = packet_name(target)
    op = REGISTRY.get(name)
    if op is not None:
        return op
    if name.startswith("tilewright."):
        return _TEMPLATE
    return _EXTERN


def is_impure(target: Any) -> bool:
    """True for ops with side effects or randomness (never removed or merged)."""
    if not isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return True  # a higher-order op or opaque callable (e.g. with_effects): assume effects
    name = packet_name(target)
    if name in IMPURE_OPS or name.endswith("_"):
        return True
    if isinstance(target, torch._ops.OpOverload):
        if target._schema.is_mutable:
            return True
        if torch.Tag.nondeterministic_seeded in getattr(target, "tags", ()):
            return True
    return False


def schema_argument(node_target: Any, args: tuple, kwargs: dict, name: str, default: Any = None) -> Any:
    """The value of the argument called ``name`` in a call of an ATen op (positional or keyword)."""
    if isinstance(node_target, torch._ops.OpOverload):
        names = [a.name for a in node_target._schema.arguments]
        if name in names:
            i = names.index(name)
            if i < len(args):
                return args[i]
    return kwargs.get(name, default)


def reduction_dims(node_target: Any, args: tuple, kwargs: dict, rank: int) -> list[int]:
    """Sorted, non-negative reduced dimensions of a reduction call (every dim when none given)."""
    dims = schema_argument(node_target, args, kwargs, "dim")
    if rank == 0:  # a 0-d tensor: dim 0 / -1 name the tensor itself, nothing is reduced
        return []
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return sorted({d + rank if d < 0 else d for d in dims})
