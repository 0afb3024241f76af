"""Expression emitter: turns the nodes of one fused group into Triton code at given indices.

Every value is computed *at a multi-index* (see :mod:`tilewright.codegen.indexing`). Values
produced inside the group are computed from their registry scalar bodies; views of in-group
values become index transforms; everything else is loaded from its buffer through its own
strides. Results are memoised per (value, index, guard), so a value used twice at the same
index is computed once. The emitter knows nothing about loops: the kernel builders decide
where code goes through :meth:`Emitter.scope_for`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..ir.graph import Node, Value
from ..ir.registry import lookup, packet_name
from ..ir.types import compute_dtype, triton_dtype
from .indexing import Affine, Atom, Const, Dyn, broadcast_index, depends, offset_code
from .views import view_input_index


class CodegenError(RuntimeError):
    """The group cannot be expressed as one kernel (the fusion pass then keeps it apart)."""


@dataclass
class Expr:
    """An emitted value: its code (a variable or literal), compute dtype and index deps."""

    code: str
    dtype: torch.dtype
    deps: frozenset[str] = frozenset()


def literal(value: Any) -> str:
    """Triton source for a Python scalar."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        if math.isnan(value):
            return 'float("nan")'
        return repr(value)
    if isinstance(value, int):
        return str(value)
    raise CodegenError(f"unsupported scalar argument {value!r}")


def _scalar_dtype(value: Any) -> torch.dtype:
    if isinstance(value, bool):
        return torch.bool
    if isinstance(value, int):
        return torch.int64
    return torch.float32


def cast_code(expr: Expr, dtype: torch.dtype) -> str:
    """Code converting ``expr`` to ``dtype`` (no-op when equal)."""
    if expr.dtype == dtype:
        return expr.code
    if dtype == torch.bool:
        return f"({expr.code} != 0)"
    return f"{expr.code}.to({triton_dtype(dtype)})"


@dataclass
class Scope:
    """Where emitted lines go and the memo that is valid there."""

    lines: list[str]
    memo: dict[Any, Expr] = field(default_factory=dict)


class Emitter:
    """Emits the computation of values of one group.

    Args:
        group: ids of the nodes computed by this kernel.
        var_masks: index variable -> mask code (``xindex -> xmask``).
        scope_for: picks the :class:`Scope` for code depending on a set of variables.
        special: value id -> callable(idx) returning an Expr or None (reduction accumulators,
            the matmul accumulator), consulted before computing a value.
    """

    def __init__(self, group: set[int], var_masks: dict[str, str],
                 scope_for: Callable[[frozenset[str]], Scope],
                 special: dict[int, Callable[[tuple[Atom, ...]], Expr | None]] | None = None) -> None:
        self.group = group
        self.var_masks = var_masks
        self.scope_for = scope_for
        self.special = special or {}
        self.inputs: dict[int, Value] = {}
        self.arg_names: dict[int, str] = {}
        self._counter = 0

    # -- names ---------------------------------------------------------------------------
    def tmp(self) -> str:
        """A fresh temporary name."""
        self._counter += 1
        return f"t{self._counter}"

    def arg_name(self, v: Value, prefix: str = "in") -> str:
        """The kernel parameter name of buffer ``v``."""
        if v.id not in self.arg_names:
            self.arg_names[v.id] = f"{prefix}{len(self.arg_names)}_{v.name}"[:48]
            if prefix == "in":
                self.inputs[v.id] = v
        return self.arg_names[v.id]

    def mask_for(self, deps: frozenset[str]) -> str | None:
        """AND of the masks of ``deps`` (None when no variable is involved)."""
        masks = [self.var_masks[d] for d in sorted(deps) if d in self.var_masks]
        return " & ".join(masks) if masks else None

    def in_group(self, v: Value) -> bool:
        """True when ``v`` is computed by this kernel (directly, not through a view)."""
        return v.producer is not None and v.producer.id in self.group

    def root_in_group(self, v: Value) -> bool:
        """True when ``v`` is computed here, possibly through a chain of views."""
        while v.producer is not None and lookup(v.producer.target).kind == "view" and v.producer.id not in self.group:
            v = v.producer.args[0]
        return self.in_group(v)

    # -- values --------------------------------------------------------------------------
    def value(self, v: Value, idx: Sequence[Atom], guard: tuple[str, frozenset[str]] | None = None) -> Expr:
        """The Expr of ``v`` at multi-index ``idx`` (``guard``: extra load condition)."""
        idx = tuple(idx)
        if len(idx) != len(v.type.shape):
            raise CodegenError(f"index of rank {len(idx)} for %{v.name} of shape {list(v.type.shape)}")
        special = self.special.get(v.id)
        if special is not None:
            result = special(idx)
            if result is None:
                raise CodegenError(f"%{v.name} is used at an index other than the one this kernel computes")
            return result
        deps = depends(idx) | (guard[1] if guard else frozenset())
        scope = self.scope_for(deps)
        key = (v.id, idx, guard[0] if guard else None)
        if key in scope.memo:
            return scope.memo[key]
        if self.in_group(v):
            expr = self.compute(v.producer, v, idx, guard)
        elif v.producer is not None and lookup(v.producer.target).kind == "view" and self.root_in_group(v):
            src_idx = view_input_index(v.producer, v, idx)
            if src_idx is None:
                raise CodegenError(f"view {v.producer.op} of an in-kernel value has no index transform")
            expr = self.value(v.producer.args[0], src_idx, guard)
        else:
            expr = self.load(v, idx, guard)
        scope.memo[key] = expr
        return expr

    def load(self, v: Value, idx: tuple[Atom, ...], guard: tuple[str, frozenset[str]] | None) -> Expr:
        """Load ``v`` from its buffer at ``idx``."""
        ptr = self.arg_name(v)
        deps = depends(idx)
        off = offset_code(idx, v.type.strides)
        mask_deps = deps | (guard[1] if guard else frozenset())
        mask = self.mask_for(mask_deps)
        if guard:
            mask = f"({guard[0]})" + (f" & {mask}" if mask else "")
        for missing in sorted(mask_deps - deps):
            off = f"{off} + 0 * {missing}"
        dtype = v.type.dtype
        name = self.tmp()
        scope = self.scope_for(mask_deps)
        if mask:
            other = "0" if not dtype.is_floating_point else "0.0"
            scope.lines.append(f"{name} = tl.load({ptr} + ({off}), mask={mask}, other={other})")
        else:
            scope.lines.append(f"{name} = tl.load({ptr} + ({off}))")
        cdt = compute_dtype(dtype)
        if cdt != dtype:
            scope.lines.append(f"{name} = {name}.to({triton_dtype(cdt)})")
        return Expr(name, cdt, mask_deps)

    def _operand(self, arg: Any, out_shape: tuple[int, ...], idx: tuple[Atom, ...],
                 guard: tuple[str, frozenset[str]] | None) -> Expr:
        if isinstance(arg, Value):
            return self.value(arg, broadcast_index(idx, out_shape, arg.type.shape), guard)
        if arg is None:
            return Expr("None", torch.float32)
        return Expr(literal(arg), _scalar_dtype(arg))

    def _assign(self, code: str, dtype: torch.dtype, deps: frozenset[str]) -> Expr:
        name = self.tmp()
        self.scope_for(deps).lines.append(f"{name} = {code}")
        return Expr(name, dtype, deps)

    def compute(self, node: Node, out: Value, idx: tuple[Atom, ...],
                guard: tuple[str, frozenset[str]] | None) -> Expr:
        """Emit ``node``'s pointwise computation of ``out`` at ``idx``."""
        op = lookup(node.target)
        name = packet_name(node.target)
        out_dtype = out.type.dtype
        cdt = compute_dtype(out_dtype)
        if op.kind != "pointwise":
            raise CodegenError(f"{node.op} cannot be computed inside a {op.kind} position")
        if op.extra.get("iota"):
            return self._iota(node, name, idx, cdt)
        if op.extra.get("gather"):
            return self._gather(node, out, idx, guard)
        if op.extra.get("concat"):
            return self._concat(node, out, idx, guard)
        if op.extra.get("indexing"):
            return self._indexing(node, out, idx, guard, op.extra["indexing"])
        if op.extra.get("window"):
            return self._window(node, out, idx, guard, op.extra["window"])
        if name in ("aten.full", "aten.scalar_tensor"):
            fill = node.args[1] if name == "aten.full" else node.args[0]
            return Expr(self._typed_literal(literal(fill), out_dtype),
                        torch.bool if out_dtype == torch.bool else cdt, frozenset())
        shape = out.type.shape
        operands = [self._operand(a, shape, idx, guard) for a in node.args]
        deps = frozenset().union(*(o.deps for o in operands)) if operands else frozenset()
        codes = self._cast_operands(op.cast, operands, node.args, cdt)
        kwargs = {k: v for k, v in node.kwargs.items() if not isinstance(v, Value)}
        if any(isinstance(v, Value) for v in node.kwargs.values()):
            raise CodegenError(f"{node.op} has tensor keyword arguments")
        assert op.scalar is not None
        code = op.scalar(codes, kwargs)
        result_dtype = torch.bool if out_dtype == torch.bool else cdt
        if name in ("aten._to_copy", "prims.convert_element_type", "aten.clone", "aten.copy",
                    "aten.lift_fresh_copy"):
            src = operands[1] if name == "aten.copy" else operands[0]
            code = self._convert(src, out_dtype)
        elif op.cast == "promote" or name in ("aten.logical_not", "aten.logical_and", "aten.logical_or",
                                              "aten.isnan"):
            result_dtype = torch.bool
        return self._assign(code, result_dtype, deps)

    def store(self, v: Value, idx: tuple[Atom, ...], expr: Expr, scope: Scope, tile: str,
              domain: frozenset[str]) -> None:
        """Emit the masked store of ``expr`` into output buffer ``v`` at ``idx``.

        ``tile`` is the kernel's full tile shape and ``domain`` the index variables spanning
        it: the store is always masked by the whole domain (lanes outside the problem must
        never write, even when the index ignores them, e.g. a size-1 dimension), and values
        that depend on fewer variables are broadcast to the tile.
        """
        ptr = self.arg_name(v, "out")
        deps = depends(idx) | domain
        off = offset_code(idx, v.type.strides)
        for missing in sorted(deps - depends(idx)):
            off = f"{off} + 0 * {missing}"
        mask = self.mask_for(deps)
        dtype = v.type.dtype
        val = f"({expr.code} != 0)" if dtype == torch.bool else cast_code(expr, dtype)
        if not expr.deps >= deps:
            cdt = compute_dtype(dtype) if dtype != torch.bool else torch.int32
            wide = f"(tl.zeros({tile}, {triton_dtype(cdt)}) + {cast_code(expr, cdt)})"
            val = f"({wide} != 0)" if dtype == torch.bool else cast_code(Expr(wide, cdt), dtype)
        scope.lines.append(f"tl.store({ptr} + ({off}), {val}" + (f", mask={mask})" if mask else ")"))

    # -- helpers for special pointwise ops ----------------------------------------------------
    def _cast_operands(self, mode: str, operands: list[Expr], args: Sequence[Any], cdt: torch.dtype) -> list[str]:
        is_tensor = [isinstance(a, Value) for a in args]
        if mode == "out":
            return [cast_code(o, cdt) if t else o.code for o, t in zip(operands, is_tensor)]
        if mode == "promote":
            tensors = [a for a in args if isinstance(a, Value)]
            scalars = [a for a in args if not isinstance(a, Value) and isinstance(a, (int, float, bool))]
            metas = [torch.empty((1,), dtype=t.type.dtype, device="meta") for t in tensors]
            promoted = torch.result_type(*(metas + scalars)) if len(metas) + len(scalars) >= 2 else tensors[0].type.dtype
            pdt = compute_dtype(promoted)
            return [cast_code(o, pdt) if t else o.code for o, t in zip(operands, is_tensor)]
        if mode == "where":
            return [operands[0].code] + [cast_code(o, cdt) if t else o.code
                                         for o, t in zip(operands[1:], is_tensor[1:])]
        if mode == "masked_fill":
            codes = [o.code for o in operands]
            if is_tensor[0]:
                codes[0] = cast_code(operands[0], cdt)
            if len(codes) > 2 and is_tensor[2]:
                codes[2] = cast_code(operands[2], cdt)
            return codes
        return [o.code for o in operands]

    def _convert(self, src: Expr, out_dtype: torch.dtype) -> str:
        cdt = compute_dtype(out_dtype)
        if out_dtype == torch.bool:
            return f"({src.code} != 0)"
        code = cast_code(src, out_dtype if out_dtype != cdt else cdt)
        if out_dtype != cdt:  # round through the narrow type, as eager does on a cast
            code = f"{code}.to({triton_dtype(cdt)})"
        return code

    def _typed_literal(self, code: str, dtype: torch.dtype) -> str:
        if dtype == torch.bool:
            return "1" if code not in ("0", "0.0", "False") else "0"
        if dtype.is_floating_point and not any(c in code for c in ".e") and "float" not in code:
            return f"{code}.0"
        if not dtype.is_floating_point and "." in code:
            return str(int(float(code)))
        return code

    def _iota(self, node: Node, name: str, idx: tuple[Atom, ...], cdt: torch.dtype) -> Expr:
        if name == "aten.arange":
            overload = node.target._overloadname
            if overload == "default":
                start, step = 0, 1
            elif overload == "start":
                start, step = node.args[0], 1
            else:
                start, step = node.args[0], node.args[2] if len(node.args) > 2 else 1
        else:  # prims.iota(length, *, start, step, ...)
            start, step = node.kwargs.get("start", 0), node.kwargs.get("step", 1)
        atom = idx[0]
        deps = atom.vars()
        code = atom.code()
        if cdt.is_floating_point:
            code = f"({code}).to({triton_dtype(cdt)})"
        code = f"({code}) * {literal(step)} + {literal(start)}"
        if isinstance(atom, Const):
            return Expr(f"({code})", cdt, frozenset())
        return self._assign(code if cdt.is_floating_point else f"({code}).to({triton_dtype(cdt)})", cdt, deps)

    def _gather(self, node: Node, out: Value, idx: tuple[Atom, ...],
                guard: tuple[str, frozenset[str]] | None) -> Expr:
        weight, indices = node.args[0], node.args[1]
        if not isinstance(weight, Value) or not isinstance(indices, Value) or weight.type.rank != 2:
            raise CodegenError("embedding needs a 2-D weight and an index tensor")
        index_expr = self.value(indices, idx[:-1], guard)
        row = Dyn(index_expr.code, index_expr.deps)
        return self.value(weight, (row, idx[-1]), guard)

    def _indexing(self, node: Node, out: Value, idx: tuple[Atom, ...],
                  guard: tuple[str, frozenset[str]] | None, kind: str) -> Expr:
        """gather / index_select (indirect loads) and slice/select_scatter (guarded selects)."""
        src: Value = node.args[0]
        rank = out.type.rank
        cdt = compute_dtype(out.type.dtype)

        def norm(d: int) -> int:
            return d + max(rank, 1) if d < 0 else d

        if kind == "index":  # advanced indexing x[..., i0, i1, ...] with consecutive index tensors
            indices = list(node.args[1])
            used = [i for i, t in enumerate(indices) if t is not None]
            if not used or used != list(range(used[0], used[-1] + 1)) or \
                    not all(isinstance(indices[i], Value) for i in used):
                raise CodegenError("index with non-consecutive or non-tensor indices is not generated")
            first = used[0]
            bshape = tuple(torch.broadcast_shapes(*(indices[i].type.shape for i in used)))
            ib = len(bshape)
            at = idx[first:first + ib]
            src_idx = list(idx[:first])
            for i in used:
                t = indices[i]
                pos = self.value(t, broadcast_index(at, bshape, t.type.shape), guard)
                if t.type.dtype == torch.bool:
                    raise CodegenError("boolean mask indexing is not generated")
                src_idx.append(Dyn(f"tl.where({pos.code} < 0, {pos.code} + {src.type.shape[i]}, {pos.code})", pos.deps))
            src_idx.extend(idx[first + ib:])
            return self.value(src, tuple(src_idx), guard)
        if kind in ("gather", "index_select"):
            dim = norm(node.args[1])
            index: Value = node.args[2]
            if not isinstance(index, Value):
                raise CodegenError(f"{kind} needs a tensor index")
            at = idx if kind == "gather" else (idx[dim],)
            if kind == "gather" and index.type.rank == 0:
                at = ()
            pos = self.value(index, at, guard)
            src_idx = list(idx)
            if src.type.rank:
                src_idx[dim] = Dyn(pos.code, pos.deps)
            return self.value(src, tuple(src_idx), guard)
        if kind == "slice_scatter":
            value: Value = node.args[1]
            dim = norm(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0))
            size = src.type.shape[dim]
            start = node.args[3] if len(node.args) > 3 else node.kwargs.get("start")
            end = node.args[4] if len(node.args) > 4 else node.kwargs.get("end")
            step = node.args[5] if len(node.args) > 5 else node.kwargs.get("step", 1)
            start = 0 if start is None else (start + size if start < 0 else start)
            end = size if end is None else min(size, end + size if end < 0 else end)
            pos = idx[dim].code()
            cond = f"({pos} >= {start}) & ({pos} < {end})"
            if step != 1:
                cond += f" & ((({pos}) - {start}) % {step} == 0)"
            inner = Dyn(f"((({pos}) - {start}) // {step})", idx[dim].vars()) if step != 1 else Affine(idx[dim], 1, -start)
        elif kind == "select_scatter":
            value = node.args[1]
            dim = norm(node.args[2])
            index_ = node.args[3] + (src.type.shape[dim] if node.args[3] < 0 else 0)
            pos = idx[dim].code()
            cond = f"({pos} == {index_})"
            inner = None
        else:  # pragma: no cover - registry and emitter disagree
            raise CodegenError(f"unknown indexing op {kind}")
        deps = idx[dim].vars() | (guard[1] if guard else frozenset())
        sub_guard = ((f"({guard[0]}) & " if guard else "") + f"({cond})", deps)
        if inner is None:
            value_idx = tuple(idx[:dim]) + tuple(idx[dim + 1:])
        else:
            value_idx = tuple(idx[:dim]) + (inner,) + tuple(idx[dim + 1:])
        new = self.value(value, value_idx, sub_guard)
        old = self.value(src, idx, guard)
        all_deps = new.deps | old.deps | idx[dim].vars()
        return self._assign(f"tl.where({cond}, {cast_code(new, cdt)}, {cast_code(old, cdt)})", cdt, all_deps)

    def _window(self, node: Node, out: Value, idx: tuple[Atom, ...],
                guard: tuple[str, frozenset[str]] | None, mode: str) -> Expr:
        """2-D pooling: the window is unrolled; out-of-bounds taps are masked loads."""
        if out.index != 0:
            raise CodegenError("pooling indices are not generated in kernels")
        x: Value = node.args[0]
        args = list(node.args) + [None] * 7

        def pair(v: Any, default: Any) -> tuple[int, int]:
            if v is None or v == []:
                v = default
            v = [v] if isinstance(v, int) else list(v)
            return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])

        kh, kw = pair(args[1], None)
        sh, sw = pair(args[2], [kh, kw])
        ph, pw = pair(args[3], 0)
        if mode == "max":
            dh, dw = pair(args[4], 1)
            ceil_mode = bool(args[5])
        else:
            dh, dw = 1, 1
            ceil_mode = bool(args[4])
            count_include_pad = True if args[5] is None else bool(args[5])
            if args[6] is not None:
                raise CodegenError("avg_pool2d with divisor_override is not generated")
        if ceil_mode and mode == "avg":
            raise CodegenError("avg_pool2d with ceil_mode is not generated")
        h, w = x.type.shape[-2], x.type.shape[-1]
        oh, ow = idx[-2], idx[-1]
        cdt = compute_dtype(x.type.dtype)
        taps: list[tuple[Expr, str]] = []
        for i in range(kh):
            for j in range(kw):
                ih = Affine(oh, sh, i * dh - ph)
                iw = Affine(ow, sw, j * dw - pw)
                cond = f"({ih.code()} >= 0) & ({ih.code()} < {h}) & ({iw.code()} >= 0) & ({iw.code()} < {w})"
                full_cond = f"({guard[0]}) & {cond}" if guard else cond
                deps = oh.vars() | ow.vars() | (guard[1] if guard else frozenset())
                tap = self.value(x, tuple(idx[:-2]) + (ih, iw), (full_cond, deps))
                taps.append((tap, cond))
        deps = frozenset().union(*(t.deps for t, _ in taps))
        if mode == "max":
            acc = None
            for tap, cond in taps:
                term = f"tl.where({cond}, {cast_code(tap, cdt)}, float('-inf'))"
                acc = term if acc is None else f"tl.maximum({acc}, {term})"
            return self._assign(str(acc), cdt, deps)
        total = " + ".join(f"tl.where({cond}, {cast_code(tap, cdt)}, 0.0)" for tap, cond in taps)
        if count_include_pad:
            divisor = str(float(kh * kw))
        else:
            divisor = "(" + " + ".join(f"tl.where({cond}, 1.0, 0.0)" for _, cond in taps) + ")"
        return self._assign(f"({total}) / {divisor}", cdt, deps)

    def _concat(self, node: Node, out: Value, idx: tuple[Atom, ...],
                guard: tuple[str, frozenset[str]] | None) -> Expr:
        tensors = [t for t in node.args[0] if t.type.numel > 0 or t.type.rank == out.type.rank]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim < 0:
            dim += out.type.rank
        pos = idx[dim]
        pos_code = pos.code()
        cdt = compute_dtype(out.type.dtype)
        pieces: list[tuple[str | None, Expr]] = []
        offset = 0
        for i, t in enumerate(tensors):
            size = t.type.shape[dim]
            if size == 0:
                continue
            cond = None if i == len(tensors) - 1 else f"({pos_code} < {offset + size})"
            lower = f"({pos_code} >= {offset})" if offset else None
            parts = [p for p in (lower, cond) if p]
            sub_guard_code = " & ".join(parts)
            if guard:
                sub_guard_code = f"({guard[0]})" + (f" & {sub_guard_code}" if sub_guard_code else "")
            sub_guard = (sub_guard_code, (guard[1] if guard else frozenset()) | pos.vars()) if sub_guard_code else guard
            sub_idx = list(idx)
            sub_idx[dim] = Affine(pos, 1, -offset) if offset else pos
            pieces.append((cond, self.value(t, sub_idx, sub_guard)))
            offset += size
        result = cast_code(pieces[-1][1], cdt)
        deps = frozenset().union(*(p[1].deps for p in pieces)) | pos.vars()
        for cond, expr in reversed(pieces[:-1]):
            result = f"tl.where({cond}, {cast_code(expr, cdt)}, {result})"
        return self._assign(result, cdt, deps)
