"""The tilewright IR: a typed tensor graph in SSA form.

A :class:`Graph` holds input values, nodes in topological order and an output structure.
Every tensor :class:`Value` carries a :class:`TensorType`; every :class:`Node` names an op
from the registry (``tilewright.ir.registry``) and keeps the torch op it came from, so any
node can always be run by its reference implementation.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from .types import TensorType

_ids = itertools.count()


class Value:
    """One SSA value: a tensor (with a type) produced by a node or fed to the graph."""

    __slots__ = ("id", "name", "type", "producer", "index", "users", "constant")

    def __init__(self, name: str, type: TensorType, producer: "Node | None" = None, index: int = 0,
                 constant: torch.Tensor | None = None) -> None:
        self.id = next(_ids)
        self.name = name
        self.type = type
        self.producer = producer
        self.index = index
        self.users: list[Node] = []
        self.constant = constant

    def __repr__(self) -> str:
        return f"%{self.name}"


def flatten_values(obj: Any) -> Iterator[Value]:
    """Every Value inside a nested structure of lists/tuples/dicts."""
    if isinstance(obj, Value):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from flatten_values(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from flatten_values(item)


def map_values(obj: Any, fn: Callable[[Value], Any]) -> Any:
    """Rebuild a nested structure with every Value replaced by ``fn(value)``."""
    if isinstance(obj, Value):
        return fn(obj)
    if isinstance(obj, list):
        return [map_values(o, fn) for o in obj]
    if isinstance(obj, tuple):
        return tuple(map_values(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: map_values(v, fn) for k, v in obj.items()}
    return obj


@dataclass(eq=False)
class Node:
    """One operation. ``args``/``kwargs`` mirror the torch op's call with Values for tensors."""

    op: str
    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: list[Value] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.id = next(_ids)

    @property
    def inputs(self) -> list[Value]:
        """Tensor inputs in argument order (duplicates kept once)."""
        seen: dict[int, Value] = {}
        for v in itertools.chain(flatten_values(self.args), flatten_values(self.kwargs)):
            seen.setdefault(v.id, v)
        return list(seen.values())

    @property
    def out(self) -> Value:
        """The single output (raises for multi-output nodes)."""
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op} has {len(self.outputs)} outputs")
        return self.outputs[0]

    def __repr__(self) -> str:
        return f"Node({self.op}, {self.outputs})"


class Graph:
    """A tensor graph: ``inputs`` (placeholders and constants), ``nodes`` (topological), ``outputs``."""

    def __init__(self) -> None:
        self.inputs: list[Value] = []
        #: position of each tensor input among the caller's arguments (non-tensor arguments,
        #: such as sizes of a dynamic graph, are baked into the specialised graph)
        self.input_positions: list[int] = []
        self.constants: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: Any = ()
        self._names: set[str] = set()

    def fresh_name(self, hint: str) -> str:
        """A unique value name based on ``hint``."""
        base = "".join(c if c.isalnum() or c == "_" else "_" for c in hint) or "v"
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        """Append a graph input."""
        v = Value(self.fresh_name(name), type)
        self.inputs.append(v)
        return v

    def add_constant(self, name: str, tensor: torch.Tensor) -> Value:
        """A constant tensor the graph owns (weights baked in, lifted constants)."""
        v = Value(self.fresh_name(name), TensorType.of(tensor), constant=tensor)
        self.constants.append(v)
        return v

    def add_node(self, op: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 out_types: list[TensorType], name: str | None = None) -> Node:
        """Append a node with fresh output values of ``out_types``."""
        node = Node(op, target, args, kwargs)
        hint = name or (op.split(".")[1] if "." in op else op)
        for i, t in enumerate(out_types):
            node.outputs.append(Value(self.fresh_name(hint if len(out_types) == 1 else f"{hint}_{i}"), t, node, i))
        for v in node.inputs:
            v.users.append(node)
        self.nodes.append(node)
        return node

    def output_values(self) -> list[Value]:
        """Values the graph returns (flattened)."""
        return list(flatten_values(self.outputs))

    def rebuild_users(self) -> None:
        """Recompute ``Value.users`` from the node list."""
        for v in itertools.chain(self.inputs, self.constants):
            v.users = []
        for n in self.nodes:
            for o in n.outputs:
                o.users = []
        for n in self.nodes:
            for v in n.inputs:
                v.users.append(n)

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every use of ``old`` (in nodes and outputs) at ``new``."""
        fn = lambda v: new if v is old else v  # noqa: E731
        for n in old.users:
            n.args = map_values(n.args, fn)
            n.kwargs = map_values(n.kwargs, fn)
            new.users.append(n)
        old.users = []
        self.outputs = map_values(self.outputs, fn)

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)
