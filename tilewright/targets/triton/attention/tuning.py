"""The tunable kernel of a fused-attention template node.

A ``tilewright::flash_attention`` node (or its backward) runs the attention kernels through its
:class:`~tilewright.targets.triton.templates.TemplateCall`. This module gives the node an
:class:`~tilewright.targets.triton.attention.launch.AttentionKernel`, so ``tilewright autotune``
tunes it and the tuning database serves it; the compiler hands the chosen config to the call
(``TemplateCall.with_config``), which passes it to the launcher as an argument.
"""
from __future__ import annotations

import logging
from typing import Any

from ....ir.graph import Node, Value
from ....ir.registry import packet_name

log = logging.getLogger(__name__)

_FORWARD = "tilewright.flash_attention"
_BACKWARD = "tilewright.flash_attention_backward"


def template_kernel(node: Node) -> Any | None:
    """The tunable kernel of a template node, or None for templates without one."""
    name = packet_name(node.target)
    if name not in (_FORWARD, _BACKWARD):
        return None
    from .launch import AttentionKernel, use_decode_path

    offset = 1 if name == _BACKWARD else 0
    q, k = node.args[offset], node.args[offset + 1]
    if not isinstance(q, Value) or not isinstance(k, Value) or q.type.rank != 4:
        return None
    causal = bool(node.args[offset + (10 if name == _BACKWARD else 7)])
    dropout = float(node.args[offset + (12 if name == _BACKWARD else 9)])
    batch, heads, m, head_dim = q.type.shape
    n = k.type.shape[2]
    which = "bwd" if name == _BACKWARD else ("decode" if use_decode_path(m, n, dropout) else "fwd")
    dtype = str(q.type.dtype).replace("torch.", "")
    try:
        return AttentionKernel(which, batch, heads, k.type.shape[1], m, n, head_dim, dtype, causal)
    except Exception as exc:  # a shape the template's space cannot describe: no tuning for it
        log.debug("no tunable attention kernel for %s: %s", node.op, exc)
        return None
