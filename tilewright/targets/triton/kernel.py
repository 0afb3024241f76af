"""A generated Triton kernel for a fused group: its source, problem and launcher.

:class:`GeneratedKernel` is a :class:`~tilewright.schedule.kernel.Kernel`: the runtime launches
it (falling back to the group's reference ops), and the tuner sees its problem, schedule space,
fresh inputs and a runner per config.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Sequence

import torch

from ...schedule.problem import KernelProblem
from ...schedule.space import Config
from ...ir.graph import Node
from ...schedule.kernel import Kernel
from .source import KernelSource
from .loader import load_kernel

log = logging.getLogger(__name__)

LAUNCH_OPTIONS = ("num_warps", "num_stages")


class GeneratedKernel(Kernel):
    """One generated Triton kernel for a fused group."""

    def __init__(self, spec: KernelSource, nodes: list[Node]) -> None:
        self.spec = spec
        self.kind = spec.kind
        self.nodes = nodes
        self.inputs = spec.inputs
        self.outputs = spec.outputs
        self.ops = list(spec.ops)
        self._fns: dict[str, Any] = {}
        fingerprint = hashlib.sha256(spec.source.encode()).hexdigest()[:16]
        first = spec.inputs[0] if spec.inputs else spec.outputs[0]
        dtype = str(first.type.dtype).replace("torch.", "")
        signature = tuple((list(v.type.shape), str(v.type.dtype), list(v.type.strides))
                          for v in spec.inputs + spec.outputs)
        nbytes = sum(v.type.numel * v.type.dtype.itemsize for v in spec.inputs + spec.outputs)
        problem = KernelProblem(spec.kind, fingerprint, dict(spec.dims), dtype, signature, spec.flops,
                                float(nbytes), {"ops": len(nodes), **{k: v for k, v in spec.meta.items()
                                                                     if isinstance(v, (int, str, list))}})
        super().__init__(spec.name, spec.space, problem)

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

    def tensor_launcher(self) -> Any:
        """The runtime's fast path: a callable on the launch tensors with the current config's
        function, grid, constants and launch options bound once (compiles on first use)."""
        config = self.config
        launch = self._function_for(config)[self.spec.grid(config)]
        kwargs = {k: v for k, v in config.items() if k not in LAUNCH_OPTIONS}
        kwargs.update({k: v for k, v in config.items() if k in LAUNCH_OPTIONS})
        return lambda *tensors: launch(*tensors, **kwargs)

    def compile_jobs(self, config: Config | None = None) -> list[Any]:
        """What an offline compile of this kernel under ``config`` builds (see ``cross_compile``)."""
        from .cross_compile import jobs_for

        return jobs_for(self, config or self.config)

    def launch_spec(self, config: Config | None = None) -> dict[str, Any] | None:
        """A picklable description of one launch under ``config`` (source, function, tensor
        shapes/strides/dtypes, grid, constants): a compile worker rebuilds and launches it to warm
        Triton's cache (the kernel itself holds IR and closures that do not pickle). None for
        subclasses that launch differently."""
        if type(self).launch is not GeneratedKernel.launch:
            return None
        config = dict(config or self.config)
        fn_name = self.spec.fn_name
        if self.spec.kind == "reduction":
            persistent = int(config["RBLOCK"]) >= int(self.spec.meta["rnumel"])
            fn_name = self.spec.meta["persistent_fn" if persistent else "looped_fn"]
        return {"source": self.spec.source, "fn_name": fn_name,
                "tensors": [(list(v.type.shape), list(v.type.strides), str(v.type.dtype).replace("torch.", ""))
                            for v in self.inputs + self.outputs],
                "grid": tuple(int(g) for g in self.spec.grid(config)),
                "kwargs": dict(config)}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fns"] = {}  # loaded Triton functions are rebuilt where the kernel is unpickled
        return state

    def describe_extra(self) -> dict[str, Any]:
        """A matmul's fused epilogue ops."""
        return {"epilogue": self.spec.meta.get("epilogue_ops", [])} if self.spec.kind == "matmul" else {}
