"""The launchable kernel every target builds: launch state, explain entry, tuner protocol.

A target's kernel (a generated Triton kernel, a convolution with its epilogue, a scatter, and
later native CPU kernels) subclasses :class:`Kernel`. The runtime launches it and falls back to
the reference of ``nodes`` when it fails, explain reports :meth:`Kernel.describe`, and the tuner
sees it through the :class:`~tilewright.schedule.problem.TunableKernel` protocol
(``problem``, ``space``, :meth:`Kernel.make_inputs`, :meth:`Kernel.runner`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..ir.graph import Node, Value
from .problem import KernelProblem
from .space import Config, ScheduleSpace


def fresh_tensor(v: Value, device: torch.device | str) -> torch.Tensor:
    """A random tensor with ``v``'s shape, dtype and strides (memory for the whole span)."""
    t = v.type
    span = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.strides) if s > 0) if t.numel else 0
    if t.dtype.is_floating_point:
        flat = torch.randn(max(span, 1), device=device).to(t.dtype)
    elif t.dtype == torch.bool:
        flat = torch.rand(max(span, 1), device=device) > 0.5
    else:
        flat = torch.zeros(max(span, 1), dtype=t.dtype, device=device)
    return flat.as_strided(t.shape, t.strides)


class Kernel:
    """Base of every launchable kernel.

    Subclasses set ``nodes`` (the IR nodes it computes: its reference), ``inputs`` and
    ``outputs`` (the values :meth:`launch` takes, in order), ``ops`` and ``kind``, call
    ``super().__init__`` once ``space`` and ``problem`` are known, and implement :meth:`launch`.
    """

    kind: str = ""
    nodes: list[Node]
    inputs: list[Value]
    outputs: list[Value]
    ops: list[str]

    def __init__(self, name: str, space: ScheduleSpace, problem: KernelProblem) -> None:
        self.name = name
        self.space = space
        self.problem = problem
        #: the config launches use, and where it came from (database, tuned, costmodel, default)
        self.config: Config = space.default_config()
        self.config_source = "default"
        #: why the kernel fell back (its reference runs from then on); None while it works
        self.broken: str | None = None
        #: whether ``verify`` has compared it with its reference
        self.verified = False

    def launch(self, tensors: Sequence[torch.Tensor], config: Config | None = None) -> None:  # pragma: no cover
        """Run the kernel on ``tensors`` (inputs then outputs) with ``config`` (default: its own)."""
        raise NotImplementedError

    def launch_values(self) -> list[Value]:
        """Values of the launch arguments: inputs then outputs."""
        return self.inputs + self.outputs

    def describe(self) -> dict[str, Any]:
        """Explain-report entry: name, kind, fused ops, schedule and where it came from."""
        return {"name": self.name, "kind": self.kind, "ops": list(self.ops), "schedule": dict(self.config),
                "schedule_source": self.config_source, "dims": dict(self.problem.dims), **self.describe_extra(),
                "fallback": self.broken}

    def describe_extra(self) -> dict[str, Any]:
        """Kind-specific explain fields (fused epilogue, shape)."""
        return {}

    def make_inputs(self, device: str) -> list[torch.Tensor]:
        """Random inputs and empty outputs with the kernel's shapes, dtypes and strides."""
        return [fresh_tensor(v, device) for v in self.launch_values()]

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        """A launcher bound to ``config`` (compiles lazily on first call)."""
        self.space.validate(config)
        return lambda tensors: self.launch(tensors, config)
