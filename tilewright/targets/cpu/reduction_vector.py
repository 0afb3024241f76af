"""The explicit-SIMD loop of one reduction pass: unrolled, with float partial sums flushed into
double accumulators block by block.

A layer norm row (1024 floats, 4 KiB: it stays in L1 between passes) costs instructions, not
memory. Summed the straightforward way, every vector of a pass was widened to two double vectors
and added into one accumulator pair (an extract, two conversions and two adds per 16 floats, and
one dependency chain through the adds): the mean and variance passes took 3.7 cycles a vector on
the EPYC, twice the normalise pass. Here a pass runs ``UNROLL`` vectors per iteration into as many
float partial sums (independent chains), and every ``BLOCK_DEPTH`` iterations per lane the partials
are added together and into the double accumulator (``tw_vsum``), so each float lane adds at most
``BLOCK_DEPTH`` values before its sum is widened: the rounding stays that of an 8-term float sum
per block, whatever the row length, and the conversions are paid once per block (measured on the
2048x1024 layer norm, one thread, rows in L2: the two passes went from 0.45 to 0.22 ms).

Sums of squared deviations from the row mean (:mod:`.moments`) subtract ``c``, the mean rounded
to float (``t = a - c``: exact where ``a`` is within a factor 2 of ``c``, Sterbenz), and accumulate
``t^2`` and ``t``; the kernel then takes ``sum(t^2) - sum(t)^2 / N``, which is ``sum((a - mean)^2)``
for any shift, so neither the float rounding of ``c`` nor that of the mean pass's sums enters the
variance, and with ``c`` that close to the mean the correction is tiny (no one-pass cancellation).
Max and min keep ``UNROLL`` vector accumulators and combine them into the row's scalar one (so a
pass inside a loop over outer reduced dims keeps the earlier runs' extremum).
"""
from __future__ import annotations

from typing import Any

import torch

from ...ir.graph import Node, Value
from ...ir.registry import packet_name
from .pointwise import broadcast_strides

#: vectors per iteration of a reduction pass's vector loop (independent float partial sums)
UNROLL = 4
#: iterations per block: a float partial lane adds at most this many values before it is widened
BLOCK_DEPTH = 8

_KINDS = {"aten.sum": "sum", "aten.mean": "sum", "aten.amax": "max", "aten.amin": "min"}


def _tree(names: list[str]) -> str:
    """``names`` added pairwise: ``((a + b) + (c + d))``."""
    while len(names) > 1:
        names = [f"({names[i]} + {names[i + 1]})" if i + 1 < len(names) else names[i] for i in range(0, len(names), 2)]
    return names[0]


class VectorAccumulators:
    """What one pass's vector loop does for its reductions: ``before`` (once per run), ``block``
    (float partials, once per block), ``update(k)`` (unrolled copy ``k``), ``flush`` (end of a
    block) and ``combine`` (into the scalar accumulators, after the vector loop)."""

    def __init__(self) -> None:
        self.before: list[str] = []
        self.block: list[str] = []
        self.updates: list[list[str]] = [[] for _ in range(UNROLL)]
        self.flush: list[str] = []
        self.combine: list[str] = []

    def add_sum(self, acc: str, x: str) -> None:
        """``acc += sum(x)``."""
        parts = [f"{acc}_f{k}" for k in range(UNROLL)]
        self.before.append(f"tw_vsum v{acc};")
        self.block.append(f"tw_vf {', '.join(p + ' = 0.0f' for p in parts)};")
        for k, p in enumerate(parts):
            self.updates[k].append(f"{p} = {p} + {x};")
        self.flush.append(f"v{acc}.add({_tree(parts)});")
        self.combine.append(f"{acc} += v{acc}.total();")

    def add_deviations(self, acc: str, a: str) -> None:
        """``acc += sum(t^2)``, ``acc_dev += sum(t)`` for ``t = a - acc_c`` (see the module doc)."""
        d, q = [f"{acc}_d{k}" for k in range(UNROLL)], [f"{acc}_q{k}" for k in range(UNROLL)]
        self.before.append(f"tw_vsum v{acc}_d, v{acc}_q;")
        self.block.append(f"tw_vf {', '.join(p + ' = 0.0f' for p in d + q)};")
        for k in range(UNROLL):
            self.updates[k].append(f"{{ const tw_vf tw_t = {a} - tw_vf({acc}_c); {d[k]} = {d[k]} + tw_t; "
                                   f"{q[k]} = {q[k]} + tw_t * tw_t; }}")
        self.flush += [f"v{acc}_d.add({_tree(d)});", f"v{acc}_q.add({_tree(q)});"]
        self.combine += [f"{acc} += v{acc}_q.total();", f"{acc}_dev += v{acc}_d.total();"]

    def add_extremum(self, acc: str, x: str, kind: str) -> None:
        """``acc = max(acc, max(x))`` (or min), NaN tracked in ``nan<acc>``."""
        op = ">" if kind == "max" else "<"
        self.before.append(f"tw_v{kind} {', '.join(f'v{acc}_{k}' for k in range(UNROLL))};")
        for k in range(UNROLL):
            self.updates[k].append(f"v{acc}_{k}.add({x});")
            self.combine += [f"{acc} = v{acc}_{k}.value() {op} {acc} ? v{acc}_{k}.value() : {acc};",
                             f"nan{acc} |= v{acc}_{k}.nan();"]


class VectorPasses:
    """Mixed into :class:`~.reduction.ReductionSource`: the vector form of its passes."""

    def _vector_load(self, v: Value) -> str | None:  # type: ignore[no-untyped-def]
        """A ``tw_vf`` load of ``v`` at element ``e`` (contiguous or broadcast), or None."""
        if v.type.dtype != torch.float32:
            return None
        stride = broadcast_strides(v, self.element_shape)[self._run[-1]]
        element = f"in{self.inputs.index(v)}[{self._offset(v, self.element_shape, self._element_index())}]"
        if stride in (0, 1):
            return f"const tw_vf {self.local[v.id]} = {'tw_vf(' if stride == 0 else 'tw_vf::load(&'}{element});"
        return None

    def _vector_lines(self, parts: dict[str, Any]) -> list[str] | None:  # type: ignore[no-untyped-def]
        """The pass body on ``tw_vf`` vectors, or None when some operand or op has no vector form."""
        lines = [self._vector_load(a) for a in parts["loads"]]
        lines += [f"const tw_vf {self.local[vid]} = tw_vf::load(&{self._cached[vid]});"
                  if self.values[vid].type.dtype == torch.float32 and self._slot_unit_stride(self._cached[vid]) else None
                  for vid in parts["reads"]]
        lines += [self._expr(n, vec=True) for n in parts["nodes"]]
        lines += [f"{self.local[vid]}.store(&{self._pending[vid]});" if self._slot_unit_stride(self._pending[vid]) else None
                  for vid in parts["writes"]]
        return None if any(line is None for line in lines) else [str(line) for line in lines]

    def _vector_accumulation(self, reductions: list[Node]) -> VectorAccumulators | None:  # type: ignore[no-untyped-def]
        """The vector loop's accumulators for ``reductions``, or None when one has no vector form."""
        accs = VectorAccumulators()
        for r in reductions:
            kind = _KINDS.get(packet_name(r.target))
            operand = self._operand_of(r)
            if kind is None or operand.type.dtype != torch.float32:
                return None
            if kind != "sum" and r.outputs[0].type.dtype != torch.float32:
                return None
            acc = f"acc{self.local[r.outputs[0].id]}"
            if r.outputs[0].id in self.deviations:
                accs.add_deviations(acc, self.local[operand.id])
            elif kind == "sum":
                accs.add_sum(acc, self.local[r.args[0].id])
            else:
                accs.add_extremum(acc, self.local[r.args[0].id], kind)
        return accs

    def _loops(self, scalar: list[str], vector: list[str] | None, clause: str,  # type: ignore[no-untyped-def]
               accs: VectorAccumulators | None) -> list[str]:
        """The pass as an explicit-SIMD loop over whole vectors (unrolled and blocked when it
        reduces, see the module doc) and the scalar loop over the rest (the whole pass where the
        compiler targets no vector ISA or the pass has no vector form)."""
        if vector is None or accs is None:
            return self._outer_loop(self._element_loop(scalar, clause))
        count, run = self._run_count, self._run[-1]

        def copy(k: int, updates: list[str]) -> list[str]:
            start = "tw_e0" if k == 0 else f"tw_e0 + {k} * TW_VW"
            return ["{", f"  const int64_t e = {start};", f"  const int64_t e{run} = e;",
                    *("  " + line for line in vector + updates), "}"]

        if not accs.block:  # no sums: no blocks, no unrolling needed for the stores of an output pass
            unrolled = copy(0, accs.updates[0]) if not accs.before else \
                [line for k in range(UNROLL) for line in copy(k, accs.updates[k])]
            step = "TW_VW" if not accs.before else f"{UNROLL} * TW_VW"
            loop = [f"for (; tw_e0 + {step} <= {count}; tw_e0 += {step}) {{", *("  " + x for x in unrolled), "}"]
            if accs.before:
                loop += [f"for (; tw_e0 + TW_VW <= {count}; tw_e0 += TW_VW) {{",
                         *("  " + x for x in copy(0, accs.updates[0])), "}"]
        else:
            block = f"{BLOCK_DEPTH * UNROLL} * TW_VW"
            loop = [f"while (tw_e0 + TW_VW <= {count}) {{",
                    f"  const int64_t tw_end = tw_e0 + {block} < {count} ? tw_e0 + {block} : {count};",
                    *("  " + x for x in accs.block),
                    f"  for (; tw_e0 + {UNROLL} * TW_VW <= tw_end; tw_e0 += {UNROLL} * TW_VW) {{",
                    *("    " + x for k in range(UNROLL) for x in copy(k, accs.updates[k])), "  }",
                    "  for (; tw_e0 + TW_VW <= tw_end; tw_e0 += TW_VW) {",
                    *("    " + x for x in copy(0, accs.updates[0])), "  }",
                    *("  " + x for x in accs.flush), "}"]
        head = ["{", "int64_t tw_e0 = 0;", "#if TW_VW", *accs.before, *loop, *accs.combine, "#endif"]
        return self._outer_loop(head + self._element_loop(scalar, clause, "tw_e0") + ["}"])
