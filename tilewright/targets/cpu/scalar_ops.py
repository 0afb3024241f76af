"""C++ scalar bodies of the pointwise ops the CPU target generates, and the C++ types it uses.

Each body takes the operand expressions (already converted to the op's operand type) and the
node's kwargs and returns a C++ expression. Semantics follow torch: NaN propagates through
``maximum``/``minimum``/``clamp``/``relu``, ``round`` rounds half to even, integer ``pow``
stays integral. Ops missing here are not generated (the node stays an ATen call, reported).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

#: torch dtype -> C++ element type (half types are not generated yet: they stay ATen calls)
CPP_TYPES: dict[torch.dtype, str] = {
    torch.float32: "float", torch.float64: "double", torch.int64: "int64_t", torch.int32: "int32_t",
    torch.int16: "int16_t", torch.int8: "int8_t", torch.uint8: "uint8_t", torch.bool: "bool",
}

#: helpers every kernel library starts with
PRELUDE = r"""#include <cmath>
#include <cstdint>
#include <limits>

template <class T> static inline T tw_max(T a, T b) { return (a != a) ? a : ((b != b) ? b : (a > b ? a : b)); }
template <class T> static inline T tw_min(T a, T b) { return (a != a) ? a : ((b != b) ? b : (a < b ? a : b)); }
template <class T> static inline T tw_sigmoid(T x) { return T(1) / (T(1) + std::exp(-x)); }
template <class T> static inline T tw_sign(T x) { return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0)); }
static inline int64_t tw_floordiv(int64_t a, int64_t b) { int64_t q = a / b; return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q; }
"""

Body = Callable[[list[str], dict[str, Any], str], str]


def literal(value: Any) -> str:
    """A C++ literal for a Python scalar (inf and NaN included)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"INT64_C({value})"
    if isinstance(value, float):
        if math.isnan(value):
            return "std::numeric_limits<double>::quiet_NaN()"
        if math.isinf(value):
            return ("" if value > 0 else "-") + "std::numeric_limits<double>::infinity()"
        return repr(value)
    raise TypeError(f"no C++ literal for {type(value).__name__} {value!r}")


def _alpha(a: list[str], k: dict[str, Any], t: str) -> str:
    alpha = k.get("alpha", 1)
    return a[1] if alpha == 1 else f"(({t}){literal(alpha)} * {a[1]})"


def _div(a: list[str], k: dict[str, Any], t: str) -> str:
    mode = k.get("rounding_mode")
    if mode is None:
        return f"({a[0]} / {a[1]})"
    if t in ("float", "double"):
        return f"std::{'floor' if mode == 'floor' else 'trunc'}({a[0]} / {a[1]})"
    return f"tw_floordiv({a[0]}, {a[1]})" if mode == "floor" else f"({a[0]} / {a[1]})"


def _gelu(a: list[str], k: dict[str, Any], t: str) -> str:
    x = a[0]
    if k.get("approximate", "none") == "tanh":
        return f"(({t})0.5 * {x} * (({t})1 + std::tanh(({t})0.7978845608028654 * ({x} + ({t})0.044715 * {x} * {x} * {x}))))"
    return f"(({t})0.5 * {x} * (({t})1 + std::erf({x} * ({t})0.7071067811865476)))"


def _pow(a: list[str], k: dict[str, Any], t: str) -> str:
    if t in ("float", "double"):
        return f"std::pow({a[0]}, {a[1]})"
    return f"({t})std::llround(std::pow((double){a[0]}, (double){a[1]}))"


def _clamp(a: list[str], k: dict[str, Any], t: str) -> str:
    x = a[0]
    lo = a[1] if len(a) > 1 else None
    hi = a[2] if len(a) > 2 else None
    if lo not in (None, "None"):
        x = f"tw_max<{t}>({x}, {lo})"
    if hi not in (None, "None"):
        x = f"tw_min<{t}>({x}, {hi})"
    return x


def _unary(fn: str) -> Body:
    return lambda a, k, t: f"{fn}({a[0]})"


BODIES: dict[str, Body] = {
    "aten.add": lambda a, k, t: f"({a[0]} + {_alpha(a, k, t)})",
    "aten.sub": lambda a, k, t: f"({a[0]} - {_alpha(a, k, t)})",
    "aten.rsub": lambda a, k, t: f"({_alpha(a, k, t)} - {a[0]})",
    "aten.mul": lambda a, k, t: f"({a[0]} * {a[1]})",
    "aten.div": _div,
    "aten.true_divide": lambda a, k, t: f"({a[0]} / {a[1]})",
    "aten.neg": lambda a, k, t: f"(-{a[0]})",
    "aten.abs": _unary("std::abs"),
    "aten.exp": _unary("std::exp"),
    "aten.exp2": _unary("std::exp2"),
    "aten.expm1": _unary("std::expm1"),
    "aten.log": _unary("std::log"),
    "aten.log2": _unary("std::log2"),
    "aten.log1p": _unary("std::log1p"),
    "aten.sqrt": _unary("std::sqrt"),
    "aten.rsqrt": lambda a, k, t: f"(({t})1 / std::sqrt({a[0]}))",
    "aten.reciprocal": lambda a, k, t: f"(({t})1 / {a[0]})",
    "aten.sin": _unary("std::sin"),
    "aten.cos": _unary("std::cos"),
    "aten.tanh": _unary("std::tanh"),
    "aten.sigmoid": lambda a, k, t: f"tw_sigmoid<{t}>({a[0]})",
    "aten.relu": lambda a, k, t: f"tw_max<{t}>({a[0]}, ({t})0)",
    "aten.silu": lambda a, k, t: f"({a[0]} * tw_sigmoid<{t}>({a[0]}))",
    "aten.erf": _unary("std::erf"),
    "aten.floor": _unary("std::floor"),
    "aten.ceil": _unary("std::ceil"),
    "aten.round": _unary("std::nearbyint"),
    "aten.trunc": _unary("std::trunc"),
    "aten.sign": lambda a, k, t: f"tw_sign<{t}>({a[0]})",
    "aten.gelu": _gelu,
    "aten.pow": _pow,
    "aten.maximum": lambda a, k, t: f"tw_max<{t}>({a[0]}, {a[1]})",
    "aten.minimum": lambda a, k, t: f"tw_min<{t}>({a[0]}, {a[1]})",
    "aten.clamp": _clamp,
    "aten.clamp_min": lambda a, k, t: f"tw_max<{t}>({a[0]}, {a[1]})",
    "aten.clamp_max": lambda a, k, t: f"tw_min<{t}>({a[0]}, {a[1]})",
    "aten.hardtanh": lambda a, k, t: (f"tw_min<{t}>(tw_max<{t}>({a[0]}, {a[1] if len(a) > 1 else f'({t})-1'}), "
                                      f"{a[2] if len(a) > 2 else f'({t})1'})"),
    "aten.leaky_relu": lambda a, k, t: f"({a[0]} > ({t})0 ? {a[0]} : {a[0]} * {a[1] if len(a) > 1 else f'({t})0.01'})",
    "aten.eq": lambda a, k, t: f"({a[0]} == {a[1]})",
    "aten.ne": lambda a, k, t: f"({a[0]} != {a[1]})",
    "aten.lt": lambda a, k, t: f"({a[0]} < {a[1]})",
    "aten.le": lambda a, k, t: f"({a[0]} <= {a[1]})",
    "aten.gt": lambda a, k, t: f"({a[0]} > {a[1]})",
    "aten.ge": lambda a, k, t: f"({a[0]} >= {a[1]})",
    "aten.logical_not": lambda a, k, t: f"({a[0]} == 0)",
    "aten.logical_and": lambda a, k, t: f"(({a[0]} != 0) && ({a[1]} != 0))",
    "aten.logical_or": lambda a, k, t: f"(({a[0]} != 0) || ({a[1]} != 0))",
    "aten.bitwise_not": lambda a, k, t: "(!" + a[0] + ")" if t == "bool" else f"(~{a[0]})",
    "aten.bitwise_and": lambda a, k, t: f"({a[0]} & {a[1]})",
    "aten.bitwise_or": lambda a, k, t: f"({a[0]} | {a[1]})",
    "aten.isnan": lambda a, k, t: f"({a[0]} != {a[0]})",
    "aten.where": lambda a, k, t: f"(({a[0]}) ? {a[1]} : {a[2]})",
    "aten.masked_fill": lambda a, k, t: f"(({a[1]}) ? {a[2]} : {a[0]})",
    "aten._to_copy": lambda a, k, t: a[0],
    "aten.clone": lambda a, k, t: a[0],
    "aten.lift_fresh_copy": lambda a, k, t: a[0],
    "aten.copy": lambda a, k, t: a[1],
    "prims.convert_element_type": lambda a, k, t: a[0],
}

#: how operands are converted before the body: to the output type, or left as loaded
#: (comparisons convert both sides to their promoted type; where/masked_fill keep the condition)
OPERAND_CAST: dict[str, str] = {
    "aten.eq": "promote", "aten.ne": "promote", "aten.lt": "promote", "aten.le": "promote",
    "aten.gt": "promote", "aten.ge": "promote", "aten.logical_not": "none", "aten.logical_and": "none",
    "aten.logical_or": "none", "aten.isnan": "none", "aten.where": "where", "aten.masked_fill": "masked_fill",
}
