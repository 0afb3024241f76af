"""The Triton target: generated Triton kernels on CUDA GPUs (and in Triton's CPU interpreter).

Every kernel kind this target builds is registered in :data:`BUILDERS`; template nodes are
lowered by :meth:`TritonTarget.template`.
"""
from __future__ import annotations

from typing import Any

import torch

from ...ir.graph import Node
from ...schedule.group import Group
from ...schedule.device import device_info
from ...schedule.kernel import Kernel
from ..base import KernelBuilder, Target, TemplateLowering
from .attention import ops as _attention_ops  # noqa: F401  (registers the ops' Triton kernels)
from .classify import classify
from .conv.group import ConvGroupKernel
from .jit import can_run_kernels
from .kernel import GeneratedKernel
from .matmul import MatmulKernel, MatmulKernelBuilder
from .pointwise_reduction import FusedKernelBuilder
from .scatter import ScatterKernel


def _fused(group: Group, materialize: set[int], name: str) -> Kernel:
    return GeneratedKernel(FusedKernelBuilder(name, group.nodes, materialize).build(), group.nodes)


def _matmul(group: Group, materialize: set[int], name: str) -> Kernel:
    assert group.anchor is not None
    return MatmulKernel(MatmulKernelBuilder(name, group.anchor, group.nodes, materialize).build(), group.nodes)


def _conv(group: Group, materialize: set[int], name: str) -> Kernel:
    assert group.anchor is not None
    return ConvGroupKernel(name, group.anchor, group.nodes, materialize)


def _scatter(group: Group, materialize: set[int], name: str) -> Kernel:
    return ScatterKernel(name, group.nodes[0])


#: kernel kind -> builder
BUILDERS: dict[str, KernelBuilder] = {
    "pointwise": _fused, "reduction": _fused, "matmul": _matmul, "conv": _conv, "scatter": _scatter,
}

def on_gpu(kernel: Kernel) -> bool:
    """Whether ``kernel``'s tensors live on a CUDA device (not in the CPU interpreter)."""
    return any(v.type.device.type == "cuda" for v in kernel.inputs + kernel.outputs)


class TritonTarget(Target):
    """Triton kernels: compiled on CUDA, interpreted on CPU when ``TILEWRIGHT_INTERPRET=1``."""

    name = "triton"
    label = "Triton"
    builders = BUILDERS

    def runs_on(self, device: torch.device) -> bool:
        """CUDA always; CPU only in Triton's interpreter."""
        return can_run_kernels(device)

    def kind_of(self, node: Node) -> str:
        """The registry's kind, refined by what the Triton builders support."""
        return classify(node)

    def template(self, node: Node) -> TemplateLowering | None:
        """Fused attention (forward, backward) and convolution gradients."""
        from .attention.tuning import template_kernel
        from .templates import template_call, unsupported_reason

        call = template_call(node)
        if call is None:  # opt-in block-sparse attention (sparsity plans), else none
            from .attention.sparse import sparse_template

            return sparse_template(node)
        reason = unsupported_reason(node)
        return TemplateLowering(call, None if reason else template_kernel(node), reason)

    def compiles_in_workers(self, kernels: list[Kernel]) -> bool:
        """On a GPU (not in the interpreter): the compiler compiles every kernel's config, and the
        kernels of the fused-attention template steps, in parallel worker processes first
        (warming Triton's on-disk cache), so the first call loads binaries instead of compiling
        them one by one. True without generated kernels too: a graph may hold only templates."""
        from .jit import interpret_mode

        return not interpret_mode() and torch.cuda.is_available()

    def race_candidates(self, kernel: Kernel) -> list[dict[str, Any]]:
        """On a GPU, a GEMM without a tuned schedule: its chosen config, the same tiles at the other
        allowed ``tl.dot`` precisions (float32: ieee against tf32x3), and extern torch.mm/bmm
        (cuBLAS) plus the generated epilogue; the fastest runs. Never in the interpreter, whose
        timings say nothing about a GPU."""
        if (not isinstance(kernel, MatmulKernel) or kernel.config_source in ("database", "tuned")
                or not on_gpu(kernel)):
            return []
        chosen = dict(kernel.config, extern=False)
        if not kernel.space.is_feasible(chosen):
            chosen = dict(kernel.space.default_config())
        candidates = [chosen]
        for precision in kernel.space.params.get("PRECISION", []):
            other = dict(chosen, PRECISION=precision)
            if other not in candidates and kernel.space.is_feasible(other):
                candidates.append(other)
        candidates.append(dict(kernel.space.default_config(), extern=True))
        return candidates

    def device_info(self, device: Any = None) -> dict[str, Any]:
        """The GPU (or interpreter) description tuning records are keyed by."""
        return device_info(device)

    def summary(self, device: Any = None) -> str:
        """Triton's version and the device (or its CPU interpreter)."""
        import triton

        from .jit import interpret_mode

        on_cpu = device is None or torch.device(device).type == "cpu"
        where = "interpreter on CPU" if on_cpu and interpret_mode() else device_info(device).get("name", "?")
        return f"Triton {triton.__version__} ({where})"
