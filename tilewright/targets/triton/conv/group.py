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
import weakref
from typing import Any, Callable, Sequence

import torch

from ....schedule.space import Config
from ....ir.graph import Node, Value
from .forward import (ConvKernel, ConvProblem, as_5d, compiled_launcher, launch_args, pack_input,
                      pack_weight)
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
        #: (config, launcher) of the last config launched (see :meth:`_bind`)
        self._bound: tuple[Config, Callable[[Sequence[torch.Tensor]], None]] | None = None

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
        bound = self._bound
        if bound is None or bound[0] is not config:
            bound = self._bound = (config, self._bind(config))
        bound[1](tensors)

    def _bind(self, config: Config) -> Callable[[Sequence[torch.Tensor]], None]:
        """A launcher for ``config`` with everything but the tensors worked out once: the compiled
        kernel, grid and constants, sizes and strides (the specialisation fixes them), where each
        epilogue argument comes from; a packed weight is reused while the weight is unchanged."""
        cfg = self.space.validate(config)
        problem = self.problem_conv
        kernel, grid_size, consts = compiled_launcher(problem, cfg, self.epilogue)
        x_layout, w_layout = str(cfg.get("X_LAYOUT", "as_is")), str(cfg.get("W_LAYOUT", "as_is"))
        x, w = (torch.empty_strided(v.type.shape, v.type.strides, dtype=v.type.dtype, device="meta")
                for v in self.inputs[:2])
        tail = launch_args(problem, as_5d(pack_input(x, x_layout)), as_5d(pack_weight(w, w_layout)))[2:]
        position = {v.id: i for i, v in reversed(list(enumerate(self.inputs + self.outputs)))}
        epilogue = [position[v.id] for v in self.epilogue_inputs + self.outputs]
        weights = PackedWeights(w_layout)

        def run(tensors: Sequence[torch.Tensor]) -> None:
            # NOTE: Triton reads only data pointers: a 4-D tensor passes as its 5-D view would
            x = tensors[0] if x_layout == "as_is" else pack_input(tensors[0], x_layout)
            w = tensors[1] if w_layout == "as_is" else weights.get(tensors[1])
            kernel[grid_size](x, w, *tail, *[tensors[i] for i in epilogue], **consts)
        return run

    def describe_extra(self) -> dict[str, Any]:
        """What was fused, and the convolution's shape under the current schedule."""
        return {"fused": list(self.epilogue.fused), "shape": self.tunable.describe(self.config)}

    @property
    def fingerprint(self) -> str:
        """Hash of the epilogue text."""
        return hashlib.sha256("\n".join(self.epilogue.lines).encode()).hexdigest()[:16]


class PackedWeights:
    """A weight in a packed layout, repacked only when the weight changed (another tensor, or an
    in-place update: the tensor's version counter moved). Inference-mode tensors keep no version
    counter, so they are repacked at every call. The tensor itself is part of the key (a weak
    reference): a new tensor allocated at a dead one's address, with the same version, is packed
    anew (see the CPU target's ``PackedWeight``)."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self._key: tuple[Any, ...] | None = None
        self._ref: weakref.ref[torch.Tensor] | None = None
        self._packed: torch.Tensor | None = None

    def get(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` packed (cached while unchanged)."""
        try:
            key = (w.data_ptr(), w._version, tuple(w.shape), tuple(w.stride()), w.dtype)
        except RuntimeError:  # an inference tensor: no version counter
            return pack_weight(w, self.layout)
        if key != self._key or self._packed is None or self._ref is None or self._ref() is not w:
            self._packed, self._key, self._ref = pack_weight(w, self.layout), key, weakref.ref(w)
        return self._packed
