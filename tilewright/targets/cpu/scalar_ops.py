"""C++ scalar bodies of the pointwise ops the CPU target generates, and the C++ types it uses.

Each body takes the operand expressions (already converted to the op's operand type) and the
node's kwargs and returns a C++ expression. Semantics follow torch: NaN propagates through
``maximum``/``minimum``/``clamp``/``relu``, ``round`` rounds half to even, integer ``pow``
stays integral. Ops missing here are not generated (the node stays an ATen call, reported).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch

from .simd import SIMD_PRELUDE

#: torch dtype -> the C++ type values of that dtype are computed in (bfloat16 and float16 compute
#: in float, rounded to their type after every op as eager does)
CPP_TYPES: dict[torch.dtype, str] = {
    torch.float32: "float", torch.float64: "double", torch.int64: "int64_t", torch.int32: "int32_t",
    torch.int16: "int16_t", torch.int8: "int8_t", torch.uint8: "uint8_t", torch.bool: "bool",
    torch.bfloat16: "float", torch.float16: "float",
}
#: torch dtype -> the C++ type of its elements in memory, where it differs from the compute type
_STORAGE_TYPES: dict[torch.dtype, str] = {torch.bfloat16: "uint16_t", torch.float16: "uint16_t"}
#: half types: the C++ helper name stem of their conversions (``tw_bf16_load`` ...)
_HALF = {torch.bfloat16: "bf16", torch.float16: "f16"}


def storage_type(dtype: torch.dtype) -> str:
    """The C++ element type of ``dtype`` in memory."""
    return _STORAGE_TYPES.get(dtype, CPP_TYPES[dtype])


def load_code(dtype: torch.dtype, element: str) -> str:
    """The compute-type value of a loaded element."""
    return f"tw_{_HALF[dtype]}_load({element})" if dtype in _HALF else element


def store_code(dtype: torch.dtype, value: str) -> str:
    """The in-memory element for a computed value."""
    return f"tw_{_HALF[dtype]}_store({value})" if dtype in _HALF else value


def result_code(dtype: torch.dtype, expr: str) -> str:
    """An op's result in its dtype (half-type results are rounded to their type, as eager's are)."""
    t = CPP_TYPES[dtype]
    return f"tw_round_{_HALF[dtype]}(({t})({expr}))" if dtype in _HALF else f"({t})({expr})"

#: helpers every kernel library starts with
PRELUDE = r"""#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

template <class T> static inline T tw_max(T a, T b) { return (a != a) ? a : ((b != b) ? b : (a > b ? a : b)); }
template <class T> static inline T tw_min(T a, T b) { return (a != a) ? a : ((b != b) ? b : (a < b ? a : b)); }
template <class T> static inline T tw_sign(T x) { return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0)); }
static inline float tw_bf16_load(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; std::memcpy(&f, &u, 4); return f; }
static inline uint16_t tw_bf16_store(float f) {  // round to nearest even; NaN stays a quiet NaN
  uint32_t u; std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return f != f ? (uint16_t)0x7fc0 : (uint16_t)rounded;
}
static inline float tw_round_bf16(float f) { return tw_bf16_load(tw_bf16_store(f)); }
// Dropout's keep decision for element `index` of a mask: a splitmix64 hash of (seed, index) as a uniform
// draw in [0, 1) with 24 bits, kept when >= p. A function of (seed, index) only, so every kernel that
// recomputes the mask (forward, backward, any fusion) draws the same one without storing it.
static inline bool tw_dropout_keep(uint64_t seed, uint64_t index, float p) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + index;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}
// IEEE half: F16C's conversions where the compiler targets it, else the same results bit for bit
// (round to nearest even; subnormals; NaN stays NaN, quieted, its top payload bits kept)
#if defined(__F16C__)
#include <immintrin.h>
static inline float tw_f16_load(uint16_t h) { return _cvtsh_ss(h); }
static inline uint16_t tw_f16_store(float f) { return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }
#else
static inline float tw_f16_load(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  uint32_t u;
  if (e == 0x1f) u = sign | 0x7f800000u | (m << 13);
  else if (e != 0) u = sign | ((e + 112u) << 23) | (m << 13);
  else { float f = (float)m * 5.9604644775390625e-8f; std::memcpy(&u, &f, 4); u |= sign; }  // m * 2^-24, exact
  float f; std::memcpy(&f, &u, 4); return f;
}
static inline uint16_t tw_f16_store(float f) {
  uint32_t u; std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
  if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to inf (>= 65520)
  if (a >= 0x38800000u) return (uint16_t)(sign | ((a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13));  // normal
  float m; std::memcpy(&m, &a, 4); m += 0.5f;  // subnormal: the FPU rounds the bits below 2^-24 away
  uint32_t r; std::memcpy(&r, &m, 4); return (uint16_t)(sign | (r - 0x3f000000u));
}
#endif
static inline float tw_round_f16(float f) { return tw_f16_load(tw_f16_store(f)); }
static inline int64_t tw_floordiv(int64_t a, int64_t b) { int64_t q = a / b; return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q; }

// Branch-free float32 math the compiler vectorizes inside `omp simd` loops (libm's expf/logf are
// scalar calls). Cephes-style range reduction and polynomials: exp and log within 2 ulp over
// their whole range, inf/NaN/0 handled like libm; double precision uses libm.
static inline float tw_bits_to_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline int32_t tw_float_to_bits(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }
static inline float tw_exp(float x) {
  const float hi = 88.72283905206835f, lo = -103.972077083991796f;
  // lanes below lo (masked scores are -inf) compute exp(0) and select 0: a subnormal intermediate
  // would take the slow microcoded path for the whole vector
  const bool under = x < lo;
  float xc = x > hi ? hi : (under ? 0.0f : x);
  float n = std::nearbyint(xc * 1.44269504088896341f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  // 2^n in two steps so that n down to -150 (subnormal results) stays exact
  int32_t n1 = (int32_t)n / 2, n2 = (int32_t)n - n1;
  float result = p * tw_bits_to_float((n1 + 127) << 23) * tw_bits_to_float((n2 + 127) << 23);
  result = x > hi ? std::numeric_limits<float>::infinity() : (under ? 0.0f : result);
  return x != x ? x : result;
}
static inline double tw_exp(double x) { return std::exp(x); }
static inline float tw_log(float x) {
  const bool sub = x < 1.17549435e-38f;
  const float xs = sub ? x * 8388608.0f : x;  // subnormals: scale by 2^23 first
  const int32_t bits = tw_float_to_bits(xs);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  float m = tw_bits_to_float((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1 : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  const float fe = (float)e - (sub ? 23.0f : 0.0f);
  y = y + fe * -2.12194440e-4f - 0.5f * z;
  float result = m + y + fe * 0.693359375f;
  result = x == 0.0f ? -std::numeric_limits<float>::infinity() : result;
  result = x < 0.0f ? std::numeric_limits<float>::quiet_NaN() : result;
  result = x == std::numeric_limits<float>::infinity() ? x : result;
  return x != x ? x : result;
}
static inline double tw_log(double x) { return std::log(x); }
template <class T> static inline T tw_sigmoid(T x) { return T(1) / (T(1) + tw_exp(-x)); }
static inline float tw_tanh(float x) {
  // tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|): no cancellation for large |x|,
  // and a polynomial near 0 where 1 - e loses digits
  const float a = std::fabs(x);
  const float e = tw_exp(-2.0f * a);
  const float big = (1.0f - e) / (1.0f + e);
  const float z = x * x;
  const float small = a * (1.0f + z * (-0.333333333f + z * (0.133333333f + z * (-0.0539682540f + z * 0.0218694885f))));
  const float r = a < 0.125f ? small : big;
  return x != x ? x : std::copysign(r, x);
}
static inline double tw_tanh(double x) { return std::tanh(x); }
static inline float tw_erf(float x) {
  // erf via erfc's rational approximation (Numerical Recipes erfcc, |rel err| < 1.2e-7) away from 0
  const float z = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.5f * z);
  const float poly = -z * z - 1.26551223f + t * (1.00002368f + t * (0.37409196f + t * (0.09678418f +
                     t * (-0.18628806f + t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f +
                     t * (-0.82215223f + t * 0.17087277f))))))));
  const float big = 1.0f - t * tw_exp(poly);
  // near 0 the series (2/sqrt(pi)) (x - x^3/3 + x^5/10 - x^7/42 + x^9/216 - x^11/1320) keeps full precision
  const float s = z * z;
  const float small = z * 1.12837916709551257f * (1.0f + s * (-0.333333333f + s * (0.1f + s * (-0.0238095238f +
                      s * (0.00462962963f + s * -0.000757575758f)))));
  const float r = z < 0.5f ? small : big;
  return x != x ? x : std::copysign(r, x);
}
static inline double tw_erf(double x) { return std::erf(x); }
""" + SIMD_PRELUDE
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
        return f"(({t})0.5 * {x} * (({t})1 + tw_tanh(({t})0.7978845608028654 * ({x} + ({t})0.044715 * {x} * {x} * {x}))))"
    return f"(({t})0.5 * {x} * (({t})1 + tw_erf({x} * ({t})0.7071067811865476)))"


_SCALAR_OPERAND = re.compile(r"^\(\(\w+\)(?:INT64_C\()?(-?[0-9.]+(?:e[-+]?[0-9]+)?)\)?\)$")


def _pow(a: list[str], k: dict[str, Any], t: str) -> str:
    base, match = a[0], _SCALAR_OPERAND.match(a[1])
    if t in ("float", "double") and match is not None:
        e = float(match.group(1))
        special = {0.5: f"std::sqrt({base})", -0.5: f"(({t})1 / std::sqrt({base}))", 1.0: base,
                   -1.0: f"(({t})1 / {base})"}
        if e in special:
            return special[e]
        if e == int(e) and 2 <= abs(e) <= 8:  # repeated multiplication: exact and vectorizes
            prod = " * ".join([base] * int(abs(e)))
            return f"({prod})" if e > 0 else f"(({t})1 / ({prod}))"
    if t in ("float", "double"):
        return f"std::pow({base}, {a[1]})"
    return f"({t})std::llround(std::pow((double){base}, (double){a[1]}))"


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
    # the element index is supplied by the pointwise source (PointwiseSource._node_expr)
    "tilewright.dropout_mask": lambda a, k, t: f"tw_dropout_keep((uint64_t){a[1]}, tw_index, {a[2]})",
    "aten.add": lambda a, k, t: f"({a[0]} + {_alpha(a, k, t)})",
    "aten.sub": lambda a, k, t: f"({a[0]} - {_alpha(a, k, t)})",
    "aten.rsub": lambda a, k, t: f"({_alpha(a, k, t)} - {a[0]})",
    "aten.mul": lambda a, k, t: f"({a[0]} * {a[1]})",
    "aten.div": _div,
    "aten.true_divide": lambda a, k, t: f"({a[0]} / {a[1]})",
    "aten.neg": lambda a, k, t: f"(-{a[0]})",
    "aten.abs": _unary("std::abs"),
    "aten.exp": _unary("tw_exp"),
    "aten.exp2": _unary("std::exp2"),
    "aten.expm1": _unary("std::expm1"),
    "aten.log": _unary("tw_log"),
    "aten.log2": _unary("std::log2"),
    "aten.log1p": _unary("std::log1p"),
    "aten.sqrt": _unary("std::sqrt"),
    "aten.rsqrt": lambda a, k, t: f"(({t})1 / std::sqrt({a[0]}))",
    "aten.reciprocal": lambda a, k, t: f"(({t})1 / {a[0]})",
    "aten.sin": _unary("std::sin"),
    "aten.cos": _unary("std::cos"),
    "aten.tanh": _unary("tw_tanh"),
    "aten.sigmoid": lambda a, k, t: f"tw_sigmoid<{t}>({a[0]})",
    "aten.relu": lambda a, k, t: f"tw_max<{t}>({a[0]}, ({t})0)",
    "aten.silu": lambda a, k, t: f"({a[0]} * tw_sigmoid<{t}>({a[0]}))",
    "aten.erf": _unary("tw_erf"),
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
    "aten.copy_": lambda a, k, t: a[1],
    "prims.convert_element_type": lambda a, k, t: a[0],
}

#: how operands are converted before the body: to the output type, or left as loaded
#: (comparisons convert both sides to their promoted type; where/masked_fill keep the condition)
OPERAND_CAST: dict[str, str] = {
    "aten.eq": "promote", "aten.ne": "promote", "aten.lt": "promote", "aten.le": "promote",
    "aten.gt": "promote", "aten.ge": "promote", "aten.logical_not": "none", "aten.logical_and": "none",
    "aten.logical_or": "none", "aten.isnan": "none", "aten.where": "where", "aten.masked_fill": "masked_fill",
}
