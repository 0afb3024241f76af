"""The CPU target's kernel kinds for data movement: gathers, copies, generators, scatters and pooling.

Each node of these kinds is one kernel of its own (fusion merges only pointwise/reduction/matmul
groups); the values around it are computed by the fused kernels that read or write its
operands. :func:`indexed_kind` is the kind ``CpuTarget.kind_of`` gives such a node, and
:data:`INDEXED_BUILDERS` the builders ``CpuTarget.builders`` holds for them.
"""
from __future__ import annotations

from ...ir.graph import Node
from ...ir.registry import packet_name
from ...schedule.group import Group
from ...schedule.kernel import Kernel
from .copies import COPY_OPS, CopySource, supported_copy
from .generators import FILL_OPS, FillSource, supported_fill
from .indexing import (
    GATHER_OPS,
    CheckedKernel,
    GatherSource,
    cpu_space,
    supported_gather,
)
from .pooling import POOL_OPS, PoolSource, supported_pool
from .scatter import ScatterSource, scatter_space, supported_scatter


def _cores() -> int:
    from .toolchain import cpu_description

    return int(cpu_description().get("cores") or 1)


def indexed_kind(node: Node) -> str | None:
    """``gather``, ``copy``, ``fill``, ``scatter`` or ``window`` when this target generates ``node``, else None."""
    name = packet_name(node.target)
    if name in GATHER_OPS:
        return "gather" if supported_gather(node) is None else None
    if name in COPY_OPS:
        return "copy" if supported_copy(node) is None else None
    if name == "aten.index_put":
        return "scatter" if supported_scatter(node) is None else None
    if name in FILL_OPS:
        return "fill" if supported_fill(node) is None else None
    if name in POOL_OPS:
        return "window" if supported_pool(node) is None else None
    return None


def _gather(group: Group, materialize: set[int], name: str) -> Kernel:
    source = GatherSource(name, group.nodes[0])
    numel = group.nodes[0].outputs[0].type.numel
    return CheckedKernel(source, "gather", cpu_space("gather", numel, _cores()), numel, source.nbytes)


def _copy(group: Group, materialize: set[int], name: str) -> Kernel:
    source = CopySource(name, group.nodes[0])
    kernel = CheckedKernel(source, "copy", cpu_space("copy", source.numel, _cores()), source.numel, source.nbytes)
    kernel.returns_status = False
    return kernel


def _fill(group: Group, materialize: set[int], name: str) -> Kernel:
    source = FillSource(name, group.nodes[0])
    kernel = CheckedKernel(source, "fill", cpu_space("fill", source.numel, _cores()), source.numel, source.nbytes)
    kernel.returns_status = False
    return kernel


def _scatter(group: Group, materialize: set[int], name: str) -> Kernel:
    source = ScatterSource(name, group.nodes[0])
    space = scatter_space(source.numel, source.destinations, _cores())
    return CheckedKernel(source, "scatter", space, source.numel, source.nbytes)


def _window(group: Group, materialize: set[int], name: str) -> Kernel:
    source = PoolSource(name, group.nodes[0])
    kernel = CheckedKernel(source, "window", cpu_space("window", source.numel, _cores(), block=False),
                           source.numel, source.nbytes)
    kernel.returns_status = source.backward
    return kernel


#: kernel kind -> builder (merged into ``CpuTarget.builders``)
INDEXED_BUILDERS = {"gather": _gather, "copy": _copy, "fill": _fill, "scatter": _scatter, "window": _window}
