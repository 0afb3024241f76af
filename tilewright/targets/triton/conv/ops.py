"""ATen-compatible convolution callables backed by the Triton kernels, with safe fallback.

:func:`convolution` and :func:`convolution_backward` take exactly the arguments of
``aten.convolution.default`` and ``aten.convolution_backward.default``. They run the
generated kernels when the problem is supported and kernels can run on the tensors' device
(CUDA, or CPU with ``TILEWRIGHT_INTERPRET=1``); otherwise, or when a kernel fails, they run
the ATen op (a failure is logged once per problem). :func:`lower_convolutions` swaps them
into an FX graph, which is how tests run whole models through these kernels.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.fx as fx

from .forward import conv_forward, supports
from .backward import conv_backward
from ..jit import can_run_kernels

log = logging.getLogger(__name__)
aten = torch.ops.aten
_failed: set[tuple[Any, ...]] = set()


def _key(*parts: Any) -> tuple[Any, ...]:
    return tuple(tuple(p.shape) + (p.dtype,) if isinstance(p, torch.Tensor) else
                 tuple(p) if isinstance(p, list) else p for p in parts)


def convolution(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                transposed: bool, output_padding: Sequence[int], groups: int) -> torch.Tensor:
    """``aten.convolution.default`` through :func:`conv_forward` when possible."""
    reason = supports(tuple(x.shape), tuple(w.shape), stride, padding, dilation, transposed,
                      output_padding, groups, x.dtype)
    key = _key("fwd", x, w, bias, stride, padding, dilation, groups)
    if reason is None and can_run_kernels(x.device) and key not in _failed:
        try:
            return conv_forward(x, w, bias, list(stride), list(padding), list(dilation), groups)
        except Exception as exc:  # noqa: BLE001 - never break the user's program
            _failed.add(key)
            log.warning("conv kernel failed (%s: %s); using ATen for this shape", type(exc).__name__, exc)
    return aten.convolution.default(x, w, bias, stride, padding, dilation, transposed,
                                    output_padding, groups)


def convolution_backward(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                         bias_sizes: Sequence[int] | None, stride: Sequence[int],
                         padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                         output_padding: Sequence[int], groups: int,
                         output_mask: Sequence[bool]) -> tuple[Any, Any, Any]:
    """``aten.convolution_backward.default`` through the Triton gradient kernels when possible."""
    key = _key("bwd", x, w, stride, padding, dilation, groups)
    if can_run_kernels(x.device) and key not in _failed:
        try:
            return conv_backward(grad_out, x, w, bias_sizes, stride, padding, dilation,
                                 transposed, output_padding, groups, output_mask)
        except Exception as exc:  # noqa: BLE001
            _failed.add(key)
            log.warning("conv backward kernel failed (%s: %s); using ATen", type(exc).__name__, exc)
    return aten.convolution_backward.default(grad_out, x, w, bias_sizes, stride, padding,
                                             dilation, transposed, output_padding, groups,
                                             list(output_mask))


LOWERINGS = {
    aten.convolution.default: convolution,  # aten.convolution -> Triton conv (or ATen)
    aten.convolution_backward.default: convolution_backward,  # grads -> Triton (or ATen)
}


def lower_convolutions(gm: fx.GraphModule) -> int:
    """Point every convolution (and its backward) node of ``gm`` at these callables.

    Returns:
        The number of nodes retargeted.
    """
    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in LOWERINGS:
            node.target = LOWERINGS[node.target]
            count += 1
    if count:
        gm.recompile()
    return count
