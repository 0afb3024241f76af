"""Reductions over outer dims (a column sum: layer norm's weight and bias gradients), walked row by row.

Read as rows, a reduction over dim 0 of a ``(2048, 1024)`` tensor takes one element per 4 KiB: every
load misses (addresses 4 KiB apart share a cache set), 50 ns an element. When the innermost dim
is kept and every operand is contiguous (or broadcast) along it, the kernel instead gives each
task a block of consecutive columns with one accumulator per column, and walks the reduced dims
outside: each step reads a contiguous run of a row, and the inner loop over the block's columns
is a unit-stride ``omp simd`` loop. Used for one-level groups that write only row values.
"""
from __future__ import annotations

import math
import re

from .pointwise import broadcast_strides, pointer_casts
from .scalar_ops import store_code

#: most columns one task takes (its accumulator arrays have this many slots)
MAX_BLOCK = 256

_ACC_DECL = re.compile(r"^(\w+) (\w+) = (.*);$")
_ACC_NAME = re.compile(r"\b((?:nan)?acc\w+)\b")


class ColumnReduction:
    """The column-block form of :class:`~.reduction.ReductionSource` (mixed in; see module doc)."""

    def _column_block(self, cores: int = 2) -> int | None:  # type: ignore[no-untyped-def]
        """Columns per task, or None when the group is not a column reduction."""
        last = len(self.element_shape) - 1
        if last in self.dims or not self.dims or self.element_shape[last] < 16:
            return None
        if max(self.level[r.outputs[0].id] for r in self.reductions) != 1:
            return None
        if any(self.space[v.id] == "element" for v in self.outputs):
            return None
        for v in self.inputs:
            if self.space_of_input(v) == "element" and broadcast_strides(v, self.element_shape)[last] not in (0, 1):
                return None
        # from the width and the cores only (not the outer rows, which change with the batch): the
        # block is written into the code (measured: a run-time block 2-4x slower), so a new batch
        # size keeps the code; ~4 tasks per core even when there is one outer row
        width = self.element_shape[last]
        block = max(64, math.ceil(width / (4 * cores) / 16) * 16)
        return min(block, MAX_BLOCK, math.ceil(width / 16) * 16)

    def space_of_input(self, v) -> str:  # type: ignore[no-untyped-def]
        """``element`` when some element-space node or reduction reads input ``v``, else ``row``."""
        for n in self.nodes:
            if any(a.id == v.id for a in n.inputs) and (
                    n in self.reductions or self.space[n.outputs[0].id] == "element"):
                return "element"
        return "row"

    def _column_function(self, block: int) -> str:  # type: ignore[no-untyped-def]
        last = len(self.element_shape) - 1
        z = self.sizes
        width, tasks_m = self._dim(last), z.size(self.rows // self.element_shape[last], "outer rows")
        block = z.fixed(block, "column block")  # measured: a run-time block is 2-4x slower (accumulators in memory)
        params = [f"const void* p_in{i}" for i in range(len(self.inputs))]
        params += [f"void* p_out{i}" for i in range(len(self.outputs))]
        acc_decl, acc_load = [], []
        for r in self.reductions:
            for line in self._accumulator(r):
                t, name, init = _ACC_DECL.match(line).groups()
                acc_decl += [f"{t} {name}_a[{block}];", f"for (int64_t i = 0; i < {block}; ++i) {name}_a[i] = {init};"]
                acc_load.append(f"{t} {name} = {name}_a[c - c0];")
        parts = self._parts([self._operand_of(r) for r in self.reductions], [])
        body = self._scalar_lines(parts) + self._reduce_lines(self.reductions)
        body = [_ACC_NAME.sub(r"\1_a[c - c0]", line) if not line.startswith("const ") else line for line in body]
        body = [line.replace("(decltype(", "(std::remove_reference<decltype(").replace("))v", ")>::type)v")
                if "decltype" in line else line for line in body]
        e_split = ["int64_t rest_e = e;"] + [
            f"const int64_t e{d} = rest_e % {self._dim(d)}; rest_e /= {self._dim(d)};" if d != self.dims[0]
            else f"const int64_t e{d} = rest_e;" for d in reversed(self.dims)] + ["(void)rest_e;"]
        k_split = ["int64_t rest = o;"] + [
            f"const int64_t k{d} = rest % {self._dim(d)}; rest /= {self._dim(d)};" if d != self.kept[0]
            else f"const int64_t k{d} = rest;" for d in reversed(self.kept) if d != last] + ["(void)rest;"]
        finish = [self._finish(r) for r in self.reductions] + self._row_nodes()
        for v in self.outputs:
            shape = tuple(v.type.shape)
            finish.append(f"out{self.outputs.index(v)}[{self._offset(v, shape, self._row_index(shape))}] = "
                          f"{store_code(v.type.dtype, self.local[v.id])};")
        ind = "\n      "
        count = self._count
        return f"""extern "C" void {self.name}({', '.join(params + ['int64_t threads', z.param])}) {{
{chr(10).join(pointer_casts(self.inputs, self.outputs))}
{z.declarations()}
  const int64_t nb = ({width} + {block} - 1) / {block};
  #pragma omp parallel for num_threads(tw_nthreads(threads)) schedule(dynamic, 1) if(tw_nthreads(threads) > 1)
  for (int64_t task = 0; task < {tasks_m} * nb; ++task) {{
    const int64_t o = task / nb, c0 = (task % nb) * {block};
    const int64_t c1 = c0 + {block} < {width} ? c0 + {block} : {width};
    {(chr(10) + '    ').join(k_split)}
    {(chr(10) + '    ').join(acc_decl)}
    for (int64_t e = 0; e < {count}; ++e) {{
      {ind.join(e_split)}
      #pragma omp simd
      for (int64_t c = c0; c < c1; ++c) {{
        const int64_t k{last} = c;
        {(ind + '  ').join(body)}
      }}
    }}
    for (int64_t c = c0; c < c1; ++c) {{
      const int64_t k{last} = c;
      {ind.join(acc_load + finish)}
    }}
  }}
}}
"""

