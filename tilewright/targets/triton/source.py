"""What every Triton kernel builder produces: the kernel's source and how to launch it.

Shared by the pointwise/reduction, matmul and scatter builders: :class:`KernelSource`, the
outputs a group writes to memory, the module header, the kernel function text, and 64-bit
index promotion for large tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ...ir.graph import Node, Value
from ...schedule.space import Config, ScheduleSpace
from .emit.expr import CodegenError


@dataclass
class KernelSource:
    """Generated source of one kernel and what is needed to launch it."""

    name: str
    kind: str
    source: str
    fn_name: str
    inputs: list[Value]
    outputs: list[Value]
    space: ScheduleSpace
    grid: Callable[[Config], tuple[int, ...]]
    dims: dict[str, int]
    ops: list[str]
    flops: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)


def group_outputs(nodes: list[Node], materialize: set[int], what: str = "group") -> list[Value]:
    """Outputs of the group's nodes that must be written to memory (raises when there are none)."""
    outputs = [o for n in nodes for o in n.outputs if o.id in materialize]
    if not outputs:
        raise CodegenError(f"{what} has no outputs")
    return outputs


INT32_LIMIT = 2**31 - 1


def int64_cast(values: list[Value], numel: int) -> str:
    """``.to(tl.int64)`` when any offset of the kernel may overflow 32-bit indexing."""
    spans = [sum((sz - 1) * abs(st) for sz, st in zip(v.type.shape, v.type.strides)) for v in values]
    return ".to(tl.int64)" if max(spans + [numel]) >= INT32_LIMIT else ""


KERNEL_HEADER = "import triton\nimport triton.language as tl\n\n\n"


def kernel_function(name: str, signature: str, body: list[str]) -> str:
    """A Triton kernel function's text (without the ``@triton.jit`` the loader adds)."""
    return f"def {name}({signature}):\n" + "\n".join("    " + line for line in body) + "\n"
