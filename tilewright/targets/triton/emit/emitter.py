"""Expression emitter: turns the nodes of one fused group into Triton code at given indices.

Every value is computed *at a multi-index* (see :mod:`tilewright.targets.triton.emit.indexing`). Values
produced inside the group are computed from their registry scalar bodies; views of in-group
values become index transforms; everything else is loaded from its buffer through its own
strides. Results are memoised per (value, index, guard), so a value used twice at the same
index is computed once. The emitter knows nothing about loops: the kernel builders decide
where code goes through :meth:`Emitter.scope_for`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ....ir.graph import Node, Value
from ....ir.registry import lookup, packet_name
from ....ir.types import compute_dtype, triton_dtype
from .indexing import Atom, broadcast_index, depends, offset_code
from .expr import CodegenError, Expr, Scope, _scalar_dtype, cast_code, literal  # noqa: F401 (re-exported)
from .special_ops import SpecialOpsMixin
from .views import view_input_index


#: ops whose Triton body combines its operands bit by bit (``&``, ``|``, ``^``, ``~``)
_BITWISE = {"aten.logical_and": "&", "aten.logical_or": "|", "aten.logical_xor": "^", "aten.bitwise_and": "&",
            "aten.bitwise_or": "|", "aten.bitwise_xor": "^"}


class Emitter(SpecialOpsMixin):
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
        # only atoms with a nonzero stride reach the address (a broadcast view has stride 0)
        deps = depends(tuple(a for a, st in zip(idx, v.type.strides) if st != 0))
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
        if not isinstance(arg, (bool, int, float)):  # dtypes, devices, size lists: not operands
            return Expr(repr(arg), torch.float32)
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
        if op.extra.get("random_mask"):
            return self._random_mask(node, out, idx, guard)
        if op.extra.get("indexing"):
            return self._indexing(node, out, idx, guard, op.extra["indexing"])
        if op.extra.get("window"):
            if op.extra["window"] == "max_backward":
                return self._window_backward(node, out, idx, guard)
            return self._window(node, out, idx, guard, op.extra["window"])
        if name in ("aten.full", "aten.scalar_tensor"):
            fill = node.args[1] if name == "aten.full" else node.args[0]
            # a typed scalar tensor, never a bare Python literal (which has no .to())
            return self._assign(self._typed_full(fill, out_dtype), torch.bool if out_dtype == torch.bool else cdt,
                                frozenset())
        shape = out.type.shape
        operands = [self._operand(a, shape, idx, guard) for a in node.args]
        deps = frozenset().union(*(o.deps for o in operands)) if operands else frozenset()
        if name in _BITWISE and out_dtype == torch.bool and len(operands) == 2:
            # bool blocks combined with bool scalars break Triton's interpreter: go through int8
            codes = [f"({o.code} != 0).to(tl.int8)" if isinstance(a, Value) else f"{1 if a else 0}"
                     for o, a in zip(operands, node.args)]
            return self._assign(f"(({codes[0]} {_BITWISE[name]} {codes[1]}) != 0)", torch.bool, deps)
        codes = self._cast_operands(op.cast, operands, node.args, cdt)
        kwargs = {k: v for k, v in node.kwargs.items() if not isinstance(v, Value)}
        if any(isinstance(v, Value) for v in node.kwargs.values()):
            raise CodegenError(f"{node.op} has tensor keyword arguments")
        assert op.scalar is not None
        code = op.scalar(codes, kwargs)
        result_dtype = torch.bool if out_dtype == torch.bool else cdt
        if name in ("aten._to_copy", "prims.convert_element_type", "aten.clone", "aten.copy", "aten.copy_",
                    "aten.lift_fresh_copy"):
            src = operands[1] if name in ("aten.copy", "aten.copy_") else operands[0]
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

    def _typed_full(self, fill: Any, dtype: torch.dtype) -> str:
        """``tl.full([], fill, dtype)``: a 0-d tensor of the output's compute dtype."""
        if isinstance(fill, Value) or not isinstance(fill, (bool, int, float)):
            raise CodegenError(f"fill value {fill!r} is not a Python scalar")
        if dtype == torch.bool:
            return f"tl.full([], {1 if fill else 0}, tl.int1)"
        cdt = compute_dtype(dtype)
        if cdt.is_floating_point:
            value = float(fill)
            if dtype == torch.bfloat16:
                value = float(torch.tensor(value).to(torch.bfloat16).item())
            elif dtype == torch.float16:
                value = float(torch.tensor(value).to(torch.float16).item())
            return f"tl.full([], {literal(value)}, {triton_dtype(cdt)})"
        if isinstance(fill, float) and (fill != fill or abs(fill) == float("inf")):
            raise CodegenError(f"fill value {fill!r} has no {dtype} value")
        value = int(fill)
        code = str(value) if value != torch.iinfo(torch.int64).min else f"({value + 1} - 1)"
        return f"tl.full([], {code}, {triton_dtype(cdt)})"
