"""How a row of a reduction kernel walks its reduced elements: one contiguous *run* (vectorised)
inside a loop over the other reduced dims.

A batch norm in training reduces an NCHW tensor over ``(N, H, W)`` per channel. Walked as one flat
index split into ``(n, h, w)`` by division per element, every pass was a scalar loop with two
integer divisions an element (ResNet-18's training step: its batch-norm kernels took 107 ms of
CPU time where eager's took 14). Instead, the innermost reduced dims that every operand reads
linearly (``stride[d] == size[d+1] * stride[d+1]``: H and W of a contiguous NCHW tensor) are
walked as one index over their product (the *run*, ``H * W`` elements, unit stride: the explicit
SIMD loop applies), and the remaining reduced dims (``N``) as an outer loop whose index is split
once per run. A batch of 1 keeps the outer loop (one iteration), so other batch sizes reuse the code.
"""
from __future__ import annotations

import math

from ...ir.graph import Node, Value
from ...ir.registry import lookup, packet_name
from .pointwise import broadcast_strides

#: views that keep elements in order (a row value read back through them is still the row's scalar)
_ORDER_KEEPING_VIEWS = ("aten.unsqueeze", "aten.squeeze", "aten.view", "aten.reshape", "aten._unsafe_view",
                        "aten.alias")


def row_views(nodes: list[Node]) -> dict[int, Value]:
    """Operands of ``nodes`` that are order-keeping views of a value the group computes: view id ->
    that value. A batch norm's backward reads its per-channel sums back as ``unsqueeze(sum, ...)``
    in the element pass; the reduction kernel then uses the row's scalar instead of refusing the
    group (which left the element pass a kernel of its own, reading two materialized tensors)."""
    ids = {n.outputs[0].id for n in nodes}
    found: dict[int, Value] = {}
    for n in nodes:
        for a in n.inputs:
            v, node = a, a.producer
            while node is not None and lookup(node.target).kind == "view" and isinstance(node.args[0], Value):
                if packet_name(node.target) not in _ORDER_KEEPING_VIEWS and not _expands_row(node):
                    break
                v = node.args[0]
                if v.id in ids:
                    found[a.id] = v
                    break
                node = v.producer
    return found


def _expands_row(node: Node) -> bool:
    """An ``expand`` that only broadcasts size-1 dims (an RMS norm's backward reads its row sum back
    as ``expand(row, element shape)``; the group accepts it where the source has the kept dims'
    shape, see ``ReductionSource._classify_alias``)."""
    if packet_name(node.target) != "aten.expand" or not isinstance(node.args[0], Value):
        return False
    src, out = tuple(node.args[0].type.shape), tuple(node.outputs[0].type.shape)
    return len(src) == len(out) and all(s in (1, o) for s, o in zip(src, out))


class ReductionRuns:
    """Mixed into :class:`~.reduction.ReductionSource` (see module doc)."""

    def _loop_dims(self) -> tuple[list[int], list[int]]:  # type: ignore[no-untyped-def]
        """(the run: innermost reduced dims read linearly by every element operand, the outer
        reduced dims) in element-dim order."""
        strided = [broadcast_strides(v, self.element_shape) for v in self._element_operands()]
        run = [self.dims[-1]]
        for d in reversed(self.dims[:-1]):
            if d != run[0] - 1:
                break
            span = math.prod(self.element_shape[e] for e in run)
            if any(s[d] != span * s[run[-1]] for s in strided):
                break
            run.insert(0, d)
        return run, [d for d in self.dims if d not in run]

    def _element_operands(self) -> list:  # type: ignore[no-untyped-def,type-arg]
        """Inputs read at element indices and outputs written at them."""
        return ([v for v in self.inputs if self.space_of_input(v) == "element"]
                + [v for v in self.outputs if self.space[v.id] == "element"])

    @property
    def _run_count(self) -> str:  # type: ignore[no-untyped-def]
        """Elements of one run (the whole row's count when there is no outer loop)."""
        if not self._outer:
            return self._count
        return self.sizes.size(math.prod(self.element_shape[d] for d in self._run), "run")

    def _outer_loop(self, inner: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
        """``inner`` (one pass over a run) inside the loop over the outer reduced dims."""
        if not self._outer:
            return inner
        outer = self.sizes.size(math.prod(self.element_shape[d] for d in self._outer), "outer reduced")
        split = ["  int64_t rest_o = eo;"]
        for d in reversed(self._outer):
            split.append(f"  const int64_t e{d} = rest_o % {self._dim(d)}; rest_o /= {self._dim(d)};"
                         if d != self._outer[0] else f"  const int64_t e{d} = rest_o;")
        split += ["  (void)rest_o;", f"  const int64_t tw_eb = eo * {self._run_count}; (void)tw_eb;"]
        return [f"for (int64_t eo = 0; eo < {outer}; ++eo) {{", *split, *("  " + line for line in inner), "}"]
