"""Build convolution epilogues from a chain of common steps (bias, activation, residual, scale).

The lead's fusion pass generates epilogues from the op registry; this builder covers the
chains that appear after convolutions in CNNs (ResNet: ``bias -> add residual -> relu``;
ConvNeXt / MobileNet: ``bias -> gelu/silu -> layer-scale -> add residual``) and is what the
benchmark and tests use. Each step is a row of :data:`STEPS`::

    epi, args = (EpilogueBuilder().bias().add("res", res).relu()
                 .scale_channels("gamma", g).build())   # names become ep_res_ptr, ...
    y = conv_forward(x, w, b, ..., epilogue=epi, epilogue_args=args)

All arithmetic runs on the float32 accumulator; the store casts to the output's dtype.
Only Triton builtins are used (no ``tl.sigmoid``/``tl.sum``, which are jit helpers the
interpreter cannot call from generated code unless ``TRITON_INTERPRET`` was set at import).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .forward import epilogue_tensor_args
from .templates import Epilogue, pixel_offset, store_lines, tensor_params

#: activation name -> code line applied to ``acc``
ACTIVATIONS: dict[str, str] = {
    "relu": "acc = tl.maximum(acc, 0.0)",
    "gelu": "acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))",
    "silu": "acc = acc / (1.0 + tl.exp(-acc))",
    "sigmoid": "acc = 1.0 / (1.0 + tl.exp(-acc))",
    "relu6": "acc = tl.minimum(tl.maximum(acc, 0.0), 6.0)",
}


def _ns(name: str) -> str:
    """Namespace a user-chosen name so it cannot shadow a kernel variable."""
    if not name.isidentifier():
        raise ValueError(f"bad epilogue name {name!r}")
    return f"ep_{name}"


@dataclass
class EpilogueBuilder:
    """Accumulates epilogue steps; :meth:`build` returns the Epilogue and its argument values.

    Parameter names ``out_ptr``/``stride_o*`` and ``bias_ptr`` are filled by
    :func:`tilewright.targets.triton.conv.forward.conv_forward`; other tensors are passed in ``args``.
    """

    params: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    fused: list[str] = field(default_factory=list)
    args: dict[str, Any] = field(default_factory=dict)

    def bias(self) -> "EpilogueBuilder":
        """acc += bias[channel] (from ``conv_forward``'s ``bias``)."""
        self.params.append("bias_ptr")
        self.lines += ["bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)",
                       "acc = acc + bias[None, :]"]
        self.fused.append("bias")
        return self

    def activation(self, name: str) -> "EpilogueBuilder":
        """acc = act(acc) for an entry of :data:`ACTIVATIONS`."""
        self.lines.append(ACTIVATIONS[name])
        self.fused.append(name)
        return self

    def relu(self) -> "EpilogueBuilder":
        """acc = max(acc, 0)."""
        return self.activation("relu")

    def scale(self, name: str, value: float) -> "EpilogueBuilder":
        """acc *= scalar kernel parameter ``name``."""
        name = _ns(name)
        self.params.append(name)
        self.args[name] = float(value)
        self.lines.append(f"acc = acc * {name}")
        self.fused.append("mul")
        return self

    def scale_channels(self, prefix: str, gamma: torch.Tensor) -> "EpilogueBuilder":
        """acc *= gamma[channel] (layer-scale, frozen per-channel affine)."""
        prefix = _ns(prefix)
        self.params.append(f"{prefix}_ptr")
        self.args[f"{prefix}_ptr"] = gamma.contiguous()
        self.lines += [f"{prefix} = tl.load({prefix}_ptr + offs_n, mask=mask_n, other=0.0)"
                       ".to(tl.float32)", f"acc = acc * {prefix}[None, :]"]
        self.fused.append("mul_channel")
        return self

    def add(self, prefix: str, residual: torch.Tensor) -> "EpilogueBuilder":
        """acc += residual (any strides; the output's shape)."""
        prefix = _ns(prefix)
        self.params += tensor_params(prefix)
        self.args.update(epilogue_tensor_args(prefix, residual))
        tile = f"({pixel_offset(prefix)}[:, None] + offs_n[None, :] * stride_{prefix}c)"
        self.lines += [f"{prefix} = tl.load({prefix}_ptr + {tile}, mask=mask_m[:, None] & "
                       "mask_n[None, :], other=0.0).to(tl.float32)", f"acc = acc + {prefix}"]
        self.fused.append("add")
        return self

    def build(self) -> tuple[Epilogue, dict[str, Any]]:
        """The epilogue (ending in the output store) and the extra argument values."""
        params = ["out_ptr"] + tensor_params("o")[1:] + self.params
        lines = self.lines + store_lines("out_ptr", "o", "acc")
        return Epilogue(params=params, lines=lines, fused=list(self.fused)), dict(self.args)
