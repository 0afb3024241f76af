"""C++ generators for the CPU target: ``full``, ``scalar_tensor`` and ``arange`` (no tensor inputs).

A generator that a fused pointwise kernel does not compute (the pointwise builder has no body
for it) is a kernel of its own: a fill of a constant, or ``start + i * step`` computed as ATen
does (in double for floating outputs, in int64 for integer ones), through the output's strides.
"""
from __future__ import annotations

from typing import Any

import torch

from ...errors import BuildError
from ...ir.graph import Node
from ...ir.registry import packet_name
from ...schedule.space import Config
from .copies import region_copy
from .indexing import operand_problem
from .scalar_ops import CPP_TYPES, literal, storage_type, store_code
from .sizes import SizeArgs

#: ops this module generates
FILL_OPS = ("aten.full", "aten.scalar_tensor", "aten.arange")
_IOTA_DTYPES = (torch.int64, torch.int32, torch.float32, torch.float64)


def _arange_bounds(node: Node) -> tuple[Any, Any]:
    """(start, step) of an ``arange`` call."""
    overload = node.target._overloadname
    if overload == "default":
        return 0, 1
    if overload == "start":
        return node.args[0], 1
    return node.args[0], (node.args[2] if len(node.args) > 2 else node.kwargs.get("step", 1))


def _fill_value(node: Node) -> Any:
    return node.args[1] if packet_name(node.target) == "aten.full" else node.args[0]


def supported_fill(node: Node) -> str | None:
    """None when this module generates ``node``, else why not."""
    name = packet_name(node.target)
    if name not in FILL_OPS:
        return "not a generator"
    problem = operand_problem(node)
    if problem:
        return problem
    out = node.outputs[0]
    if node.inputs:
        return "tensor arguments"
    if out.type.dtype not in CPP_TYPES:
        return f"{out.type.dtype} is not generated for CPU yet"
    if node.kwargs.get("layout") not in (None, torch.strided):
        return "layout"
    if name == "aten.arange":
        if out.type.dtype not in _IOTA_DTYPES:
            return f"arange in {out.type.dtype} is not generated"
        if not all(isinstance(a, (int, float)) for a in _arange_bounds(node)):
            return "symbolic arange bounds"
    elif not isinstance(_fill_value(node), (bool, int, float)):
        return "non-scalar fill value"
    return None


class FillSource:
    """The C++ function of one generator node."""

    def __init__(self, name: str, node: Node) -> None:
        reason = supported_fill(node)
        if reason:
            raise BuildError(f"{node.op}: {reason}")
        self.name, self.nodes, self.inputs = name, [node], []
        out = node.outputs[0]
        self.outputs, self.checks = [out], []
        self.numel = max(1, out.type.numel)
        self.nbytes = self.numel * out.type.dtype.itemsize
        dtype, ct, st = out.type.dtype, CPP_TYPES[out.type.dtype], storage_type(out.type.dtype)
        if packet_name(node.target) == "aten.arange":
            start, step = _arange_bounds(node)
            acc = "double" if dtype.is_floating_point else "int64_t"
            value = store_code(dtype, f"(({ct})(({acc}){literal(start)} + ({acc})j * ({acc}){literal(step)}))")
        else:
            fill = _fill_value(node)
            fill = float(fill) if dtype.is_floating_point else (bool(fill) if dtype == torch.bool else int(fill))
            value = store_code(dtype, f"(({ct}){literal(fill)})")
        #: sizes and strides read at run time (see :mod:`.sizes`)
        self.sizes = SizeArgs()
        body = region_copy("out", None, out.type.shape, out.type.strides, [], value, sizes=self.sizes)
        self.source = (f'extern "C" void {name}(void* p_out0, int64_t block, int64_t threads, {self.sizes.param}) {{\n'
                       f"  {st}* out = ({st}*)p_out0;\n{self.sizes.declarations()}\n{body}}}\n")

    def launch_args(self, config: Config) -> list[int]:
        """Scalar arguments after the output: the inner block size, the thread count, the sizes."""
        return [int(config["BLOCK"]), int(config["threads"]), self.sizes.address()]
