"""Checks an imported MLIR graph against the types the MLIR module declares.

Every node built from an MLIR op carries ``meta["mlir_type"]``. Running the graph on fake tensors
(no real compute) gives each node its ``meta["val"]``, as AOTAutograd graphs have, and any
difference in rank, static size or dtype means the importer picked the wrong overload or argument:
that becomes an :class:`MlirOpError` naming the op and its location instead of a wrong result.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.fx
from torch._subclasses.fake_tensor import FakeTensorMode

from .ops import MlirOpError, MlirTensorType

logger = logging.getLogger(__name__)


class _FakeRunner(torch.fx.Interpreter):
    """Propagates fake tensors, storing ``meta["val"]`` and re-raising errors with the MLIR loc."""

    def __init__(self, gm: torch.fx.GraphModule, mode: FakeTensorMode) -> None:
        super().__init__(gm)
        self.mode = mode

    def run_node(self, n: torch.fx.Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as exc:  # noqa: BLE001 - re-raised with the op's location
            raise MlirOpError(n.meta.get("mlir_op", str(n.target)), n.meta.get("mlir_loc", "?"),
                              f"running {n.target} failed: {exc}") from exc
        n.meta["val"] = result
        _compare(n, result)
        return result


def _compare(n: torch.fx.Node, value: Any) -> None:
    ttype: MlirTensorType | None = n.meta.get("mlir_type")
    if ttype is None or not isinstance(value, torch.Tensor):
        return
    problems = []
    if ttype.dtype is not None and value.dtype != ttype.dtype:
        problems.append(f"dtype {value.dtype} != declared {ttype.dtype}")
    if ttype.shape is not None:
        got = tuple(value.shape)
        if len(got) != len(ttype.shape) or any(
                d is not None and isinstance(g, int) and g != d for g, d in zip(got, ttype.shape)):
            problems.append(f"shape {list(got)} != declared {list(ttype.shape)}")
    if problems:
        raise MlirOpError(n.meta.get("mlir_op", str(n.target)), n.meta.get("mlir_loc", "?"),
                          f"imported as {n.target}, which gives " + "; ".join(problems))


def check_declared_types(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> None:
    """Fake-run ``gm`` on ``example_inputs``; fill ``meta["val"]`` and check declared types.

    Raises:
        MlirOpError: a node fails to run or disagrees with its declared MLIR type.
    """
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        fake_inputs = [mode.from_tensor(t) for t in example_inputs]
        try:
            _FakeRunner(gm, mode).run(*fake_inputs)
        except MlirOpError as exc:
            # NOTE: fx.Interpreter appends "While executing ..." to the message; keep ours clean
            raise MlirOpError(exc.op_name, exc.location, exc.reason) from exc.__cause__
    logger.debug("declared MLIR types match for %d nodes", len(gm.graph.nodes))


def lower_reshapes(gm: torch.fx.GraphModule) -> int:
    """Turn each ``aten.reshape`` with a known input into ``view`` or ``clone`` + ``view``.

    Needs ``meta["val"]`` (from :func:`check_declared_types`); returns the number rewritten.
    """
    count = 0
    for n in list(gm.graph.nodes):
        if n.target is not torch.ops.aten.reshape.default:
            continue
        src = n.args[0]
        val = src.meta.get("val") if isinstance(src, torch.fx.Node) else None
        if not isinstance(val, torch.Tensor):
            continue
        if not val.is_contiguous():
            # reshape of a non-contiguous tensor -> clone(contiguous) + view
            with gm.graph.inserting_before(n):
                clone = gm.graph.call_function(torch.ops.aten.clone.default, (src,),
                                               {"memory_format": torch.contiguous_format})
            clone.meta.update({k: v for k, v in n.meta.items() if k in ("mlir_op", "mlir_loc")})
            clone.meta["val"] = val.contiguous()
            n.args = (clone, *n.args[1:])
        # reshape of a contiguous tensor -> view
        n.target = torch.ops.aten.view.default
        count += 1
    gm.graph.lint()
    gm.recompile()
    return count


def specialize(gm: torch.fx.GraphModule) -> bool:
    """Bake the shapes of the last :func:`check_declared_types` run into ``gm``.

    Scalar nodes (``sym_size``, size arithmetic) become their values and every declared type
    takes the concrete shape, so rules that need static shapes (recomposition, mask folding)
    apply to a module with dynamic dims. Returns whether anything was dynamic.
    """
    changed = False
    for n in list(gm.graph.nodes):
        val = n.meta.get("val")
        if n.op == "call_function" and isinstance(val, (int, float, bool)) and not isinstance(val, torch.Tensor):
            for user in list(n.users):
                user.args = torch.fx.node.map_aggregate(user.args, lambda a: val if a is n else a)
                user.kwargs = torch.fx.node.map_aggregate(user.kwargs, lambda a: val if a is n else a)
            gm.graph.erase_node(n)
            changed = True
            continue
        ttype = n.meta.get("mlir_type")
        if isinstance(ttype, MlirTensorType) and isinstance(val, torch.Tensor) and not ttype.is_static:
            n.meta["mlir_type"] = MlirTensorType(tuple(int(s) for s in val.shape), val.dtype)
            changed = True
    gm.graph.lint()
    gm.recompile()
    return changed
