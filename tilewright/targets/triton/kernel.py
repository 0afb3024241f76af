"""A generated kernel ready to launch: source, chosen config, reference and fallback.

:class:`GeneratedKernel` also implements the tuner's ``TunableKernel`` protocol (problem,
schedule space, fresh inputs, a runner per config) so every fused group can be autotuned.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable, Sequence

import torch

from ...schedule.problem import KernelProblem
from ...schedule.space import Config
from ...ir.graph import Node, Value, map_values
from ...ir.registry import lookup
from .pointwise_reduction import KernelSource
from .loader import load_kernel

log = logging.getLogger(__name__)

LAUNCH_OPTIONS = ("num_warps", "num_stages")


def evaluate_value(v: Value, env: dict[int, torch.Tensor]) -> torch.Tensor:
    """``env[v]``, computing views of available tensors on demand (with their torch op)."""
    if v.id in env:
        return env[v.id]
    if v.constant is not None:
        return v.constant
    node = v.producer
    if node is None or lookup(node.target).kind != "view":
        raise KeyError(f"value %{v.name} is not available")
    args = map_values(node.args, lambda a: evaluate_value(a, env))
    kwargs = map_values(node.kwargs, lambda a: evaluate_value(a, env))
    result = node.target(*args, **kwargs)
    outs = list(result) if isinstance(result, (list, tuple)) else [result]
    for o, t in zip(node.outputs, outs):
        env[o.id] = t
    return env[v.id]


def run_reference(nodes: list[Node], env: dict[int, torch.Tensor]) -> None:
    """Run ``nodes`` with their torch ops, writing outputs into ``env``."""
    for node in nodes:
        args = map_values(node.args, lambda a: evaluate_value(a, env))
        kwargs = map_values(node.kwargs, lambda a: evaluate_value(a, env))
        result = node.target(*args, **kwargs)
        outs = [r for r in result if isinstance(r, torch.Tensor)] if isinstance(result, (list, tuple)) else [result]
        for o, t in zip(node.outputs, outs):
            env[o.id] = t


def _fresh(v: Value, device: torch.device | str) -> torch.Tensor:
    t = v.type
    span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.strides) if s > 0) if t.numel else 0
    if t.dtype.is_floating_point:
        flat = torch.randn(max(span, 1), device=device).to(t.dtype)
    elif t.dtype == torch.bool:
        flat = torch.rand(max(span, 1), device=device) > 0.5
    else:
        flat = torch.zeros(max(span, 1), dtype=t.dtype, device=device)
    return flat.as_strided(t.shape, t.strides)


class TunableMixin:
    """The tuner-facing half of a launchable kernel: fresh inputs and a runner per config.

    Subclasses provide ``space``, ``launch(tensors, config)`` and ``launch_values()`` (the
    values whose tensors ``launch`` takes, inputs then outputs).
    """

    space: Any

    def launch_values(self) -> list[Value]:  # pragma: no cover - abstract
        """Values of the launch arguments, in order."""
        raise NotImplementedError

    def launch(self, tensors: Sequence[torch.Tensor], config: Config | None = None) -> None:  # pragma: no cover
        """Run the kernel on ``tensors``."""
        raise NotImplementedError

    def make_inputs(self, device: str) -> list[torch.Tensor]:
        """Random inputs and empty outputs with the kernel's shapes, dtypes and strides."""
        return [_fresh(v, device) for v in self.launch_values()]

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        """A launcher bound to ``config`` (compiles lazily on first call)."""
        self.space.validate(config)
        return lambda tensors: self.launch(tensors, config)


class GeneratedKernel(TunableMixin):
    """One generated Triton kernel for a fused group."""

    def __init__(self, spec: KernelSource, nodes: list[Node]) -> None:
        self.spec = spec
        self.name = spec.name
        self.nodes = nodes
        self.space = spec.space
        self.config: Config = spec.space.default_config()
        self.config_source = "default"
        self.broken: str | None = None
        self.verified = False
        self._fns: dict[str, Any] = {}
        fingerprint = hashlib.sha256(spec.source.encode()).hexdigest()[:16]
        first = spec.inputs[0] if spec.inputs else spec.outputs[0]
        dtype = str(first.type.dtype).replace("torch.", "")
        signature = tuple((list(v.type.shape), str(v.type.dtype), list(v.type.strides))
                          for v in spec.inputs + spec.outputs)
        nbytes = sum(v.type.numel * v.type.dtype.itemsize for v in spec.inputs + spec.outputs)
        self.problem = KernelProblem(spec.kind, fingerprint, dict(spec.dims), dtype, signature, spec.flops,
                                     float(nbytes), {"ops": len(nodes), **{k: v for k, v in spec.meta.items()
                                                                          if isinstance(v, (int, str, list))}})

    # -- compiling and launching ---------------------------------------------------------
    def _function_for(self, config: Config) -> Any:
        fn_name = self.spec.fn_name
        if self.spec.kind == "reduction":
            persistent = int(config["RBLOCK"]) >= int(self.spec.meta["rnumel"])
            fn_name = self.spec.meta["persistent_fn" if persistent else "looped_fn"]
        if fn_name not in self._fns:
            self._fns[fn_name] = load_kernel(self.spec.source, fn_name)
        return self._fns[fn_name]

    def launch(self, tensors: Sequence[torch.Tensor], config: Config | None = None) -> None:
        """Launch on ``tensors`` (inputs then outputs, in the spec's order)."""
        config = config or self.config
        fn = self._function_for(config)
        consts = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
        opts = {k: v for k, v in config.items() if k in LAUNCH_OPTIONS}
        fn[self.spec.grid(config)](*tensors, **consts, **opts)

    # -- TunableKernel protocol ------------------------------------------------------------
    def launch_values(self) -> list[Value]:
        """Inputs then outputs, as :meth:`launch` takes them."""
        return self.spec.inputs + self.spec.outputs

    def describe(self) -> dict[str, Any]:
        """Explain-report entry."""
        return {"name": self.name, "kind": self.spec.kind, "ops": list(self.spec.ops),
                "schedule": dict(self.config), "schedule_source": self.config_source,
                "dims": dict(self.spec.dims), "fallback": self.broken, **(
                    {"epilogue": self.spec.meta.get("epilogue_ops", [])} if self.spec.kind == "matmul" else {})}
