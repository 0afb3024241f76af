"""How the runtime calls a template node: its kernel path, its reference, and when it cannot.

A template node (fused attention forward/backward, ``convolution_backward``) runs hand-written
kernels. The runtime needs three things to treat it like a generated kernel — run the kernels,
fall back to a reference with identical results when they fail (or raise in strict mode), and
know at compile time when the kernels cannot handle the problem at all (then the node is an
extern call, reported as such, not counted as covered). :func:`template_call` gives them.

The kernel callables here never fall back on their own: failing loudly is what lets the
runtime report and count the fallback.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import torch

from ...ir.graph import Node, Value
from ...ir.registry import packet_name

log = logging.getLogger(__name__)

_FORWARD = "tilewright.flash_attention"
_BACKWARD = "tilewright.flash_attention_backward"
_CONV_BACKWARD = "aten.convolution_backward"

#: Once an attention kernel with dropout fell back, every later dropout attention call runs the
#: reference too: the kernels draw their keep-masks from another random stream than the
#: reference, and a forward and backward on different streams would give wrong gradients.
_dropout_on_reference = False


@dataclass(frozen=True)
class TemplateCall:
    """The two ways to run one template node (same arguments, same results)."""

    #: launches tilewright's hand-written kernels; raises when they fail
    kernel: Callable[..., Any]
    #: computes the same results with torch ops only
    reference: Callable[..., Any]
    #: "forward" / "backward" for fused attention (explain counts executed forward blocks)
    attention: str | None = None
    #: the schedule the kernels launch with (a stored or tuned config); None: their defaults
    config: Mapping[str, Any] | None = None

    def with_config(self, config: Mapping[str, Any] | None) -> "TemplateCall":
        """This call with its kernels launched under ``config``."""
        return replace(self, config=None if config is None else dict(config))

    def run_kernel(self, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> Any:
        """Launch the kernels (raises when they fail)."""
        return self.kernel(*args, config=self.config, **kwargs)

    def precompile_launch(self, node: Node) -> Any:
        """What a compile worker launches (or records) to compile this call's kernels before the
        first call (:class:`~.attention.precompile.TemplateLaunch`): fused attention's kernels and
        the convolution gradient's generated kernels (weight gradient, input gradient)."""
        from .attention.precompile import precompile_launch

        return precompile_launch(self, node)

    def on_kernel_failure(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Note a kernel failure that must change how later calls run."""
        global _dropout_on_reference
        if self.attention is not None and _dropout_p(self.attention, args, kwargs) > 0.0:
            _dropout_on_reference = True


def _dropout_p(which: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
    index = 12 if which == "backward" else 9
    value = kwargs.get("dropout_p", args[index] if len(args) > index else 0.0)
    return float(value or 0.0)


def _attention_forward_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                              mask: torch.Tensor | None, seed: torch.Tensor | None, scale: float, causal: bool,
                              causal_offset: int, dropout_p: float,
                              config: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    from .attention.launch import flash_attention_forward

    if dropout_p > 0.0 and _dropout_on_reference:
        raise RuntimeError("dropout attention runs its reference (an earlier dropout kernel fell back)")
    out, lse = flash_attention_forward(q, k, v, bias=bias, mask=mask, scale=scale, causal=causal,
                                       causal_offset=causal_offset, dropout_p=dropout_p, seed=seed,
                                       config=config)
    return out.contiguous(), lse.contiguous()


def _attention_forward_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                                 mask: torch.Tensor | None, seed: torch.Tensor | None, scale: float, causal: bool,
                                 causal_offset: int, dropout_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    from ...ops.attention import attention_reference

    out, lse = attention_reference(q, k, v, bias, mask, scale, causal, causal_offset, dropout_p, seed)
    return out.contiguous(), lse.contiguous()


def _attention_backward_kernel(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               bias: torch.Tensor | None, mask: torch.Tensor | None, seed: torch.Tensor | None,
                               out: torch.Tensor, lse: torch.Tensor, scale: float, causal: bool,
                               causal_offset: int, dropout_p: float, bias_grad: bool,
                               config: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, ...]:
    from ...ops.attention import backward_outputs
    from .attention.launch import flash_attention_backward

    if dropout_p > 0.0 and _dropout_on_reference:
        raise RuntimeError("dropout attention runs its reference (an earlier dropout kernel fell back)")
    dq, dk, dv, db = flash_attention_backward(dout, q, k, v, out, lse, bias=bias, mask=mask, scale=scale,
                                              causal=causal, causal_offset=causal_offset, dropout_p=dropout_p,
                                              seed=seed, bias_grad=bias_grad and bias is not None,
                                              config=config)
    return backward_outputs(q, dq, dk, dv, db)


def _attention_backward_reference(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  bias: torch.Tensor | None, mask: torch.Tensor | None, seed: torch.Tensor | None,
                                  out: torch.Tensor, lse: torch.Tensor, scale: float, causal: bool,
                                  causal_offset: int, dropout_p: float, bias_grad: bool) -> tuple[torch.Tensor, ...]:
    from ...ops.attention import _reference_backward, backward_outputs

    dq, dk, dv, db = _reference_backward(dout, q, k, v, bias, mask, seed, scale, causal, causal_offset,
                                         dropout_p, bias_grad and bias is not None)
    return backward_outputs(q, dq, dk, dv, db)


def _conv_backward_kernel(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias_sizes: Any,
                          stride: Any, padding: Any, dilation: Any, transposed: bool, output_padding: Any,
                          groups: int, output_mask: Any, config: Mapping[str, Any] | None = None
                          ) -> tuple[Any, Any, Any]:
    from .conv.backward import conv_backward

    reason = conv_backward_unsupported(tuple(x.shape), tuple(w.shape), stride, padding, dilation, transposed,
                                       output_padding, groups, x.dtype, grad_out.dtype)
    if reason is not None:  # the plan said it could; the tensors say otherwise
        raise RuntimeError(f"convolution_backward kernels cannot run this problem: {reason}")
    return conv_backward(grad_out, x, w, bias_sizes, stride, padding, dilation, transposed, output_padding,
                         groups, output_mask)


def _conv_backward_reference(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, bias_sizes: Any,
                             stride: Any, padding: Any, dilation: Any, transposed: bool, output_padding: Any,
                             groups: int, output_mask: Any) -> tuple[Any, Any, Any]:
    return torch.ops.aten.convolution_backward.default(grad_out, x, w, bias_sizes, stride, padding, dilation,
                                                       transposed, output_padding, groups, list(output_mask))


def conv_backward_unsupported(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Any, padding: Any,
                              dilation: Any, transposed: bool, output_padding: Any, groups: int,
                              dtype: torch.dtype, grad_dtype: torch.dtype) -> str | None:
    """None when the Triton gradient kernels handle this ``convolution_backward``, else why not."""
    from .conv.problem import supports

    reason = supports(x_shape, w_shape, stride, padding, dilation, transposed, output_padding, groups, dtype)
    if reason is None and grad_dtype != dtype:
        reason = f"gradient dtype {grad_dtype} differs from the input's {dtype}"
    return reason


_CALLS = {
    _FORWARD: TemplateCall(_attention_forward_kernel, _attention_forward_reference, "forward"),
    _BACKWARD: TemplateCall(_attention_backward_kernel, _attention_backward_reference, "backward"),
    _CONV_BACKWARD: TemplateCall(_conv_backward_kernel, _conv_backward_reference),
}


def template_call(node: Node) -> TemplateCall | None:
    """How to run template ``node`` (None: not a template this module knows)."""
    return _CALLS.get(packet_name(node.target))


def unsupported_reason(node: Node) -> str | None:
    """At compile time: why the template's kernels cannot run ``node`` (None when they can)."""
    if packet_name(node.target) != _CONV_BACKWARD:
        return None
    grad_out, x, w = node.args[0], node.args[1], node.args[2]
    if not all(isinstance(v, Value) for v in (grad_out, x, w)):
        return "non-tensor convolution_backward operands"
    stride, padding, dilation, transposed, output_padding, groups = node.args[4:10]
    return conv_backward_unsupported(tuple(x.type.shape), tuple(w.type.shape), stride, padding, dilation,
                                     bool(transposed), output_padding, int(groups), x.type.dtype,
                                     grad_out.type.dtype)
