"""Convolution groups: a convolution node plus the pointwise epilogue fused into its kernel.

The convolution kernels (``conv.py``) take an :class:`~tilewright.targets.triton.conv.templates.Epilogue`
that runs on the finished accumulator. This module generates that epilogue with the same
:class:`~tilewright.targets.triton.emit.emitter.Emitter` the fused kernels use: the convolution's value at
the tile's index ``(n_i, rn, oh_i, ow_i)`` is the accumulator plus bias, and bias adds,
activations, residual adds and scaling that follow are computed on the tile before it is
written once.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch

from ....schedule.space import Config
from ....ir.graph import Node, Value
from .forward import ConvKernel, ConvProblem, conv_forward
from .problem import supports
from .templates import Epilogue
from ..emit.emitter import CodegenError, Emitter, Expr, Scope
from ..source import group_outputs
from ..emit.indexing import Atom, Var, digits, reshape_index
from ....schedule.kernel import Kernel


def conv_support(node: Node) -> str | None:
    """None when ``node`` (aten.convolution) can run as a generated kernel, else the reason."""
    x, w = node.args[0], node.args[1]
    bias = node.args[2]
    stride, padding, dilation, transposed, output_padding, groups = node.args[3:9]
    if not isinstance(x, Value) or not isinstance(w, Value):
        return "convolution operands must be tensors"
    if bias is not None and (not isinstance(bias, Value) or bias.type.dtype != x.type.dtype):
        return "bias dtype differs from the input's"
    if w.type.dtype != x.type.dtype:
        return "weight dtype differs from the input's"
    return supports(x.type.shape, w.type.shape, stride, padding, dilation, transposed, output_padding,
                    groups, x.type.dtype)


class ConvGroupKernel(Kernel):
    """A convolution with a generated epilogue, launchable by the runtime and tunable."""

    def __init__(self, name: str, anchor: Node, nodes: list[Node], materialize: set[int]) -> None:
        reason = conv_support(anchor)
        if reason:
            raise CodegenError(f"convolution not lowered: {reason}")
        for n in nodes:
            from ....ir.registry import lookup

            if n is not anchor and lookup(n.target).kind != "pointwise":
                raise CodegenError(f"{n.op} cannot be a convolution epilogue")
        self.anchor = anchor
        self.nodes = nodes
        self.outputs = group_outputs(nodes, materialize, "convolution group")
        self.epilogue, self.epilogue_inputs = self._epilogue()
        x, w = anchor.args[0], anchor.args[1]
        self.inputs: list[Value] = [x, w] + [v for v in self.epilogue_inputs if v.id not in (x.id, w.id)]
        meta_x = torch.empty_strided(x.type.shape, x.type.strides, dtype=x.type.dtype, device="meta")
        meta_w = torch.empty_strided(w.type.shape, w.type.strides, dtype=w.type.dtype, device="meta")
        stride, padding, dilation, _, _, groups = anchor.args[3:9]
        self.conv_args = (list(stride), list(padding), list(dilation), int(groups))
        self.problem_conv = ConvProblem.from_tensors(meta_x, meta_w, None, *self.conv_args)
        self.tunable = ConvKernel(self.problem_conv, self.epilogue, name)
        super().__init__(name, self.tunable.space, self.tunable.problem)
        self.ops = [n.op for n in nodes]

    def _epilogue(self) -> tuple[Epilogue, list[Value]]:
        out = self.anchor.outputs[0]
        shape = out.type.shape
        spatial = list(shape[2:])
        rm, rn = Var("rm"), Var("rn")
        pix = digits(rm, [shape[0]] + spatial)
        canon: tuple[Atom, ...] = reshape_index((pix[0], rn, *pix[1:]), shape, shape)
        scope = Scope([])
        bias = self.anchor.args[2]
        emitter = Emitter({n.id for n in self.nodes}, {"rm": "rmask", "rn": "rnmask"}, lambda deps: scope)
        acc = Expr("acc", torch.float32, frozenset(["rm", "rn"]))
        if isinstance(bias, Value):
            b = emitter.value(bias, reshape_index((rn,), bias.type.shape, bias.type.shape))
            scope.lines.append(f"acc_b = acc + {b.code}")
            acc = Expr("acc_b", torch.float32, frozenset(["rm", "rn"]))
        emitter.special[out.id] = lambda idx: acc if tuple(idx) == canon else None
        for v in self.outputs:
            idx = reshape_index(canon, shape, v.type.shape)
            emitter.store(v, idx, emitter.value(v, idx), scope, "[BLOCK_M, BLOCK_N]", frozenset(["rm", "rn"]))
        inputs = list(emitter.inputs.values())
        params = [emitter.arg_names[v.id] for v in inputs] + [emitter.arg_names[v.id] for v in self.outputs]
        fused = (["bias"] if isinstance(bias, Value) else []) + [n.op.split(".")[1] for n in self.nodes
                                                                  if n is not self.anchor]
        self.arg_names = dict(emitter.arg_names)
        return Epilogue(params, scope.lines, fused), inputs

    @property
    def spec(self) -> "ConvGroupKernel":
        """Compatibility with GeneratedKernel (``spec.ops``, ``spec.kind``)."""
        return self

    kind = "conv"

    def launch(self, tensors: Sequence[torch.Tensor], config: Config | None = None) -> None:
        """Launch on ``tensors`` (``self.inputs`` then ``self.outputs``)."""
        config = config or self.config
        by_id = {v.id: t for v, t in zip(self.inputs + self.outputs, tensors)}
        x, w = by_id[self.inputs[0].id], by_id[self.inputs[1].id]
        args = {self.arg_names[v.id]: by_id[v.id] for v in self.epilogue_inputs + self.outputs}
        stride, padding, dilation, groups = self.conv_args
        conv_forward(x, w, None, stride, padding, dilation, groups, config=config, epilogue=self.epilogue,
                     epilogue_args=args, out=self._scratch(x))

    def _scratch(self, x: torch.Tensor) -> torch.Tensor:
        # conv_forward binds an output buffer; the generated epilogue stores the real outputs
        out = self.anchor.outputs[0].type
        return torch.empty(1, dtype=x.dtype, device=x.device).as_strided(out.shape, [0] * len(out.shape))

    def describe_extra(self) -> dict[str, Any]:
        """What was fused, and the convolution's shape under the current schedule."""
        return {"fused": list(self.epilogue.fused), "shape": self.tunable.describe(self.config)}

    @property
    def fingerprint(self) -> str:
        """Hash of the epilogue text."""
        return hashlib.sha256("\n".join(self.epilogue.lines).encode()).hexdigest()[:16]
