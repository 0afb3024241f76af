"""The launchable kernel of the CPU target: one C function in its graph's shared library."""
from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...errors import BuildError
from ...ir.registry import lookup
from ...schedule.kernel import Kernel
from ...schedule.problem import KernelProblem
from ...schedule.space import Config, ScheduleSpace


class CpuKernel(Kernel):
    """A generated C++ kernel of the CPU target: one function in its graph's shared library.

    ``source`` is a :class:`PointwiseSource` or a reduction source: the C function's text, its
    nodes, inputs and outputs, and ``launch_args(config)`` (the scalars after the tensors).
    """

    def __init__(self, source: Any, kind: str, space: ScheduleSpace, numel: int) -> None:
        self.source = source
        self.kind = kind
        self.nodes = source.nodes
        self.inputs = source.inputs
        self.outputs = source.outputs
        self.ops = [n.op for n in source.nodes]
        values = self.inputs + self.outputs
        signature = tuple((list(v.type.shape), str(v.type.dtype), list(v.type.strides)) for v in values)
        fingerprint = hashlib.sha256(source.source.replace(source.name, "K").encode()).hexdigest()[:16]
        nbytes = float(sum(v.type.numel * v.type.dtype.itemsize for v in values))
        flops = float(numel * sum(lookup(n.target).flops_per_element for n in source.nodes))
        dtype = str(self.outputs[0].type.dtype).replace("torch.", "")
        problem = KernelProblem(kind, f"cpu-{fingerprint}", {"numel": numel}, dtype, signature, flops, nbytes,
                                {"ops": len(source.nodes), "target": "cpu"})
        super().__init__(source.name, space, problem)
        #: set by the target once the graph's library is built: the C function
        self.function: Any = None
        self.library: Any = None

    def race_candidates(self) -> list[Config]:
        """What the compile-time race times when no tuning record decides (GEMMs and convolutions):
        the generated default, the default blocks of any other core the kernel offers
        (:meth:`other_cores`) and extern (the vendor library, then the generated epilogue)."""
        default = dict(self.space.default_config(), extern=False)
        others = [c for c in self.other_cores(default) if self.space.is_feasible(c)]
        return [default, *others, dict(default, extern=True)]

    def other_cores(self, default: Config) -> list[Config]:
        """Configs of the kernel's other compute cores, each with its own default blocks (none here)."""
        return []

    def describe_extra(self) -> dict[str, Any]:
        """Explain: which sizes and strides the code was specialised to and which it takes at run time."""
        sizes = getattr(self.source, "sizes", None)
        return {"sizes": sizes.explain()} if sizes is not None else {}

    def bind(self, library: Any) -> None:
        """Take this kernel's function from its graph's loaded library."""
        fn = getattr(library, self.name)
        fn.restype = None
        scalars = self.source.launch_args(self.config)
        fn.argtypes = [ctypes.c_void_p] * len(self.inputs + self.outputs) + [ctypes.c_int64] * len(scalars)
        self.function, self.library = fn, library

    def pointer_launcher(self) -> tuple[Any, list[int]] | None:
        """The runtime's fast path: the C function and the scalars after the pointers, for the
        current config (None before the library is built). The function takes the data pointers
        of the inputs then the outputs, followed by the scalars. A subclass with a ``launch`` of
        its own gets None unless it overrides this method too (then its launch may be bypassed)."""
        cls = type(self)
        if self.function is None or (cls.launch is not CpuKernel.launch and
                                     cls.pointer_launcher is CpuKernel.pointer_launcher):
            return None
        return self.function, [int(s) for s in self.source.launch_args(self.config)]

    def ensure_built(self) -> None:
        """Build a library of this kernel alone when no graph library holds it yet (tuning at
        compile time measures kernels before their graph's library is built)."""
        if self.function is None:
            build_and_bind([self])

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        """A launcher bound to ``config``; builds the kernel first when needed."""
        self.space.validate(config)
        self.ensure_built()
        return lambda tensors: self.launch(tensors, config)

    def launch(self, tensors: Sequence[torch.Tensor], config: Config | None = None) -> None:
        """Call the C function on ``tensors`` (inputs then outputs)."""
        if self.function is None:
            raise BuildError(f"kernel {self.name} has no compiled library (the build failed or never ran)")
        self.function(*[t.data_ptr() for t in tensors], *self.source.launch_args(config or self.config))


def build_and_bind(kernels: Sequence[CpuKernel]) -> None:
    """Build one shared library holding ``kernels`` (the prelude, then each function) and bind each."""
    from .build import build_library, load_library
    from .scalar_ops import PRELUDE

    source = PRELUDE + "\n" + "\n".join(k.source.source for k in kernels)
    library = load_library(build_library(source, kernels[0].name))
    for kernel in kernels:
        kernel.bind(library)
