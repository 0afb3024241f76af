"""C++/OpenMP source for reduction groups: softmax, layer norm, means, sums, max/min, any/all.

A group reduces one element shape ``E`` over the same dims ``D``; every node is either in element
space (shape ``E``), or in row space (the reduction's output shape, with or without the reduced
dims kept). OpenMP spreads rows over threads; each row runs one pass over its elements per
reduction *level* (softmax: the max first, then the sum of ``exp(x - max)``) and, when the group
writes element values (softmax's probabilities), a final pass. Element values are recomputed in
each pass instead of stored (they are cheap pointwise expressions); row values are scalars.
Sums accumulate in double (integers in int64; the vector loops add float partials of at most 8 values
per lane into double lanes, see :mod:`.reduction_vector`), so long float32 rows lose no precision.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ...errors import BuildError
from ...ir.graph import Node, Value
from ...ir.registry import lookup, packet_name, reduction_dims
from ...schedule.space import ScheduleSpace
from .moments import deviation_sums, mean_divisions
from .pointwise import (
    broadcast_strides,
    follows_dims,
    group_io,
    pointer_casts,
    promoted_ctype,
    supported_node,
)
from .reduction_columns import ColumnReduction
from .reduction_fold import FoldedColumns, folded_reductions
from .reduction_runs import ReductionRuns, row_views
from .reduction_vector import VectorAccumulators, VectorPasses
from .scalar_ops import (
    BODIES,
    CPP_TYPES,
    OPERAND_CAST,
    literal,
    load_code,
    result_code,
    storage_type,
    store_code,
)
from .simd import VECTOR_OPS, vector_body
from .sizes import SizeArgs

SPACE_VERSION = "1"
#: longest row whose costly element values are kept in a per-row scratch buffer between passes
_SCRATCH_LIMIT = 16384
#: rows up to this long have their length written into the code when a weight fixes it (see ``_count``)
SMALL_COUNT = 256
_COMBINES = {"aten.sum": "sum", "aten.mean": "sum", "aten.amax": "max", "aten.amin": "min",
             "aten.any": "or", "aten.all": "and"}


def supported_reduction(node: Node) -> str | None:
    """None when this module generates reduction ``node``, else why not."""
    name = packet_name(node.target)
    if name not in _COMBINES:
        return f"no C++ reduction for {name}"
    if len(node.outputs) != 1 or not isinstance(node.args[0], Value):
        return "not a single-output tensor reduction"
    for v in (node.args[0], node.outputs[0]):
        if v.type.dtype not in CPP_TYPES or v.type.device.type != "cpu":
            return f"{v.type.dtype} on {v.type.device} is not generated for CPU yet"
    if node.args[0].type.numel == 0:
        return "empty input"
    return None


def reduction_space(rows: int, cores: int) -> ScheduleSpace:
    """Threads over rows (one thread for a handful of rows)."""
    threads = sorted({1, *(t for t in (2, 4, 8, 16, 32, 64) if t <= cores), cores})
    return ScheduleSpace("reduction", {"threads": threads},
                         default={"threads": cores if rows >= 4 * cores else 1}, version=SPACE_VERSION)


class ReductionSource(ColumnReduction, FoldedColumns, ReductionRuns, VectorPasses):
    """The C++ function of one reduction group (``name`` is its C symbol)."""

    def __init__(self, name: str, nodes: list[Node], materialize: set[int]) -> None:
        self.name = name
        self.nodes = nodes
        reductions = [n for n in nodes if lookup(n.target).kind == "reduction"]
        if not reductions:
            raise BuildError("no reduction in the group")
        for n in nodes:
            reason = supported_reduction(n) if n in reductions else supported_node(n)
            if reason:
                raise BuildError(f"{n.op}: {reason}")
        #: column sums over the rows, accumulated in the output pass (see :mod:`.reduction_fold`)
        self.folded = folded_reductions(reductions)
        reductions = [r for r in reductions if r not in self.folded]
        first = reductions[0].args[0].type
        self.element_shape = tuple(first.shape)
        self.dims = reduction_dims(reductions[0].target, reductions[0].args, reductions[0].kwargs, first.rank)
        for r in reductions:
            dims = reduction_dims(r.target, r.args, r.kwargs, r.args[0].type.rank)
            if tuple(r.args[0].type.shape) != self.element_shape or dims != self.dims or not dims:
                raise BuildError("reductions of one kernel must reduce one shape over the same dims")
        self.kept = [d for d in range(len(self.element_shape)) if d not in self.dims]
        self.keep_shape = tuple(1 if d in self.dims else s for d, s in enumerate(self.element_shape))
        self.row_shape = tuple(self.element_shape[d] for d in self.kept)
        self.rows = math.prod(self.row_shape)
        self.count = math.prod(self.element_shape[d] for d in self.dims)
        self.reductions = reductions
        #: outputs may hold element values between passes (not when an output is written in place)
        self.outputs_alias_free = True
        #: sizes and strides read at run time (see :mod:`.sizes`)
        self.sizes = SizeArgs()
        self._classify(nodes, materialize)
        self.source = self._function()

    # -- structure ---------------------------------------------------------------------------
    def _classify(self, nodes: list[Node], materialize: set[int]) -> None:
        self.space: dict[int, str] = {}
        self.level: dict[int, int] = {}
        self.aliases = row_views(nodes)
        ids = {n.outputs[0].id for n in nodes} | set(self.aliases)
        for n in nodes:
            out = n.outputs[0]
            internal = [a for a in n.inputs if a.id in ids]
            for a in internal:
                if a.id in self.aliases:
                    self._classify_alias(a)
            if n in self.folded:
                self._classify_folded(n, internal)
                continue
            if n in self.reductions:
                if any(self.space[a.id] != "element" for a in internal):
                    raise BuildError("a reduction reads a row value")
                self.space[out.id] = "row"
                self.level[out.id] = 1 + max((self.level[a.id] for a in internal), default=0)
                continue
            shape = tuple(out.type.shape)
            if shape == self.element_shape:
                self.space[out.id] = "element"
            elif shape in (self.keep_shape, self.row_shape) and out.type.numel == self.rows:
                self.space[out.id] = "row"
                if any(self.space[a.id] == "element" for a in internal):
                    raise BuildError("a row value reads an element value")
            else:
                raise BuildError(f"{n.op} produces {shape}, neither the element nor the row shape")
            for a in internal:
                if (self.space[a.id] == "row" and self.space[out.id] == "element"
                        and tuple(a.type.shape) not in (self.keep_shape, self.element_shape)):  # element: an expand alias
                    raise BuildError("an element value reads a row value without its kept dims")
            self.level[out.id] = max((self.level[a.id] for a in internal), default=0)
        self.ids = ids
        #: sums of squared deviations from this kernel's own mean (shifted, corrected: see _deviation_correction)
        self.deviations = deviation_sums(nodes, self.reductions, self.level, self.count)
        #: ``sum / N`` divisions computed from the sum's double accumulator
        self.mean_divisions = mean_divisions(nodes, self.reductions, self.count)
        self.inputs, self.outputs = group_io(nodes, ids, materialize)
        self.values = {v.id: v for v in self.inputs + [n.outputs[0] for n in nodes]}
        self.local = {v.id: f"v{k}" for k, v in enumerate(self.inputs + [n.outputs[0] for n in nodes])}
        self.local.update({vid: self.local[root.id] for vid, root in self.aliases.items()})

    def _classify_alias(self, a: Value) -> None:
        """A view of a row value (an unsqueeze back to the kept dims' shape) is that row's scalar."""
        root = self.aliases[a.id]
        if self.space.get(root.id) != "row":
            raise BuildError(f"%{a.name} is a view of an element value computed inside the group")
        expanded = (a.producer is not None and packet_name(a.producer.target) == "aten.expand"
                    and tuple(a.producer.args[0].type.shape) == self.keep_shape and tuple(a.type.shape) == self.element_shape)
        if not expanded and (tuple(a.type.shape) not in (self.keep_shape, self.row_shape) or a.type.numel != self.rows):
            raise BuildError(f"%{a.name} views row value %{root.name} with another shape")
        self.space[a.id], self.level[a.id] = "row", self.level[root.id]

    def _mark_done(self, vid: int) -> None:
        self._done.add(vid)
        self._done.update(a for a, root in self.aliases.items() if root.id == vid)

    # -- indexing ----------------------------------------------------------------------------
    def _offset(self, v: Value, shape: tuple[int, ...], index: list[str]) -> str:
        """Offset of ``v`` read at ``index`` (one C++ expression per dim of ``shape``), broadcasting.
        A unit stride is written into the code (the loops vectorise on it), and so is a broadcast
        along the innermost dim; other strides are run-time sizes."""
        strides, follows = broadcast_strides(v, shape), follows_dims(v, shape)
        last = len(shape) - 1
        role = f"in{self.inputs.index(v)}" if v in self.inputs else f"out{self.outputs.index(v)}"
        tag = "" if shape == self.element_shape else ".row"
        terms = []
        for d, (i, stride) in enumerate(zip(index, strides)):
            if not follows[d] or i == "0":
                continue
            label = f"{role}{tag}.stride{d}"
            if stride == 1 or (d == last and stride == 0):
                self.sizes.fixed(stride, label)
                if stride:
                    terms.append(i)
                continue
            terms.append(f"{i} * {self.sizes.size(stride, label)}")
        return " + ".join(terms) or "0"

    def _dim(self, d: int) -> str:
        """Size of element dim ``d`` (a run-time size)."""
        return self.sizes.size(self.element_shape[d], f"size{d}")

    @property
    def _count(self) -> str:
        """Elements each row reduces: written into the code for short rows whose length a weight
        fixes (a layer norm's feature count: it does not change with batch or sequence; measured
        1.3-2.4x faster for rows of 32-256 on one thread), else a run-time size."""
        if self.count <= SMALL_COUNT and self._length_fixed_by_weight():
            return self.sizes.fixed(self.count, "count (fixed by a weight)")
        return self.sizes.size(self.count, "count")

    def _length_fixed_by_weight(self) -> bool:
        """Whether some operand spans exactly the reduced dims (a per-feature weight or bias) while
        the rows are indexed by kept dims: the row length is then a parameter's size."""
        if not self.kept:
            return False
        shape = self.element_shape
        for v in self.inputs:
            lead = len(shape) - v.type.rank
            spans = {d for d in range(lead, len(shape)) if v.type.shape[d - lead] != 1 or shape[d] == 1}
            if spans and spans <= set(self.dims) and v.type.numel == self.count:
                return True
        return False

    def _element_index(self) -> list[str]:
        """Per element dim, its index: ``k{d}`` (kept), ``e{d}`` (reduced); in the row form, dims of the
        contiguous run other than its innermost are ``0`` (the innermost's index runs over the run)."""
        run = self._run or []
        return [f"k{d}" if d in self.kept else "0" if d in run[:-1] else f"e{d}"
                for d in range(len(self.element_shape))]

    def _row_index(self, shape: tuple[int, ...]) -> list[str]:
        if shape == self.keep_shape:
            return [f"k{d}" if d in self.kept else "0" for d in range(len(shape))]
        return [f"k{d}" for d in self.kept]

    # -- code --------------------------------------------------------------------------------
    def _load(self, v: Value, space: str, shape: tuple[int, ...]) -> str:
        t = CPP_TYPES[v.type.dtype]
        index = self._element_index() if space == "element" else self._row_index(shape)
        element = f"in{self.inputs.index(v)}[{self._offset(v, shape, index)}]"
        return f"const {t} {self.local[v.id]} = {load_code(v.type.dtype, element)};"

    def _expr(self, node: Node, vec: bool = False) -> str | None:
        """The line computing ``node``'s value; ``vec``: as a ``tw_vf`` vector (None when it has no
        vector form)."""
        out = node.outputs[0]
        name = packet_name(node.target)
        if vec and (name not in VECTOR_OPS or out.type.dtype != torch.float32):
            return None
        t = "tw_vf" if vec else CPP_TYPES[out.type.dtype]
        mode = OPERAND_CAST.get(name, "out")
        ctype = promoted_ctype(node) if mode == "promote" else t
        args = []
        for i, a in enumerate(node.args):
            if isinstance(a, Value):
                keep = mode == "none" or (mode == "where" and i == 0) or (mode == "masked_fill" and i == 1)
                args.append(self.local[a.id] if keep else f"(({ctype}){self.local[a.id]})")
            elif a is None:
                args.append("None")
            elif isinstance(a, (bool, int, float)):
                cond = name in ("aten.where", "aten.masked_fill") and i == 0
                args.append(literal(a) if cond else f"(({ctype}){literal(a)})")
            else:
                args.append("None")
        # pow by a small integer is a product (scalar_ops writes it for float and double only): as
        # float it vectorises (an RMS norm's x.pow(2) kept its pass a scalar loop)
        body = BODIES[name](args, dict(node.kwargs), "float" if vec and name == "aten.pow" else t)
        divisor = node.args[1] if name == "aten.div" and len(node.args) > 1 else None
        if (isinstance(divisor, Value) and self.space.get(divisor.id) == "row" and self.space[out.id] == "element"
                and t in ("float", "double", "tw_vf") and node.kwargs.get("rounding_mode") is None):
            # dividing every element of a row by one row value: multiply by its reciprocal, computed
            # once per row (as ATen's softmax does; within an ulp of the quotient)
            scalar_t = "float" if vec else t
            body = f"({args[0]} * ({t})(({scalar_t})1 / {self.local[divisor.id]}))"
        if vec:
            body = vector_body(body)
            return None if body is None else f"const tw_vf {self.local[out.id]} = (tw_vf)({body});"
        return f"const {t} {self.local[out.id]} = {result_code(out.type.dtype, body)};"

    def _needed(self, targets: list[Value], space: str) -> list[Node]:
        """Nodes of ``space`` (in order) that ``targets`` depend on inside the group (values kept in a
        row scratch buffer by an earlier pass are read from it, not recomputed)."""
        want: set[int] = set()
        stack = [v.id for v in targets]
        producers = {n.outputs[0].id: n for n in self.nodes}
        while stack:
            vid = stack.pop()
            if vid in want or vid not in producers or self.space[vid] != space or vid in self._cached:
                continue
            want.add(vid)
            if producers[vid] not in self.reductions:
                stack.extend(a.id for a in producers[vid].inputs)
        return [n for n in self.nodes if n.outputs[0].id in want and n not in self.reductions]

    def _element_loop(self, body: list[str], reductions: str = "", start: str = "0") -> list[str]:
        """The scalar loop over the run's elements from ``start`` (see :mod:`.reduction_runs`)."""
        # the tail after whole vectors is shorter than one: half-width vectors (TW_VW / 2) serve it
        # better than full ones that never start (measured: rows of 24, 3x faster) when its length is
        # not known at compile time
        count = self._run_count
        tail = " simdlen(TW_VW > 1 ? TW_VW / 2 : 1)" if start != "0" and not count.startswith("INT64_C") else ""
        head = [f"#pragma omp simd{tail}{reductions}" if reductions is not None else "",
                f"for (int64_t e = {start}; e < {count}; ++e) {{", f"  const int64_t e{self._run[-1]} = e;"]
        return [h for h in head if h] + ["  " + line for line in body] + ["}"]

    def _output_slot(self, vid: int) -> str | None:
        """An element output that can hold element value ``vid`` until the output pass overwrites it
        (same C++ element type, one element per index), instead of a stack scratch buffer: the
        output pass then reads and rewrites lines already in cache (softmax's exp(x - max))."""
        t = CPP_TYPES[self.values[vid].type.dtype]
        for v in self.outputs:
            strides = broadcast_strides(v, self.element_shape)
            if (self.space[v.id] == "element" and v.id not in self._slots_used and storage_type(v.type.dtype) == t
                    and all(st or size == 1 for st, size in zip(strides, self.element_shape))):
                self._slots_used.add(v.id)
                return f"out{self.outputs.index(v)}[{self._offset(v, self.element_shape, self._element_index())}]"
        return None

    def _keep_for_later(self, nodes: list[Node], later: list[Value]) -> list[int]:
        """This pass's costly element values that later passes use, kept in an output that the
        last pass writes or in a row scratch buffer (softmax's exp(x - max) is computed once, not
        once per pass)."""
        if not later:
            return []
        needed_later = {n.outputs[0].id for n in self._needed(later, "element")}
        kept = []
        for n in nodes:
            vid = n.outputs[0].id
            if vid not in needed_later or lookup(n.target).flops_per_element < 4:
                continue
            slot = self._output_slot(vid) if self.outputs_alias_free else None
            if slot is None and self.count <= _SCRATCH_LIMIT:
                name = f"scr{self.local[vid]}"
                self.sizes.specialised[f"count <= {_SCRATCH_LIMIT} (row kept in a scratch buffer)"] = self.count
                self._scratch.append(f"{CPP_TYPES[n.outputs[0].type.dtype]} {name}[{self._count}] "
                                     "__attribute__((aligned(64)));")
                slot = f"{name}[tw_eb + e]" if self._outer else f"{name}[e]"
            if slot is not None:
                self._pending[vid] = slot
                kept.append(vid)
        return kept

    def _slot_unit_stride(self, slot: str) -> bool:
        unit = f"e{self._run[-1]}]"  # a unit stride is written as the bare index
        return slot.endswith(("[e]", "[tw_eb + e]", " " + unit, "[" + unit))

    def _parts(self, targets: list[Value], later: list[Value]) -> dict[str, Any]:
        """What one element pass computes: loads from outside, scratch reads, nodes, scratch writes."""
        nodes = self._needed(targets, "element")
        loads: list[Value] = []
        for n in nodes + [r for r in self.reductions if any(r.args[0].id == v.id for v in targets)]:
            for a in n.inputs:
                if a.id not in self.ids and all(a.id != b.id for b in loads):
                    loads.append(a)
        for v in targets:  # a reduction may read an operand from outside directly
            if v.id not in self.ids and all(v.id != b.id for b in loads):
                loads.append(v)
        used = {a.id for n in nodes for a in n.inputs} | {v.id for v in targets}
        reads = [vid for vid in self._cached if vid in used]
        return {"loads": loads, "reads": reads, "nodes": nodes, "writes": self._keep_for_later(nodes, later)}

    def _scalar_lines(self, parts: dict[str, Any]) -> list[str]:
        lines = [self._load(a, "element", self.element_shape) for a in parts["loads"]]
        lines += [f"const {CPP_TYPES[self.values[vid].type.dtype]} {self.local[vid]} = {self._cached[vid]};"
                  for vid in parts["reads"]]
        lines += [str(self._expr(n)) for n in parts["nodes"]]
        return lines + [f"{self._pending[vid]} = {self.local[vid]};" for vid in parts["writes"]]

    def _reduce_lines(self, reductions: list[Node]) -> list[str]:
        body = []
        for r in reductions:
            acc, x = f"acc{self.local[r.outputs[0].id]}", self.local[r.args[0].id]
            combine = _COMBINES[packet_name(r.target)]
            if combine in ("max", "min"):
                op = ">" if combine == "max" else "<"
                body.append(f"{acc} = {x} {op} {acc} ? (decltype({acc})){x} : {acc};")
                if r.args[0].type.dtype.is_floating_point:
                    body.append(f"nan{acc} = nan{acc} | ({x} != {x});")
            elif r.outputs[0].id in self.deviations:
                a = self.local[self._operand_of(r).id]
                body.append(f"{{ const double tw_t = (double){a} - (double){acc}_c; {acc} += tw_t * tw_t; {acc}_dev += tw_t; }}")
            else:
                body.append({"sum": f"{acc} += {x};", "or": f"{acc} = {acc} || ({x} != 0);",
                             "and": f"{acc} = {acc} && ({x} != 0);"}[combine])
        return body

    def _operand_of(self, r: Node) -> Value:
        """What reduction ``r`` reads in its pass (a deviation sum reads ``a``, not ``(a - m)^2``)."""
        return self.deviations[r.outputs[0].id][0] if r.outputs[0].id in self.deviations else r.args[0]

    def _mean_code(self, r: Node) -> str:
        total = self.deviations[r.outputs[0].id][1]
        return f"(acc{self.local[total.outputs[0].id]} / (double){self._count})"

    def _deviation_correction(self, r: Node) -> str:
        """A deviation sum accumulates ``t = a - c`` and ``t^2`` with ``c`` the mean rounded to ``a``'s type:
        ``sum((a - mean)^2) = sum(t^2) - sum(t)^2 / N`` for any shift ``c``, so neither the float
        rounding of ``c`` nor the rounding of the mean pass's sum enters the variance; with ``c`` that
        close to the mean, ``sum(t)^2 / N`` is tiny against ``sum(t^2)`` (no cancellation)."""
        acc = f"acc{self.local[r.outputs[0].id]}"
        return f"{acc} -= {acc}_dev * {acc}_dev / (double){self._count};"

    def _reduction_pass(self, reductions: list[Node], later: list[Value]) -> list[str]:
        parts = self._parts([self._operand_of(r) for r in reductions], later)
        scalar = self._scalar_lines(parts) + self._reduce_lines(reductions)
        return self._loops(scalar, self._vector_lines(parts), self._simd_clause(reductions),
                           self._vector_accumulation(reductions))

    def _simd_clause(self, reductions: list[Node]) -> str:
        """The ``omp simd`` reduction clauses of one pass (max/min track NaN in a flag)."""
        clauses = []
        for r in reductions:
            acc = f"acc{self.local[r.outputs[0].id]}"
            combine = _COMBINES[packet_name(r.target)]
            clauses.append(f"reduction({ {'sum': '+', 'max': 'max', 'min': 'min', 'or': '||', 'and': '&&'}[combine]}:{acc})")
            if r.outputs[0].id in self.deviations:
                clauses.append(f"reduction(+:{acc}_dev)")
            if combine in ("max", "min") and r.args[0].type.dtype.is_floating_point:
                clauses.append(f"reduction(|:nan{acc})")
        return " " + " ".join(clauses)

    def _accumulator(self, r: Node) -> list[str]:
        out = r.outputs[0]
        t = CPP_TYPES[out.type.dtype]
        combine = _COMBINES[packet_name(r.target)]
        acc_t = {"sum": "double" if out.type.dtype.is_floating_point else ("bool" if t == "bool" else "int64_t"),
                 "or": "bool", "and": "bool"}.get(combine, t)
        if combine == "sum" and t == "bool":
            acc_t = "int64_t"
        init = {"sum": "0", "or": "false", "and": "true",
                "max": f"-std::numeric_limits<{t}>::infinity()" if out.type.dtype.is_floating_point
                else f"std::numeric_limits<{t}>::lowest()",
                "min": f"std::numeric_limits<{t}>::infinity()" if out.type.dtype.is_floating_point
                else f"std::numeric_limits<{t}>::max()"}[combine]
        lines = [f"{acc_t} acc{self.local[out.id]} = {init};"]
        if out.id in self.deviations:  # shifted by the mean in the operand's type (see _deviation_correction)
            shift_t = CPP_TYPES[self._operand_of(r).type.dtype]
            lines += [f"double acc{self.local[out.id]}_dev = 0;",
                      f"const {shift_t} acc{self.local[out.id]}_c = ({shift_t})({self._mean_code(r)});"]
        if combine in ("max", "min") and r.args[0].type.dtype.is_floating_point:
            lines.append(f"int nanacc{self.local[out.id]} = 0;")
        return lines

    def _finish(self, r: Node) -> str:
        out = r.outputs[0]
        t = CPP_TYPES[out.type.dtype]
        acc = f"acc{self.local[out.id]}"
        value = f"{acc} / (double){self._count}" if lookup(r.target).extra.get("mean") else acc
        if _COMBINES[packet_name(r.target)] in ("max", "min") and r.args[0].type.dtype.is_floating_point:
            value = f"(nan{acc} ? std::numeric_limits<{t}>::quiet_NaN() : {acc})"
        self._mark_done(out.id)
        return f"const {t} {self.local[out.id]} = {result_code(out.type.dtype, value)};"

    def _output_pass(self, element_outputs: list[Value]) -> list[str]:
        """The final pass that writes the group's element-space outputs."""
        parts = self._parts(element_outputs + [r.args[0] for r in self.folded], [])
        offsets = [self._offset(v, self.element_shape, self._element_index()) for v in element_outputs]
        stores = [f"out{self.outputs.index(v)}[{off}] = {store_code(v.type.dtype, self.local[v.id])};"
                  for v, off in zip(element_outputs, offsets)]
        vector = self._vector_lines(parts)
        if vector is not None:
            for v, off in zip(element_outputs, offsets):
                stride = broadcast_strides(v, self.element_shape)[self._run[-1]]
                if v.type.dtype != torch.float32 or stride != 1:
                    vector = None
                    break
                vector.append(f"{self.local[v.id]}.store(&out{self.outputs.index(v)}[{off}]);")
        self._fold_lines(vector, stores)
        return self._loops(self._scalar_lines(parts) + stores, vector, "", VectorAccumulators())

    def _row_body(self) -> list[str]:
        lines: list[str] = []
        max_level = max(self.level[r.outputs[0].id] for r in self.reductions)
        element_outputs = [v for v in self.outputs if self.space[v.id] == "element"]
        for level in range(1, max_level + 1):
            reds = [r for r in self.reductions if self.level[r.outputs[0].id] == level]
            later = [self._operand_of(r) for r in self.reductions if self.level[r.outputs[0].id] > level]
            later += element_outputs + [r.args[0] for r in self.folded]
            for r in reds:
                lines += self._accumulator(r)
            lines += self._reduction_pass(reds, later)
            lines += [self._deviation_correction(r) for r in reds if r.outputs[0].id in self.deviations]
            self._cached.update(self._pending)
            self._pending.clear()
            lines += [self._finish(r) for r in reds]
            lines += self._row_nodes()
        if element_outputs or self.folded:
            lines += self._output_pass(element_outputs)
        for v in self.outputs:
            if self.space[v.id] == "row":
                shape = tuple(v.type.shape)
                lines.append(f"out{self.outputs.index(v)}[{self._offset(v, shape, self._row_index(shape))}] = "
                             f"{store_code(v.type.dtype, self.local[v.id])};")
        return lines

    def _row_nodes(self) -> list[str]:
        """Row-space nodes whose operands are all available now (in order)."""
        lines = []
        for n in self.nodes:
            out = n.outputs[0]
            if n in self.reductions or self.space[out.id] != "row" or out.id in self._done:
                continue
            if not all(a.id not in self.ids or a.id in self._done for a in n.inputs):
                continue
            for a in n.inputs:
                if a.id not in self.ids and a.id not in self._row_loaded:
                    self._row_loaded.add(a.id)
                    lines.append(self._load(a, "row", tuple(out.type.shape)))
            total = self.mean_divisions.get(out.id)
            if total is not None:
                value = f"acc{self.local[total.outputs[0].id]} / (double){self._count}"
                lines.append(f"const {CPP_TYPES[out.type.dtype]} {self.local[out.id]} = {result_code(out.type.dtype, value)};")
            else:
                lines.append(self._expr(n))
            self._mark_done(out.id)
        return lines

    def _function(self) -> str:
        self._done: set[int] = set()
        self._cached: dict[int, str] = {}
        self._pending: dict[int, str] = {}
        self._slots_used: set[int] = set()
        self._row_loaded: set[int] = set()
        self._scratch: list[str] = []
        self._run, self._outer = None, []
        from .toolchain import cpu_description

        block = self._column_block(int(cpu_description().get("cores") or 1))
        if block is not None:
            return self._column_function(block)
        self._run, self._outer = self._loop_dims()
        params = [f"const void* p_in{i}" for i in range(len(self.inputs))]
        params += [f"void* p_out{i}" for i in range(len(self.outputs))]
        casts = pointer_casts(self.inputs, self.outputs)
        split = ["    int64_t rest = r;"]
        for d in reversed(self.kept):
            split.append(f"    const int64_t k{d} = rest % {self._dim(d)}; rest /= {self._dim(d)};" if d != self.kept[0]
                         else f"    const int64_t k{d} = rest;")  # the outermost index needs no division
        split.append("    (void)rest;")
        body = self._row_body()
        body = self._scratch + body  # scratch buffers are declared at the top of the row
        z = self.sizes
        rows = z.size(self.rows, "rows")
        if self.folded:
            return self._folded_function(params, casts, split, body, rows)
        chunk = z.size(self._chunk(), "chunk")
        return f"""extern "C" void {self.name}({', '.join(params + ['int64_t threads', z.param])}) {{
{chr(10).join(casts)}
{z.declarations()}
  #pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(dynamic, {chunk}) if(tw_nthreads(threads) > 1)
  for (int64_t r = 0; r < {rows}; ++r) {{
{chr(10).join(split)}
{chr(10).join('    ' + line for line in body)}
  }}
}}
"""

    def _chunk(self) -> int:
        """Rows per dynamically scheduled task: ~32K elements, and at least 8 tasks where there are
        rows enough (a thread descheduled on a shared machine leaves its rows to the others)."""
        return max(1, min(32768 // max(self.count, 1), self.rows // 8))

    def launch_args(self, config: Any) -> list[int]:
        """Scalar arguments after the tensors: the thread count, the size array."""
        return [int(config["threads"]), self.sizes.address()]
