"""Kernel groups: the nodes one kernel (or one extern call) computes.

:mod:`tilewright.passes.fusion` forms the groups; a target builds each group's kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..ir.graph import Node
from ..ir.registry import lookup

#: kinds whose group has an anchor node (the epilogue is computed at the anchor's output index)
ANCHORED = ("matmul", "conv")


@dataclass(eq=False)
class Group:
    """One future kernel (or extern call)."""

    id: int
    kind: str
    nodes: list[Node]
    anchor: Node | None = None
    reason: str = ""

    def numel(self) -> int:
        """Element count of the group's iteration space (elements for reductions)."""
        if self.kind in ANCHORED and self.anchor is not None:
            return self.anchor.outputs[0].type.numel
        if self.kind == "reduction":
            red = next(n for n in self.nodes if lookup(n.target).kind == "reduction")
            return red.args[0].type.numel
        return self.nodes[0].outputs[0].type.numel if self.nodes[0].outputs else 0

    def row_numel(self) -> int:
        """Rows of a reduction group (0 for other kinds)."""
        if self.kind != "reduction":
            return 0
        red = next(n for n in self.nodes if lookup(n.target).kind == "reduction")
        return red.outputs[0].type.numel
