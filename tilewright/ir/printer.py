"""Readable text form of an IR graph."""
from __future__ import annotations

from typing import Any

from .graph import Graph, Value


def _fmt(obj: Any) -> str:
    if isinstance(obj, Value):
        return f"%{obj.name}"
    if isinstance(obj, (list, tuple)):
        inner = ", ".join(_fmt(o) for o in obj)
        return f"[{inner}]"
    if isinstance(obj, float):
        return repr(obj)
    return str(obj)


def format_graph(graph: Graph, groups: dict[int, str] | None = None) -> str:
    """One line per input, constant and node: ``%out: type = op(args) [group]``."""
    lines = ["graph("]
    for v in graph.inputs:
        lines.append(f"  %{v.name}: {v.type}")
    lines.append(") {")
    for v in graph.constants:
        lines.append(f"  %{v.name}: {v.type} = constant")
    for n in graph.nodes:
        outs = ", ".join(f"%{o.name}: {o.type}" for o in n.outputs)
        args = ", ".join(_fmt(a) for a in n.args)
        if n.kwargs:
            args += (", " if args else "") + ", ".join(f"{k}={_fmt(v)}" for k, v in n.kwargs.items())
        tag = f"  # {groups[n.id]}" if groups and n.id in groups else ""
        lines.append(f"  {outs} = {n.op}({args}){tag}")
    lines.append(f"  return {_fmt(graph.outputs)}")
    lines.append("}")
    return "\n".join(lines)
