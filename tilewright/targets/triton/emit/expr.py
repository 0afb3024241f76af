"""Basic values of kernel code generation: emitted expressions, scopes, literals and casts."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ....errors import BuildError
from ....ir.types import triton_dtype


class CodegenError(BuildError):
    """The group cannot be expressed as one kernel (the fusion pass then keeps it apart)."""


@dataclass
class Expr:
    """An emitted value: its code (a variable or literal), compute dtype and index deps."""

    code: str
    dtype: torch.dtype
    deps: frozenset[str] = frozenset()


def literal(value: Any) -> str:
    """Triton source for a Python scalar."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        if math.isnan(value):
            return 'float("nan")'
        return repr(value)
    if isinstance(value, int):
        return str(value)
    raise CodegenError(f"unsupported scalar argument {value!r}")


def _scalar_dtype(value: Any) -> torch.dtype:
    if isinstance(value, bool):
        return torch.bool
    if isinstance(value, int):
        return torch.int64
    return torch.float32


def _python_number(code: str) -> float | None:
    """The value of ``code`` when it is a plain numeric literal (not a kernel tensor), else None."""
    text = code.strip()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if text in ('float("inf")', 'float("-inf")', 'float("nan")', "float('inf')", "float('-inf')", "float('nan')"):
        return float(text[7:-2])
    try:
        return float(text)
    except ValueError:
        return None


def round_to_bfloat16(code: str) -> str:
    """float32 ``code`` rounded to the nearest bfloat16 value, ties to even (as torch rounds).

    Done on the bits, because Triton's interpreter truncates float32 -> bfloat16 conversions
    (GPUs round to nearest even); NaN is kept as it is, overflow becomes infinity.
    """
    bits = f"{code}.to(tl.int32, bitcast=True)"
    rounded = f"(({bits} + (0x7FFF + (({bits} >> 16) & 1))) & -65536).to(tl.float32, bitcast=True)"
    return f"tl.where({code} != {code}, {code}, {rounded})"


def cast_code(expr: Expr, dtype: torch.dtype) -> str:
    """Code converting ``expr`` to ``dtype`` (no-op when equal).

    Conversions to bfloat16 round to nearest even on every Triton version and in the
    interpreter (see :func:`round_to_bfloat16`).
    """
    if expr.dtype == dtype:
        return expr.code
    if dtype == torch.bool:
        return f"({expr.code} != 0)"
    number = _python_number(expr.code) if not expr.deps else None
    if number is not None:  # a Python literal has no .to(): make a typed scalar tensor
        if dtype == torch.bfloat16:
            number = float(torch.tensor(number, dtype=torch.float32).to(torch.bfloat16).item())
        if dtype.is_floating_point:
            return f"tl.full([], {literal(number)}, {triton_dtype(dtype)})"
        if number != number or abs(number) == float("inf"):
            raise CodegenError(f"{expr.code} has no {dtype} value")
        return f"tl.full([], {int(number)}, {triton_dtype(dtype)})"
    if dtype == torch.bfloat16:
        src = expr.code if expr.dtype == torch.float32 else f"{expr.code}.to(tl.float32)"
        return f"{round_to_bfloat16(src)}.to(tl.bfloat16)"
    return f"{expr.code}.to({triton_dtype(dtype)})"


@dataclass
class Scope:
    """Where emitted lines go and the memo that is valid there."""

    lines: list[str]
    memo: dict[Any, Expr] = field(default_factory=dict)
