"""The native CPU target: C++/OpenMP kernels built with the system compiler, one library per graph.

What it generates: fused pointwise groups (any rank, broadcasting, strided, float32/float64/
bfloat16/float16/integer/bool, in-place writes into graph inputs), reductions (several levels:
softmax, norms and their backward; column blocks for outer dims), matmul/bmm with their fused
epilogue (:mod:`.matmul`), the fused attention template (:mod:`.attention`), gathers, scatters,
copies, fills and pooling (:mod:`.indexed`), dropout keep-masks (hashed from seed and element index,
inside the fused kernels). Convolutions and the rest stay ATen
calls, shown in explain as fallbacks with their reason. CPU tensors run this target by default
when a C++ compiler is found (``TILEWRIGHT_TARGET=auto``; ``cpu`` forces it).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ...ir.graph import Node
from ...ir.registry import lookup
from ...schedule.group import Group
from ...schedule.kernel import Kernel
from ..base import KernelBuilder, Target, TemplateLowering
from .attention import is_attention_node
from .conv import build_conv, conv_gradient_reason
from .indexed import INDEXED_BUILDERS, indexed_kind
from .kernel import CpuKernel, build_and_bind
from .matmul import build_matmul, supported_matmul
from .pointwise import PointwiseSource, pointwise_space, supported_node
from .reduction import ReductionSource, reduction_space, supported_reduction
from .sparse_attention import is_sparse_attention_node, sparse_attention_template
from .sparse_gemm_template import is_sparse_weight_node, sparse_weight_template

log = logging.getLogger(__name__)


def _cores() -> int:
    from .toolchain import cpu_description

    return int(cpu_description().get("cores") or 1)


def _pointwise(group: Group, materialize: set[int], name: str) -> Kernel:
    source = PointwiseSource(name, group.nodes, materialize)
    numel = math.prod(source.shape)
    return CpuKernel(source, "pointwise", pointwise_space(numel, _cores()), numel)


def _reduction(group: Group, materialize: set[int], name: str) -> Kernel:
    source = ReductionSource(name, group.nodes, materialize)
    return CpuKernel(source, "reduction", reduction_space(source.rows, _cores()), source.rows * source.count)


#: kernel kind -> builder
BUILDERS: dict[str, KernelBuilder] = {"pointwise": _pointwise, "reduction": _reduction, "matmul": build_matmul,
                                      "conv": build_conv,  # unsupported convolutions: the builder says why
                                      **INDEXED_BUILDERS}  # gathers, copies, scatters, pooling


class CpuTarget(Target):
    """C++ kernels for CPU tensors."""

    name = "cpu"
    label = "C++"
    builders = BUILDERS

    def runs_on(self, device: torch.device) -> bool:
        """CPU tensors."""
        return torch.device(device).type == "cpu"

    def kind_of(self, node: Node) -> str:
        """``view``, ``pointwise`` for generated ops, ``extern`` for the rest (templates too)."""
        kind = lookup(node.target).kind
        if kind == "view":
            return "view"
        if kind == "pointwise" and supported_node(node) is None:
            return "pointwise"
        if kind == "reduction" and supported_reduction(node) is None:
            return "reduction"
        if kind == "template" and (is_sparse_attention_node(node) or is_sparse_weight_node(node)):
            return "template"
        if kind == "template" and (is_attention_node(node) or conv_gradient_reason(node)):
            return "template"
        if kind == "conv":
            return "conv"
        if kind == "matmul" and supported_matmul(node) is None:
            return "matmul"
        indexed = indexed_kind(node)  # gathers, copies, scatters, pooling
        if indexed is not None:
            return indexed
        return "extern"

    def template(self, node: Node) -> TemplateLowering | None:
        """Fused attention (forward and backward) as C++ kernels; other templates run their ATen op."""
        if is_sparse_attention_node(node):  # opt-in block-sparse attention (sparsity plans)
            return sparse_attention_template(node)
        if is_sparse_weight_node(node):  # opt-in sparse weights (sparsity plans)
            return sparse_weight_template(node)
        from .attention import attention_template

        reason = conv_gradient_reason(node)
        if reason:
            return TemplateLowering(None, None, reason)
        return attention_template(node)

    def prepare(self, kernels: list[Kernel]) -> None:
        """Build one shared library holding every kernel of the graph and bind each kernel to it."""
        cpu_kernels = [k for k in kernels if isinstance(k, CpuKernel)]
        if cpu_kernels:
            build_and_bind(cpu_kernels)

    def race_candidates(self, kernel: Kernel) -> list[dict[str, Any]]:
        """A GEMM or convolution without a tuned schedule: its generated default against extern
        torch.mm/bmm/convolution (plus the same generated epilogue): the vendor library runs only
        where it measures faster."""
        if (not isinstance(kernel, CpuKernel) or kernel.kind not in ("matmul", "conv")
                or kernel.config_source in ("database", "tuned") or "extern" not in kernel.config):
            return []
        return kernel.race_candidates()

    def device_info(self, device: Any = None) -> dict[str, Any]:
        """The CPU description tuning records are keyed by (model, ISA flags, compiler)."""
        from ...schedule.device import native_cpu_info
        from .toolchain import cpu_description, find_compiler

        return native_cpu_info(cpu_description(), find_compiler().version)

    def summary(self, device: Any = None) -> str:
        """C++, the compiler, its flags, the ISA extensions kernels may use and the CPU."""
        from .toolchain import compile_flags, cpu_description, find_compiler

        compiler = find_compiler()
        cpu = cpu_description()
        flags = " ".join(f for f in compile_flags(compiler) if f not in ("-shared", "-fPIC"))
        return (f"C++ ({compiler.version}; {flags}; ISA {' '.join(cpu['isa']) or 'baseline'}; "
                f"{cpu['model']}, {cpu['cores']} cores)")
