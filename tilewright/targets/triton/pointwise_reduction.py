"""Kernel builders for fused pointwise and reduction groups.

A *pointwise* kernel iterates one flat index ``xindex`` over the output elements. A
*reduction* kernel iterates rows ``xindex`` ([XBLOCK, 1]) and reduced elements ``rindex``
([1, RBLOCK]). When ``RBLOCK`` covers a whole row the kernel is persistent (one pass, the
row stays in registers); otherwise every reduction level gets its own loop over row blocks
and element-wise outputs are written in a final loop. Several reductions of the same row
(softmax's max and sum, layer norm's mean and variance, backward's two sums) live in one
kernel; reductions that do not depend on each other share a loop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ...ir.graph import Node, Value
from ...ir.registry import lookup, nan_max, nan_min, reduction_dims
from ...ir.types import compute_dtype, triton_dtype
from .emit.emitter import CodegenError, Emitter, Expr, Scope, cast_code
from .emit.indexing import Atom, Const, Var, depends, digits, lin
from .jit import cdiv
from .source import KERNEL_HEADER, KernelSource, group_outputs, int64_cast, kernel_function
from .spaces import pointwise_space, reduction_space


def _reduction_dims(node: Node) -> list[int]:
    src: Value = node.args[0]
    return reduction_dims(node.target, node.args, node.kwargs, src.type.rank)


@dataclass
class ReductionInfo:
    """Row/element layout of one reduction node."""

    node: Node
    dims: list[int]
    xnumel: int
    rnumel: int
    combine: str
    mean: bool

    @staticmethod
    def of(node: Node) -> "ReductionInfo":
        """Layout of reduction ``node``."""
        op = lookup(node.target)
        src: Value = node.args[0]
        dims = _reduction_dims(node)
        shape = src.type.shape
        rnumel = math.prod(shape[d] for d in dims)
        xnumel = math.prod(s for d, s in enumerate(shape) if d not in dims)
        return ReductionInfo(node, dims, xnumel, rnumel, op.combine or "sum", bool(op.extra.get("mean")))

    def input_index(self, x: Atom, r: Atom) -> tuple[Atom, ...]:
        """Canonical index into the reduction's input for row ``x`` and element ``r``."""
        shape = self.node.args[0].type.shape
        keep = [d for d in range(len(shape)) if d not in self.dims]
        xs = digits(x, [shape[d] for d in keep])
        rs = digits(r, [shape[d] for d in self.dims])
        idx: list[Atom] = [Const(0)] * len(shape)
        for d, a in zip(keep, xs):
            idx[d] = a
        for d, a in zip(self.dims, rs):
            idx[d] = a
        return tuple(idx)


_INIT = {"sum": "0", "max": 'float("-inf")', "min": 'float("inf")', "prod": "1"}


def _init_value(combine: str, dtype: torch.dtype) -> str:
    if not dtype.is_floating_point:
        if combine == "max":
            # NOTE: iinfo.min + 1 keeps the literal inside int64 (Triton parses -x as neg(x))
            return str(torch.iinfo(dtype).min + 1) if dtype != torch.bool else "0"
        if combine == "min":
            return str(torch.iinfo(dtype).max) if dtype != torch.bool else "1"
        return _INIT[combine]
    return _INIT[combine] if combine in ("max", "min") else f"{_INIT[combine]}.0"


def _reduce_call(combine: str, var: str, dtype: torch.dtype = torch.float32) -> str:
    """Reduce ``var`` over axis 1. Float max/min return NaN for a row holding NaN, like torch
    (``tl.max``/``tl.min`` skip NaN on GPUs and in the interpreter)."""
    if combine == "sum":
        return f"tl.sum({var}, 1)"
    if combine in ("max", "min"):
        call = f"tl.{combine}({var}, 1)"
        if dtype.is_floating_point:
            call = f"tl.where(tl.max(({var} != {var}).to(tl.int8), 1) != 0, float(\"nan\"), {call})"
        return call
    raise CodegenError(f"reduction combine '{combine}' is not supported in kernels")


def _combine(combine: str, acc: str, value: str) -> str:
    if combine == "sum":
        return f"{acc} + {value}"
    if combine == "max":
        return nan_max(acc, value)
    if combine == "min":
        return nan_min(acc, value)
    raise CodegenError(f"reduction combine '{combine}' is not supported in kernels")


class FusedKernelBuilder:
    """Builds the Triton source of a pointwise or reduction group."""

    def __init__(self, name: str, nodes: list[Node], materialize: set[int]) -> None:
        self.name = name
        self.nodes = nodes
        self.ids = {n.id for n in nodes}
        self.outputs = group_outputs(nodes, materialize)
        self.reductions = [ReductionInfo.of(n) for n in nodes if lookup(n.target).kind == "reduction"]

    # -- layout ------------------------------------------------------------------------
    def _layout(self) -> tuple[int, int]:
        if not self.reductions:
            numel = self.outputs[0].type.numel
            for n in self.nodes:
                for o in n.outputs:
                    if o.type.numel != numel:
                        raise CodegenError(f"pointwise group mixes {numel} and {o.type.numel} elements")
            return numel, 1
        first = self.reductions[0]
        for r in self.reductions[1:]:
            if (r.xnumel, r.rnumel) != (first.xnumel, first.rnumel):
                raise CodegenError("reductions of different row layouts in one kernel")
        return first.xnumel, first.rnumel

    def canonical(self, value: Value, x: Atom, r: Atom | None) -> tuple[Atom, ...]:
        """The index at which this kernel computes ``value``."""
        shape = value.type.shape
        if r is None:
            return digits(x, shape)
        first = self.reductions[0]
        xnumel, rnumel = first.xnumel, first.rnumel
        node = value.producer
        if node is not None and lookup(node.target).kind == "reduction":
            return digits(x, shape)
        numel = value.type.numel
        if numel == xnumel * rnumel and rnumel != 1:
            if shape == first.node.args[0].type.shape:
                return first.input_index(x, r)
            src_shape = first.node.args[0].type.shape
            if first.dims == list(range(len(src_shape) - len(first.dims), len(src_shape))):
                return digits(lin([x, r], [xnumel, rnumel]), shape)
            raise CodegenError(f"%{value.name} has no element index in a non-trailing reduction")
        if numel == xnumel:
            return digits(x, shape)
        raise CodegenError(f"%{value.name} ({numel} elements) does not fit rows {xnumel} x {rnumel}")

    # -- build -------------------------------------------------------------------------
    def build(self) -> KernelSource:
        """Generate the kernel; raises :class:`CodegenError` when the group is not expressible."""
        xnumel, rnumel = self._layout()
        if not self.reductions:
            source, inputs = self._build_pointwise(xnumel)
            space = pointwise_space(xnumel)
            grid = lambda c, n=xnumel: (cdiv(n, int(c["XBLOCK"])),)  # noqa: E731
            kind, dims = "pointwise", {"numel": xnumel}
            meta = {}
        else:
            source_p, inputs = self._build_reduction(xnumel, rnumel, persistent=True)
            source_l, _ = self._build_reduction(xnumel, rnumel, persistent=False)
            source = source_p + "\n\n" + source_l
            contiguous = self._contiguous_axis()
            meta = {"persistent_fn": self.name + "_persistent", "looped_fn": self.name + "_looped", "rnumel": rnumel,
                    "contiguous_axis": contiguous, "loop_passes": len(set(self._levels().values())) + 1}
            space = reduction_space(xnumel, rnumel, outer=contiguous == "x")
            grid = lambda c, n=xnumel: (cdiv(n, int(c["XBLOCK"])),)  # noqa: E731
            kind, dims = "reduction", {"rows": xnumel, "rnumel": rnumel}
        ops = [n.op for n in self.nodes]
        flops = sum(lookup(n.target).flops_per_element * max(o.type.numel for o in n.outputs) for n in self.nodes
                    if n.outputs)
        return KernelSource(self.name, kind, KERNEL_HEADER + source, self.name, inputs, self.outputs, space, grid, dims,
                            ops, float(flops), meta)

    def _signature(self, emitter: Emitter, extra: list[str]) -> str:
        params = [emitter.arg_names[v.id] for v in emitter.inputs.values()]
        params += [emitter.arg_name(v, "out") for v in self.outputs]
        return ", ".join(params + extra)

    def _build_pointwise(self, numel: int) -> tuple[str, list[Value]]:
        outer = Scope([])
        emitter = Emitter(self.ids, {"xindex": "xmask"}, lambda deps: outer)
        x = Var("xindex")
        for v in self.outputs:
            idx = self.canonical(v, x, None)
            expr = emitter.value(v, idx) if v.producer.id in self.ids else None
            assert expr is not None
            emitter.store(v, idx, expr, outer, "[XBLOCK]", frozenset(["xindex"]))
        inputs = list(emitter.inputs.values())
        body = [
            f"xoffset = tl.program_id(0){int64_cast(inputs + self.outputs, numel)} * XBLOCK",
            "xindex = xoffset + tl.arange(0, XBLOCK)",
            f"xmask = xindex < {numel}",
        ] + outer.lines
        sig = self._signature(emitter, ["XBLOCK: tl.constexpr"])
        return kernel_function(self.name, sig, body), inputs

    def _build_reduction(self, xnumel: int, rnumel: int, persistent: bool) -> tuple[str, list[Value]]:
        fn_name = self.name + ("_persistent" if persistent else "_looped")
        outer = Scope([])
        body_scope: list[Scope] = []

        def scope_for(deps: frozenset[str]) -> Scope:
            if "rindex" in deps and body_scope:
                return body_scope[-1]
            return outer

        results: dict[int, Expr] = {}
        x, r = Var("xindex"), Var("rindex")
        special: dict[int, Callable[[tuple[Atom, ...]], Expr | None]] = {}
        for info in self.reductions:
            out = info.node.outputs[0]
            canon = digits(x, out.type.shape)

            def lookup_acc(idx: tuple[Atom, ...], out: Value = out, canon: tuple[Atom, ...] = canon) -> Expr | None:
                if idx != canon:
                    return None
                if out.id not in results:
                    raise CodegenError(f"reduction %{out.name} used before it is computed")
                return results[out.id]

            special[out.id] = lookup_acc
        emitter = Emitter(self.ids, {"xindex": "xmask", "rindex": "rmask"}, scope_for, special)
        levels = self._levels()
        phases = sorted(set(levels.values()))
        element_outputs = [v for v in self.outputs if v.producer is not None and
                           lookup(v.producer.target).kind != "reduction" and "rindex" in depends(self.canonical(v, x, r))]
        row_outputs = [v for v in self.outputs if v not in element_outputs]
        for phase in phases:
            infos = [i for i in self.reductions if levels[i.node.id] == phase]
            self._emit_phase(emitter, infos, outer, body_scope, results, persistent, rnumel, x, r)
        if element_outputs:
            scope = Scope([]) if not persistent else outer
            if not persistent:
                body_scope.append(scope)
            for v in element_outputs:
                idx = self.canonical(v, x, r)
                expr = emitter.value(v, idx)
                emitter.store(v, idx, expr, scope, "[XBLOCK, RBLOCK]", frozenset(["xindex", "rindex"]))
            if not persistent:
                body_scope.pop()
                outer.lines.append(f"for roff in range(0, {rnumel}, RBLOCK):")
                outer.lines.append("    rindex = roff + rbase")
                outer.lines.append(f"    rmask = rindex < {rnumel}")
                outer.lines.extend("    " + line for line in scope.lines)
        for v in row_outputs:
            idx = self.canonical(v, x, r)
            expr = emitter.value(v, idx)
            emitter.store(v, idx, expr, outer, "[XBLOCK, 1]", frozenset(["xindex"]))
        wide = int64_cast(list(emitter.inputs.values()) + self.outputs, xnumel * rnumel)
        head = [
            f"xoffset = tl.program_id(0){wide} * XBLOCK",
            "xindex = xoffset + tl.arange(0, XBLOCK)[:, None]",
            f"xmask = xindex < {xnumel}",
            "rbase = tl.arange(0, RBLOCK)[None, :]",
        ]
        if wide:
            head[-1] = "rbase = tl.arange(0, RBLOCK)[None, :].to(tl.int64)"
        if persistent:
            head += ["rindex = rbase", f"rmask = rindex < {rnumel}"]
        sig = self._signature(emitter, ["XBLOCK: tl.constexpr", "RBLOCK: tl.constexpr"])
        return kernel_function(fn_name, sig, head + outer.lines), list(emitter.inputs.values())

    def _contiguous_axis(self) -> str:
        """``"r"`` when the reduced elements are contiguous in memory, ``"x"`` when rows are."""
        src: Value = self.reductions[0].node.args[0]
        dims = self.reductions[0].dims
        unit = [d for d, (size, stride) in enumerate(zip(src.type.shape, src.type.strides)) if stride == 1 and size > 1]
        if not unit or unit[-1] in dims:
            return "r"
        return "x"

    def _levels(self) -> dict[int, int]:
        """Dependency depth of each reduction among the group's reductions (1 = independent)."""
        red_ids = {i.node.id for i in self.reductions}
        memo: dict[int, int] = {}

        def depth(v: Value, seen: set[int]) -> int:
            node = v.producer
            if node is None or v.id in seen:
                return 0
            seen.add(v.id)
            if node.id not in self.ids and lookup(node.target).kind != "view":
                return 0
            best = 0
            for inp in node.inputs:
                best = max(best, depth(inp, seen))
            if node.id in red_ids:
                if node.id not in memo:
                    memo[node.id] = best + 1
                return memo[node.id]
            return best

        for info in self.reductions:
            memo[info.node.id] = max((depth(inp, set()) for inp in info.node.inputs), default=0) + 1
        return memo

    def _emit_phase(self, emitter: Emitter, infos: list[ReductionInfo], outer: Scope, body_scope: list[Scope],
                    results: dict[int, Expr], persistent: bool, rnumel: int, x: Atom, r: Atom) -> None:
        scope = outer if persistent else Scope([])
        if not persistent:
            body_scope.append(scope)
        finals: list[tuple[ReductionInfo, str, torch.dtype]] = []
        inits: list[str] = []
        for info in infos:
            src: Value = info.node.args[0]
            out = info.node.outputs[0]
            acc_dtype = compute_dtype(out.type.dtype)
            if acc_dtype == torch.bool or (not acc_dtype.is_floating_point and info.combine == "sum"):
                acc_dtype = torch.int64 if not acc_dtype.is_floating_point else acc_dtype
            idx = info.input_index(x, r)
            expr = emitter.value(src, idx)
            init = _init_value(info.combine, acc_dtype)
            if out.type.dtype == torch.bool and expr.dtype != torch.bool:  # any/all: truth, not truncation
                expr = Expr(f"({expr.code} != 0)", torch.bool, expr.deps)
            masked = f"tl.where(xmask & rmask, {cast_code(expr, acc_dtype)}, {init})"
            if "rindex" not in expr.deps or "xindex" not in expr.deps:
                masked = f"tl.where(xmask & rmask, {cast_code(expr, acc_dtype)} + tl.zeros([XBLOCK, RBLOCK], " \
                         f"{triton_dtype(acc_dtype)}), {init})"
            acc = emitter.tmp() + "_acc"
            if persistent:
                scope.lines.append(f"{acc} = {masked}")
            else:
                inits.append(f"{acc} = tl.full([XBLOCK, RBLOCK], {init}, {triton_dtype(acc_dtype)})")
                scope.lines.append(f"{acc} = {_combine(info.combine, acc, masked)}")
            finals.append((info, acc, acc_dtype))
        if not persistent:
            body_scope.pop()
            outer.lines.extend(inits)
            outer.lines.append(f"for roff in range(0, {rnumel}, RBLOCK):")
            outer.lines.append("    rindex = roff + rbase")
            outer.lines.append(f"    rmask = rindex < {rnumel}")
            outer.lines.extend("    " + line for line in scope.lines)
        for info, acc, acc_dtype in finals:
            name = emitter.tmp()
            value = f"{_reduce_call(info.combine, acc, acc_dtype)}[:, None]"
            if info.mean:
                value = f"{value} / {float(info.rnumel)!r}"
            outer.lines.append(f"{name} = {value}")
            out_cdt = compute_dtype(info.node.outputs[0].type.dtype)
            if out_cdt != acc_dtype:
                outer.lines.append(f"{name} = {name}.to({triton_dtype(out_cdt)})")
            results[info.node.outputs[0].id] = Expr(name, out_cdt, frozenset(["xindex"]))
