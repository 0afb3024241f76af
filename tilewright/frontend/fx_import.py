"""Import an ATen-level ``torch.fx.GraphModule`` into the tilewright IR.

The graph is interpreted once over fake tensors made from the real inputs of one call, so
every value gets concrete sizes, strides and dtype exactly as eager would produce them
(graphs with symbolic sizes are thereby specialised per concrete shape).
"""
from __future__ import annotations

import logging
import operator
from typing import Any, Sequence

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode

from ..ir.graph import Graph, Value
from ..ir.registry import overload_name
from ..ir.types import TensorType

log = logging.getLogger(__name__)


class ImportError_(RuntimeError):
    """The FX graph contains something the importer cannot represent (the graph runs eagerly)."""


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def import_fx(gm: fx.GraphModule, inputs: Sequence[Any]) -> Graph:
    """Build an IR graph from ``gm`` specialised to the concrete ``inputs``."""
    graph = Graph()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    ir_env: dict[fx.Node, Any] = {}
    fake_env: dict[fx.Node, Any] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(inputs):
        raise ImportError_(f"graph has {len(placeholders)} inputs, got {len(inputs)}")
    with fake_mode:
        pass
    input_iter = iter(enumerate(inputs))

    def ir_of(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: ir_env[n])

    def fake_of(a: Any) -> Any:
        return fx.node.map_arg(a, lambda n: fake_env[n])

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            position, real = next(input_iter)
            if _is_tensor(real):
                ir_env[node] = graph.add_input(node.name, TensorType.of(real))
                graph.input_positions.append(position)
                fake_env[node] = fake_mode.from_tensor(real)
            else:
                ir_env[node] = real
                fake_env[node] = real
        elif node.op == "get_attr":
            attr = gm
            for part in node.target.split("."):
                attr = getattr(attr, part)
            if _is_tensor(attr):
                ir_env[node] = graph.add_constant(node.name, attr)
                fake_env[node] = fake_mode.from_tensor(attr)
            else:
                ir_env[node] = attr
                fake_env[node] = attr
        elif node.op == "call_function":
            _import_call(graph, node, ir_of, fake_of, ir_env, fake_env, fake_mode)
        elif node.op == "output":
            graph.outputs = ir_of(node.args[0])
        else:
            raise ImportError_(f"unsupported FX node kind {node.op} ({node.target})")
    return graph


def _import_call(graph: Graph, node: fx.Node, ir_of: Any, fake_of: Any, ir_env: dict[fx.Node, Any],
                 fake_env: dict[fx.Node, Any], fake_mode: FakeTensorMode) -> None:
    target = node.target
    if target is operator.getitem and isinstance(ir_env.get(node.args[0]), _MultiOut):
        multi: _MultiOut = ir_env[node.args[0]]
        ir_env[node] = multi.items[node.args[1]]
        fake_env[node] = fake_env[node.args[0]][node.args[1]]
        return
    args, kwargs = ir_of(node.args), ir_of(node.kwargs)
    fargs, fkwargs = fake_of(node.args), fake_of(node.kwargs)
    if not isinstance(target, torch._ops.OpOverload):
        if not any(isinstance(v, Value) for v in _flat(args) + _flat(kwargs)):
            # python-level arithmetic on sizes (already concrete) or other callables
            value = target(*fargs, **fkwargs)
            ir_env[node] = value
            fake_env[node] = value
            return
        # a non-ATen call on tensors (a higher-order op such as with_effects): it becomes an
        # extern step of its own, typed by running it on fake tensors
        log.debug("importing non-ATen call %s as an extern step", target)
    with fake_mode:
        try:
            out = target(*fargs, **fkwargs)
        except Exception as exc:  # data-dependent ops and the like
            raise ImportError_(f"cannot propagate shapes through {target}: {exc}") from exc
    name = overload_name(target)
    if _is_tensor(out):
        n = graph.add_node(name, target, tuple(args), dict(kwargs), [TensorType.of(out)], name=node.name)
        ir_env[node] = n.outputs[0]
        fake_env[node] = out
    elif isinstance(out, (tuple, list)):
        types = [TensorType.of(o) for o in out if _is_tensor(o)]
        n = graph.add_node(name, target, tuple(args), dict(kwargs), types, name=node.name)
        items: list[Any] = []
        it = iter(n.outputs)
        for o in out:
            items.append(next(it) if _is_tensor(o) else o)
        n.meta["returns_list"] = isinstance(out, list)
        n.meta["out_structure"] = [_is_tensor(o) for o in out]
        ir_env[node] = _MultiOut(items)
        fake_env[node] = out
    elif out is None:
        n = graph.add_node(name, target, tuple(args), dict(kwargs), [], name=node.name)
        ir_env[node] = None
        fake_env[node] = None
    else:
        if isinstance(out, torch.SymInt) or not isinstance(out, (int, float, bool)):
            raise ImportError_(f"{target} returns a data-dependent value {out!r}")
        ir_env[node] = out
        fake_env[node] = out


class _MultiOut:
    """Importer-internal holder for the outputs of a multi-output node."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items


def _flat(obj: Any) -> list[Any]:
    if isinstance(obj, (list, tuple)):
        out: list[Any] = []
        for o in obj:
            out.extend(_flat(o))
        return out
    if isinstance(obj, dict):
        return _flat(list(obj.values()))
    return [obj]
