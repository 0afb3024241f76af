"""``index_put`` (with and without ``accumulate``) as two generated kernels: copy, then scatter.

The output starts as a copy of ``self``; the scatter kernel then iterates over the indexed
region (``self.shape[:d] + broadcast(indices) + self.shape[d+k:]``), loads the destination
rows from the index tensors and writes ``values`` there — with ``tl.atomic_add`` when
accumulating (embedding gradients), a plain store otherwise. It is how the backward of
embeddings and advanced indexing runs without leaving generated code.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ...schedule.problem import KernelProblem
from ...schedule.space import Config
from ...ir.graph import Node, Value
from .emit.expr import CodegenError, Scope, cast_code
from .source import KERNEL_HEADER, int64_cast, kernel_function
from .emit.indexing import Dyn, Var, broadcast_index, depends, digits, offset_code
from .emit.emitter import Emitter
from ...schedule.kernel import Kernel
from .loader import load_kernel
from .spaces import pointwise_space

_ATOMIC_DTYPES = (torch.float32,)


class ScatterKernel(Kernel):
    """The copy + scatter kernels of one ``aten.index_put`` node (a tunable kernel)."""

    kind = "scatter"

    def __init__(self, name: str, node: Node) -> None:
        self.name = name
        self.node = node
        self.nodes = [node]
        self.ops = [node.op]
        src, indices, values = node.args[0], list(node.args[1]), node.args[2]
        accumulate = bool(node.args[3] if len(node.args) > 3 else node.kwargs.get("accumulate", False))
        out = node.outputs[0]
        if not isinstance(src, Value) or not isinstance(values, Value):
            raise CodegenError("index_put needs tensor self and values")
        used = [i for i, t in enumerate(indices) if t is not None]
        if not used or used != list(range(used[0], used[-1] + 1)):
            raise CodegenError("index_put with non-consecutive indices is not generated")
        if any(not isinstance(indices[i], Value) or indices[i].type.dtype not in (torch.int64, torch.int32)
               for i in used):
            raise CodegenError("index_put with boolean or non-tensor indices is not generated")
        if accumulate and out.type.dtype not in _ATOMIC_DTYPES:
            raise CodegenError(f"accumulating index_put in {out.type.dtype} needs atomics tilewright does not emit")
        if accumulate and torch.are_deterministic_algorithms_enabled():
            # NOTE: atomic adds of duplicate indices land in any order (float sums then differ in
            # the last bits run to run); ATen's accumulating index_put is deterministic under the flag
            raise CodegenError("torch.use_deterministic_algorithms(True): the accumulating scatter's atomic adds "
                               "are unordered, so ATen's deterministic index_put runs instead")
        first = used[0]
        bshape = tuple(torch.broadcast_shapes(*(indices[i].type.shape for i in used)))
        region = tuple(src.type.shape[:first]) + bshape + tuple(src.type.shape[first + len(used):])
        if math.prod(values.type.shape) > math.prod(region):
            raise CodegenError("index_put values larger than the indexed region")
        self.inputs: list[Value] = []
        self.outputs = [out]
        self.numel_copy = out.type.numel
        self.numel_scatter = math.prod(region)
        self.source = self._source(src, [indices[i] for i in used], values, out, first, bshape, region, accumulate)
        space = pointwise_space(max(self.numel_copy, self.numel_scatter))
        nbytes = float(sum(v.type.numel * v.type.dtype.itemsize for v in self.inputs + self.outputs))
        problem = KernelProblem("pointwise", f"scatter-{hash(self.source) & 0xffffffff:08x}",
                                {"numel": self.numel_scatter}, str(out.type.dtype).replace("torch.", ""),
                                (), float(self.numel_scatter), nbytes, {"scatter": True, "accumulate": accumulate})
        super().__init__(name, space, problem)

    @property
    def spec(self) -> "ScatterKernel":
        """GeneratedKernel compatibility (``spec.ops``, ``spec.kind``, ``spec.inputs``)."""
        return self

    def _source(self, src: Value, index_values: list[Value], values: Value, out: Value, first: int,
                bshape: tuple[int, ...], region: tuple[int, ...], accumulate: bool) -> str:
        x = Var("xindex")
        copy_scope = Scope([])
        copy = Emitter(set(), {"xindex": "xmask"}, lambda deps: copy_scope)
        idx = digits(x, out.type.shape)
        copy.store(out, idx, copy.value(src, idx), copy_scope, "[XBLOCK]", frozenset(["xindex"]))
        scatter_scope = Scope([])
        scatter = Emitter(set(), {"xindex": "xmask"}, lambda deps: scatter_scope)
        ridx = digits(x, region)
        at = ridx[first:first + len(bshape)]
        dest = list(ridx[:first])
        for k, t in enumerate(index_values):
            pos = scatter.value(t, broadcast_index(at, bshape, t.type.shape))
            size = out.type.shape[first + k]
            dest.append(Dyn(f"tl.where({pos.code} < 0, {pos.code} + {size}, {pos.code})", pos.deps))
        dest.extend(ridx[first + len(bshape):])
        val = scatter.value(values, broadcast_index(ridx, region, values.type.shape))
        if accumulate:  # float32 only (see _ATOMIC_DTYPES)
            ptr = scatter.arg_name(out, "out")
            off = offset_code(tuple(dest), out.type.strides)
            code = cast_code(val, out.type.dtype)
            # the pointer and the value must be blocks like the mask (a one-element region has no
            # index variable in its address): broadcast them over the lanes, which xmask limits
            if "xindex" not in depends(tuple(dest)):
                off = f"{off} + 0 * xindex"
            if "xindex" not in val.deps:
                code = f"(tl.zeros([XBLOCK], tl.float32) + {code})"
            scatter_scope.lines.append(f"tl.atomic_add({ptr} + ({off}), {code}, mask=xmask)")
        else:
            scatter.store(out, tuple(dest), val, scatter_scope, "[XBLOCK]", frozenset(["xindex"]))
        # one parameter list for both kernels: every input of either, then the output
        names: dict[int, str] = {}
        for emitter in (copy, scatter):
            for v in emitter.inputs.values():
                names.setdefault(v.id, emitter.arg_names[v.id])
                if v not in self.inputs:
                    self.inputs.append(v)
        params = [names[v.id] for v in self.inputs]
        for emitter in (copy, scatter):  # unify parameter names across the two bodies
            for v in self.inputs:
                if v.id in emitter.arg_names and emitter.arg_names[v.id] != names[v.id]:
                    raise CodegenError("inconsistent parameter names")
        out_name = copy.arg_names[out.id]
        if scatter.arg_names[out.id] != out_name:
            scatter_scope.lines = [line.replace(scatter.arg_names[out.id], out_name) for line in scatter_scope.lines]
        sig = ", ".join(params + [out_name, "XBLOCK: tl.constexpr"])
        wide = int64_cast(self.inputs + [out], max(out.type.numel, math.prod(region)))
        head = lambda n: [f"xoffset = tl.program_id(0){wide} * XBLOCK",  # noqa: E731
                          "xindex = xoffset + tl.arange(0, XBLOCK)", f"xmask = xindex < {n}"]
        return KERNEL_HEADER + kernel_function(self.name + "_copy", sig, head(out.type.numel) + copy_scope.lines) + "\n\n" + \
            kernel_function(self.name + "_scatter", sig, head(math.prod(region)) + scatter_scope.lines)

    def launch(self, tensors: Sequence[torch.Tensor], config: Config | None = None) -> None:
        """Copy ``self`` into the output, then scatter ``values`` (inputs then output)."""
        config = config or self.config
        block = int(config["XBLOCK"])
        opts = {k: config[k] for k in ("num_warps", "num_stages") if k in config}
        for suffix, numel in (("_copy", self.numel_copy), ("_scatter", self.numel_scatter)):
            if numel:
                kernel = load_kernel(self.source, self.name + suffix)
                kernel[(-(-numel // block),)](*tensors, XBLOCK=block, **opts)
