"""Test helpers: a compile backend that runs the attention rewrite then AOTAutograd, and counts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from tilewright.passes.fx.attention_rewrite import rewrite_attention

FWD = torch.ops.tilewright.flash_attention.default
BWD = torch.ops.tilewright.flash_attention_backward.default


@dataclass
class Capture:
    """What the test backend saw: fused-block infos and the forward/backward graphs."""

    infos: list[dict[str, Any]] = field(default_factory=list)
    fw_graphs: list[torch.fx.GraphModule] = field(default_factory=list)
    bw_graphs: list[torch.fx.GraphModule] = field(default_factory=list)

    def count(self, target: Any, graphs: str = "fw") -> int:
        gms = self.fw_graphs if graphs == "fw" else self.bw_graphs
        return sum(1 for gm in gms for n in gm.graph.nodes if n.target is target)


def make_backend() -> tuple[Callable[..., Any], Capture]:
    """A backend: rewrite_attention -> aot_autograd with pass-through compilers that record graphs."""
    cap = Capture()

    def fw(gm: torch.fx.GraphModule, ex: list[Any]) -> Callable[..., Any]:
        cap.fw_graphs.append(gm)
        return make_boxed_func(gm.forward)

    def bw(gm: torch.fx.GraphModule, ex: list[Any]) -> Callable[..., Any]:
        cap.bw_graphs.append(gm)
        return make_boxed_func(gm.forward)

    inner = aot_autograd(fw_compiler=fw, bw_compiler=bw)

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        gm2, infos = rewrite_attention(gm, example_inputs)
        cap.infos.extend(infos)
        return inner(gm2, example_inputs)

    return backend, cap


def compile_and_run(fn: Callable[..., Any], *args: Any) -> tuple[Any, Capture]:
    """Compile ``fn`` with the test backend, run it once on ``args``."""
    torch._dynamo.reset()
    backend, cap = make_backend()
    out = torch.compile(fn, backend=backend, fullgraph=False)(*args)
    return out, cap
