"""Triton code for the pointwise ops that are more than a scalar expression.

Generators (``arange``/``iota``), gathers (``embedding``, ``gather``, ``index_select``,
advanced ``index``), guarded selects (``cat``, ``slice_scatter``, ``select_scatter``,
``constant_pad_nd``, one-index-per-row ``scatter``) and sliding windows (2-D max/avg pooling,
max-pool backward). They are methods of the
:class:`~tilewright.targets.triton.emit.emitter.Emitter` (through this mixin) because they emit their
operands at transformed indices with the emitter's own ``value``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ....ir.graph import Node, Value
from ....ir.registry import nan_max
from ....ir.types import compute_dtype, triton_dtype
from .expr import CodegenError, Expr, cast_code, literal
from .indexing import Affine, Atom, Const, Dyn, broadcast_index, lin

if TYPE_CHECKING:
    from .expr import Scope  # noqa: F401


def _pair(v: Any, default: Any) -> tuple[int, int]:
    """A 2-D pooling argument (int, one- or two-element list; empty/None means ``default``)."""
    if v is None or v == []:
        v = default
    v = [v] if isinstance(v, int) else list(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


#: An emission guard: (mask code, the index variables it depends on), or None.
Guard = tuple[str, frozenset[str]] | None


def _norm_dim(d: int, rank: int) -> int:
    """``d`` as a non-negative dim of a rank-``rank`` tensor (rank 0 counts as 1)."""
    return d + max(rank, 1) if d < 0 else d


def _slice_selection(node: Node, src: Value, rank: int, idx: tuple[Atom, ...]) -> tuple[int, str, Atom]:
    """slice_scatter's dim, the condition that the index along it is in the slice, and the
    matching index into the scattered value."""
    dim = _norm_dim(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0), rank)
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
    return dim, cond, inner


class SpecialOpsMixin:
    """Emission of the special pointwise ops (mixed into the Emitter)."""

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
        if not deps:  # one element (a Python constant index): a typed scalar tensor, computed like eager
            if not isinstance(atom, Const):
                raise CodegenError(f"arange at a constant index {atom.code()} that is not a literal")
            value = start + atom.value * step
            fill = float(value) if cdt.is_floating_point else int(value)
            return self._assign(f"tl.full([], {literal(fill)}, {triton_dtype(cdt)})", cdt, frozenset())
        code = atom.code()
        if cdt.is_floating_point:
            code = f"({code}).to({triton_dtype(cdt)})"
        code = f"({code}) * {literal(step)} + {literal(start)}"
        return self._assign(code if cdt.is_floating_point else f"({code}).to({triton_dtype(cdt)})", cdt, deps)

    def _gather(self, node: Node, out: Value, idx: tuple[Atom, ...],
                guard: tuple[str, frozenset[str]] | None) -> Expr:
        weight, indices = node.args[0], node.args[1]
        if not isinstance(weight, Value) or not isinstance(indices, Value) or weight.type.rank != 2:
            raise CodegenError("embedding needs a 2-D weight and an index tensor")
        index_expr = self.value(indices, idx[:-1], guard)
        row = Dyn(index_expr.code, index_expr.deps)
        return self.value(weight, (row, idx[-1]), guard)

    def _random_mask(self, node: Node, out: Value, idx: tuple[Atom, ...],
                     guard: tuple[str, frozenset[str]] | None) -> Expr:
        """Dropout keep-mask: ``tl.rand(seed, linear index) >= p`` (Philox, as on the GPU)."""
        seed_value, p = node.args[1], float(node.args[2])
        if not isinstance(seed_value, Value):
            raise CodegenError("dropout mask needs a seed tensor")
        seed = self.value(seed_value, tuple(Const(0) for _ in seed_value.type.shape), guard)
        offset = lin(idx, out.type.shape)
        deps = offset.vars()
        itype = rng_offset_type(out.type.numel)
        offsets = f"({offset.code()}).to({itype})" if deps else f"tl.full([], {offset.code()}, {itype})"
        return self._assign(f"tl.rand({seed.code}, {offsets}) >= {p!r}", torch.bool, deps | seed.deps)

    def _indexing(self, node: Node, out: Value, idx: tuple[Atom, ...],
                  guard: Guard, kind: str) -> Expr:
        """gather / index_select (indirect loads) and slice/select_scatter (guarded selects)."""
        src: Value = node.args[0]
        rank = out.type.rank
        cdt = compute_dtype(out.type.dtype)
        if kind == "constant_pad_nd":
            return self._constant_pad(node, src, rank, idx, guard, cdt)
        if kind == "scatter":
            return self._scatter_one(node, src, rank, idx, guard, cdt)
        if kind == "index":
            return self._advanced_index(node, src, idx, guard)
        if kind in ("gather", "index_select"):
            return self._gather_along(node, src, rank, idx, guard, kind)
        if kind in ("slice_scatter", "select_scatter"):
            return self._select_scatter(node, src, rank, idx, guard, cdt, kind)
        raise CodegenError(f"unknown indexing op {kind}")  # pragma: no cover - registry and emitter disagree

    def _constant_pad(self, node: Node, src: Value, rank: int, idx: tuple[Atom, ...],
                      guard: Guard, cdt: torch.dtype) -> Expr:
        """constant_pad_nd: the source at shifted indices inside it, the fill value outside."""
        pad = list(node.args[1])
        fill = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
        src_idx = list(idx)
        conds: list[str] = []
        for k in range(len(pad) // 2):
            d = rank - 1 - k
            before = pad[2 * k]
            pos = Affine(idx[d], 1, -before) if before else idx[d]
            src_idx[d] = pos
            conds.append(f"({pos.code()} >= 0) & ({pos.code()} < {src.type.shape[d]})")
        cond = " & ".join(conds) or "True"
        deps = frozenset().union(*(a.vars() for a in idx)) | (guard[1] if guard else frozenset())
        inner = self.value(src, tuple(src_idx), ((f"({guard[0]}) & " if guard else "") + f"({cond})", deps))
        return self._assign(f"tl.where({cond}, {cast_code(inner, cdt)}, {literal(fill)})", cdt, inner.deps | deps)

    def _scatter_one(self, node: Node, src: Value, rank: int, idx: tuple[Atom, ...],
                     guard: Guard, cdt: torch.dtype) -> Expr:
        """scatter(self, dim, index, value) with one index per row along dim."""
        dim = _norm_dim(node.args[1], rank)
        index = node.args[2]
        fill = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        reduce = node.kwargs.get("reduce")
        if not isinstance(index, Value) or isinstance(fill, Value) or fill is None or reduce is not None:
            raise CodegenError("only scatter with a scalar value and no reduce is generated")
        ishape = list(index.type.shape)
        if ishape[dim] != 1 or [s for i, s in enumerate(ishape) if i != dim] != \
                [s for i, s in enumerate(src.type.shape) if i != dim]:
            raise CodegenError("scatter needs one index per row along its dim")
        at = list(idx)
        at[dim] = Const(0)
        target = self.value(index, tuple(at), guard)
        old = self.value(src, idx, guard)
        hit = f"({target.code} == {idx[dim].code()})"
        return self._assign(f"tl.where({hit}, {literal(fill)}, {cast_code(old, cdt)})", cdt,
                            target.deps | old.deps | idx[dim].vars())

    def _advanced_index(self, node: Node, src: Value, idx: tuple[Atom, ...], guard: Guard) -> Expr:
        """Advanced indexing x[..., i0, i1, ...] with consecutive index tensors."""
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

    def _gather_along(self, node: Node, src: Value, rank: int, idx: tuple[Atom, ...],
                      guard: Guard, kind: str) -> Expr:
        """gather / index_select: the source loaded at the index tensor's value along dim."""
        dim = _norm_dim(node.args[1], rank)
        index: Value = node.args[2]
        if not isinstance(index, Value):
            raise CodegenError(f"{kind} needs a tensor index")
        at = idx if kind == "gather" else (idx[dim],) if rank else (Const(0),) * index.type.rank
        if kind == "gather" and index.type.rank == 0:
            at = ()
        pos = self.value(index, at, guard)
        src_idx = list(idx)
        if src.type.rank:
            src_idx[dim] = Dyn(pos.code, pos.deps)
        return self.value(src, tuple(src_idx), guard)

    def _select_scatter(self, node: Node, src: Value, rank: int, idx: tuple[Atom, ...],
                        guard: Guard, cdt: torch.dtype, kind: str) -> Expr:
        """slice_scatter / select_scatter: the value where the index along dim is selected, the
        source elsewhere."""
        value: Value = node.args[1]
        if kind == "slice_scatter":
            dim, cond, inner = _slice_selection(node, src, rank, idx)
        else:
            dim = _norm_dim(node.args[2], rank)
            index_ = node.args[3] + (src.type.shape[dim] if node.args[3] < 0 else 0)
            pos = idx[dim].code()
            cond = f"({pos} == {index_})"
            inner = None
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

    def _window_backward(self, node: Node, out: Value, idx: tuple[Atom, ...],
                         guard: tuple[str, frozenset[str]] | None) -> Expr:
        """max_pool2d backward as a gather: each input position sums the output gradients of the
        windows that contain it and chose it as their maximum."""
        grad, x = node.args[0], node.args[1]
        args = list(node.args) + [None] * 8
        indices = args[7]
        if not isinstance(indices, Value) or not isinstance(grad, Value):
            raise CodegenError("max_pool2d backward needs its indices")

        kh, kw = _pair(args[2], None)
        sh, sw = _pair(args[3], [kh, kw])
        ph, pw = _pair(args[4], 0)
        dh, dw = _pair(args[5], 1)
        oh_size, ow_size = grad.type.shape[-2], grad.type.shape[-1]
        w = x.type.shape[-1]
        ih, iw = idx[-2], idx[-1]
        cdt = compute_dtype(out.type.dtype)
        base_deps = ih.vars() | iw.vars() | (guard[1] if guard else frozenset())
        terms: list[str] = []
        deps = base_deps
        for i in range(kh):
            for j in range(kw):
                num_h = f"(({ih.code()}) + {ph - i * dh})"
                num_w = f"(({iw.code()}) + {pw - j * dw})"
                cond = (f"({num_h} >= 0) & ({num_h} % {sh} == 0) & ({num_h} // {sh} < {oh_size}) & "
                        f"({num_w} >= 0) & ({num_w} % {sw} == 0) & ({num_w} // {sw} < {ow_size})")
                at = tuple(idx[:-2]) + (Dyn(f"({num_h} // {sh})", ih.vars()), Dyn(f"({num_w} // {sw})", iw.vars()))
                sub_guard = ((f"({guard[0]}) & " if guard else "") + f"({cond})", base_deps)
                g = self.value(grad, at, sub_guard)
                chosen = self.value(indices, at, sub_guard)
                deps = deps | g.deps | chosen.deps
                terms.append(f"tl.where(({cond}) & ({chosen.code} == ({ih.code()}) * {w} + ({iw.code()})), "
                             f"{cast_code(g, cdt)}, 0.0)")
        return self._assign(" + ".join(terms), cdt, deps)

    def _window(self, node: Node, out: Value, idx: tuple[Atom, ...],
                guard: tuple[str, frozenset[str]] | None, mode: str) -> Expr:
        """2-D pooling: the window is unrolled; out-of-bounds taps are masked loads.

        For max pooling, output 1 is the argmax as a flat index into the input plane (the
        first maximum in window order wins, as in eager).
        """
        x: Value = node.args[0]
        args = list(node.args) + [None] * 7

        kh, kw = _pair(args[1], None)
        sh, sw = _pair(args[2], [kh, kw])
        ph, pw = _pair(args[3], 0)
        if mode == "max":
            dh, dw = _pair(args[4], 1)
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
        flats: list[str] = []
        for i in range(kh):
            for j in range(kw):
                ih = Affine(oh, sh, i * dh - ph)
                iw = Affine(ow, sw, j * dw - pw)
                cond = f"({ih.code()} >= 0) & ({ih.code()} < {h}) & ({iw.code()} >= 0) & ({iw.code()} < {w})"
                full_cond = f"({guard[0]}) & {cond}" if guard else cond
                deps = oh.vars() | ow.vars() | (guard[1] if guard else frozenset())
                tap = self.value(x, tuple(idx[:-2]) + (ih, iw), (full_cond, deps))
                taps.append((tap, cond))
                flats.append(f"({ih.code()}) * {w} + ({iw.code()})")
        deps = frozenset().union(*(t.deps for t, _ in taps))
        if mode == "max" and out.index == 1:
            first_h, first_w = Affine(oh, sh, -ph).code(), Affine(ow, sw, -pw).code()
            best = self._assign(f"tl.where({taps[0][1]}, {cast_code(taps[0][0], cdt)}, float('-inf'))", cdt, deps)
            # int64 by promotion (the index may be a Python constant, which has no .to())
            where = self._assign(f"(tl.zeros([], tl.int64) + (tl.maximum({first_h}, 0) * {w} + "
                                 f"tl.maximum({first_w}, 0)))",
                                 torch.int64, deps)
            for (tap, cond), flat in zip(taps, flats):
                # like eager: a NaN tap always wins (the last NaN of the window), so NaN propagates
                value = cast_code(tap, cdt)
                better = f"({cond}) & (({value} > {best.code}) | ({value} != {value}))"
                where = self._assign(f"tl.where({better}, tl.zeros([], tl.int64) + ({flat}), {where.code})",
                                     torch.int64, deps)
                best = self._assign(f"tl.where({better}, {cast_code(tap, cdt)}, {best.code})", cdt, deps)
            return where
        if out.index != 0:
            raise CodegenError("pooling has no second output here")
        if mode == "max":
            acc = None
            for tap, cond in taps:
                term = f"tl.where({cond}, {cast_code(tap, cdt)}, float('-inf'))"
                acc = term if acc is None else nan_max(acc, term)
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


def rng_offset_type(numel: int) -> str:
    """The Triton type of Philox offsets over ``numel`` elements: int32 while every index fits (the
    same stream as int64 there: the high word is 0), int64 beyond, so no two elements share a draw."""
    return "tl.int32" if numel <= 2**31 - 1 else "tl.int64"
