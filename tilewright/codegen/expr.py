"""Basic values of kernel code generation: emitted expressions, scopes, literals and casts."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..ir.types import triton_dtype


class CodegenError(RuntimeError):
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


def cast_code(expr: Expr, dtype: torch.dtype) -> str:
    """Code converting ``expr`` to ``dtype`` (no-op when equal)."""
    if expr.dtype == dtype:
        return expr.code
    if dtype == torch.bool:
        return f"({expr.code} != 0)"
    return f"{expr.code}.to({triton_dtype(dtype)})"


@dataclass
class Scope:
    """Where emitted lines go and the memo that is valid there."""

    lines: list[str]
    memo: dict[Any, Expr] = field(default_factory=dict)
