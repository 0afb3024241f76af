"""Which lowering a node gets: the registry's kind, refined by what codegen supports."""
from __future__ import annotations

import torch

from ...ir.graph import Node, Value
from ...ir.registry import lookup, packet_name
from ...ir.types import TRITON_DTYPES

_KERNEL_DTYPES = set(TRITON_DTYPES)


def _tensor_dtypes_ok(node: Node) -> bool:
    for v in node.inputs + node.outputs:
        if v.type.dtype not in _KERNEL_DTYPES:
            return False
    return True


def classify(node: Node) -> str:
    """``pointwise``, ``reduction``, ``matmul``, ``view``, ``template`` or ``extern``."""
    kind = lookup(node.target).kind
    if kind in ("view", "template", "extern"):
        return kind
    if kind == "conv":
        from .conv.group import conv_support

        return "extern" if conv_support(node) else "conv"
    if not _tensor_dtypes_ok(node) or any(o.type.numel == 0 for o in node.outputs):
        return "extern"
    name = packet_name(node.target)
    if any(o.type.device.type not in ("cuda", "cpu") for o in node.outputs):
        return "extern"
    if name == "aten._to_copy":
        src = node.args[0]
        device = node.kwargs.get("device")
        if device is not None and isinstance(src, Value) and torch.device(device) != src.type.device:
            return "extern"
        if node.kwargs.get("layout") not in (None, torch.strided):
            return "extern"
    if name in ("aten.full", "aten.scalar_tensor"):
        fill = node.args[1] if name == "aten.full" else node.args[0]
        if not isinstance(fill, (int, float, bool)):
            return "extern"
    if kind == "matmul":
        if name not in ("aten.mm", "aten.bmm"):
            return "extern"
        if node.outputs[0].type.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return "extern"
    if kind == "reduction" and lookup(node.target).combine == "prod":
        return "extern"
    if kind == "pointwise" and any(isinstance(v, Value) for v in node.kwargs.values()):
        return "extern"
    if lookup(node.target).extra.get("inplace"):
        dst = node.args[0]
        # only a write into a graph input's own memory (not a view, not a constant)
        if not isinstance(dst, Value) or dst.producer is not None or dst.constant is not None:
            return "extern"
    return kind
