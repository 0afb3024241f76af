"""The sparse-weight ops (``tilewright::bsr_linear``, ``nm_linear``, ``bsr_conv2d``, and ``packed_weight``
which hands them their compressed weight) as templates of the CPU target.

The weight rewrites of :mod:`tilewright.sparsity.apply` put these ops in compiled graphs; here
the CPU target runs them as template nodes: the kernel is the native sparse GEMM of
:mod:`.sparse_gemm` (through the op's CPU implementation), the reference the same function with
torch ops over the dense pruned weight. So explain lists them as kernels, and strict mode
catches a sparse kernel that fails and runs its reference.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...errors import BuildError
from ...ir.graph import Node
from ...ir.registry import packet_name
from ..base import TemplateLowering

__all__ = ["CpuSparseWeightCall", "is_sparse_weight_node", "sparse_weight_template"]

_OPS = ("tilewright.bsr_linear", "tilewright.nm_linear", "tilewright.bsr_conv2d", "tilewright.packed_weight")


def is_sparse_weight_node(node: Node) -> bool:
    """Whether ``node`` calls one of the sparse-weight ops."""
    return packet_name(node.target) in _OPS


@dataclass
class CpuSparseWeightCall:
    """A ``TemplateRunner`` for one sparse-weight op on the CPU target."""

    op: str
    attention: str | None = None
    config: Mapping[str, Any] | None = None

    def with_config(self, config: Mapping[str, Any] | None) -> CpuSparseWeightCall:
        """The sparse kernels take no tunable schedule: this call."""
        return self

    def run_kernel(self, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """Run the native sparse kernel (raises when it cannot be built)."""
        from .sparse_gemm import native_available

        problem = native_available()
        if problem is not None:
            raise BuildError(f"sparse GEMM kernels cannot be built: {problem}")
        return getattr(torch.ops.tilewright, self.op.split(".", 1)[1])(*args, **kwargs)

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        """The op with torch ops over the dense pruned weight."""
        from ...sparsity.ops import REFERENCES

        return REFERENCES[self.op](*args, **kwargs)

    def on_kernel_failure(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Nothing to remember: each call tries the kernel again."""


def sparse_weight_template(node: Node) -> TemplateLowering | None:
    """The CPU lowering of a sparse-weight node (None for other templates)."""
    name = packet_name(node.target)
    if name not in _OPS:
        return None
    return TemplateLowering(CpuSparseWeightCall(name))
