"""IR verifier, run between passes: SSA order, user lists and types must be consistent."""
from __future__ import annotations

from .graph import Graph


class VerificationError(RuntimeError):
    """The IR is malformed; the message names the pass that broke it and the node."""


def verify(graph: Graph, after: str = "") -> None:
    """Raise :class:`VerificationError` if ``graph`` is not well formed."""
    where = f" after pass '{after}'" if after else ""
    defined = {v.id for v in graph.inputs} | {v.id for v in graph.constants}
    for node in graph.nodes:
        for v in node.inputs:
            if v.id not in defined:
                raise VerificationError(f"{node.op} uses %{v.name} before it is defined{where}")
            if node not in v.users:
                raise VerificationError(f"%{v.name} does not list {node.op} as a user{where}")
        for o in node.outputs:
            if o.producer is not node:
                raise VerificationError(f"%{o.name} has the wrong producer{where}")
            if o.type is None or len(o.type.shape) != len(o.type.strides):
                raise VerificationError(f"%{o.name} has a malformed type {o.type}{where}")
            defined.add(o.id)
    for v in graph.output_values():
        if v.id not in defined:
            raise VerificationError(f"graph output %{v.name} is not defined{where}")
