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

def precompile_graph(kernels: list[Kernel], pool: Any = None) -> dict[str, str]:
    """Compile ``kernels`` (their current configs) together in ``pool`` (default: the compile
    session's, else a pool sized by ``config.compile_workers``); {kernel name: error}.

    Errors are logged once; a timeout or a crashed compiler marks the kernel broken so the
    runtime never waits on it.
    """
    import logging

    from ...autotune.compile_pool import CompilePool, active_pool, precompile_kernels
    from ...config import config

    log = logging.getLogger(__name__)
    own = None
    if pool is None:
        pool = active_pool()
        if pool is None:
            pool = own = CompilePool(config.compile_workers, config.compile_timeout_s)
    try:
        errors = precompile_kernels(kernels, pool)
    finally:
        if own is not None:
            own.close()
    for kernel in kernels:
        err = errors.get(kernel.name)
        if err is None:
            continue
        log.warning("first compile of %s failed in a worker: %s", kernel.name, err)
        if "timeout" in err or "worker died" in err:
            kernel.broken = f"compile failed: {err}"
    return errors


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

    def prepare(self, kernels: list[Kernel]) -> None:
        """On a GPU, compile every kernel's config in parallel worker processes (warming Triton's
        on-disk cache) so the first call loads binaries instead of compiling them one by one; a
        compile that times out marks its kernel broken (its reference runs) instead of hanging."""
        from .jit import interpret_mode

        if not kernels or interpret_mode() or not torch.cuda.is_available():
            return
        precompile_graph(kernels)

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
