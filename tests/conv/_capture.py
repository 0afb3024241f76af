"""Capture a model's AOTAutograd core-ATen graphs, run FX passes on them, and run them."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch._decomp import core_aten_decompositions, get_decompositions
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

Pass = Callable[[torch.fx.GraphModule], Any]


def compile_with(model: Any, fw_pass: Pass | None = None, bw_pass: Pass | None = None,
                 decompose_bn: bool = False) -> tuple[Any, dict[str, list[Any]]]:
    """``torch.compile`` with an aot_eager-style backend that applies the given passes.

    Returns the compiled model and a record ``{"fw": [pass results], "bw": [...],
    "graphs": [graph modules after the passes]}``.
    """
    record: dict[str, list[Any]] = {"fw": [], "bw": [], "graphs": []}
    decomps = dict(core_aten_decompositions())
    if decompose_bn:
        aten = torch.ops.aten
        decomps.update(get_decompositions([aten._native_batch_norm_legit_no_training,
                                           aten._native_batch_norm_legit,
                                           aten.native_batch_norm]))

    def make(kind: str, fn: Pass | None) -> Callable[..., Any]:
        def compiler(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
            record[kind].append(fn(gm) if fn is not None else None)
            record["graphs"].append(gm)
            return make_boxed_func(gm.forward)
        return compiler

    backend = aot_autograd(fw_compiler=make("fw", fw_pass), bw_compiler=make("bw", bw_pass),
                           decompositions=decomps)
    return torch.compile(model, backend=backend), record


def count_targets(gm: torch.fx.GraphModule, *targets: Any) -> int:
    """Number of call_function nodes of ``gm`` whose target is one of ``targets``."""
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target in targets)
