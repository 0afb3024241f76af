"""What the compile pool needs to compile a template's kernels before its first call.

A fused-attention template step (``flash_attention`` forward, its backward's dK/dV and dQ
kernels, ``block_sparse_attention`` with its estimator) launches hand-written kernels, and the
convolution gradient (``convolution_backward``) kernels generated from source; their
specialisation (constexprs, config, dtypes, which integers are 1 or divisible by 16, which
pointers are aligned) is decided by the launcher at run time. :class:`TemplateLaunch` is a
picklable description of one such call (the call object with its bound config, every tensor
argument's shape, strides, storage offset and dtype, the scalars, torch's float32 matmul
policy), so a compile worker runs the launcher's own code on fresh tensors of the same layout:

* :meth:`TemplateLaunch.launch` (a GPU is present) runs the kernels once on the device, so
  Triton compiles and caches exactly what the runtime's first call will look up;
* :meth:`TemplateLaunch.compile_jobs` (no GPU, e.g. ``sm_90``) runs the launcher with every
  attention kernel replaced by a :class:`~..cross_compile.LaunchRecorder` and returns the
  recorded launches, ready for the offline compiler; the device's shared memory per block and
  multiprocessor count are those of the target architecture (its default configs and decode
  splits), not the CPU's stand-ins.

Only a worker process should call these two (they patch this package's module globals while
they run, and restore them).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch

from ....ir.graph import Node, Value

log = logging.getLogger(__name__)

#: multiprocessors of the devices an offline ``sm_<N>`` compile stands for (H100/H200 SXM: 132)
MULTIPROCESSORS = {80: 108, 90: 132, 100: 148}


@dataclass(frozen=True)
class TensorSpec:
    """The layout of one tensor argument (what Triton specialises on, not its values)."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    offset: int
    dtype: str

    def make(self, device: str) -> torch.Tensor:
        """A fresh tensor of this layout on ``device`` (random floats, zero integers/booleans)."""
        dtype = getattr(torch, self.dtype)
        span = self.offset + 1 + sum((n - 1) * s for n, s in zip(self.shape, self.strides) if n > 0)
        flat = (torch.randn(span, device=device).to(dtype) if dtype.is_floating_point
                else torch.zeros(span, dtype=dtype, device=device))
        return flat.as_strided(self.shape, self.strides, self.offset)


def _describe(value: Any) -> Any:
    if isinstance(value, Value):
        t = value.type
        return TensorSpec(tuple(t.shape), tuple(t.strides), int(t.offset), str(t.dtype).replace("torch.", ""))
    if isinstance(value, (list, tuple)):
        return type(value)(_describe(v) for v in value)
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    return value


def _make(value: Any, device: str) -> Any:
    if isinstance(value, TensorSpec):
        return value.make(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_make(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _make(v, device) for k, v in value.items()}
    return value


@dataclass
class TemplateLaunch:
    """One template call as its kernels will be launched (see the module docstring)."""

    name: str
    #: the template's call object (``TemplateCall`` / ``TritonSparseAttentionCall``), config bound
    call: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: torch's float32 matmul policy in the compiling process (it picks ``DOT_PREC``)
    fp32_policy: str = "ieee"

    def key(self) -> str:
        """Equal for launches that compile the same kernels (one compile serves them all)."""
        call = (type(self.call).__name__, getattr(self.call, "attention", None),
                sorted((getattr(self.call, "config", None) or {}).items()),
                getattr(getattr(self.call, "kernel", None), "__name__", ""))
        return repr((call, self.args, sorted(self.kwargs.items()), self.fp32_policy))

    def launch(self, device: str) -> None:
        """Run the template's kernels once on fresh tensors on ``device`` (warms Triton's cache)."""
        with _policy(self.fp32_policy):
            self.call.run_kernel(_make(self.args, device), _make(self.kwargs, device))
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    def compile_jobs(self, arch: int, smem_bytes: int | None = None) -> list[Any]:
        """The kernel launches of this call on an ``sm_<arch>`` device, recorded, not run: one
        :class:`~..cross_compile.CompileJob` each, specialised as that launch would be."""
        with _policy(self.fp32_policy), _recording(arch, smem_bytes) as recorders:
            self.call.run_kernel(_make(self.args, "cpu"), _make(self.kwargs, "cpu"))
        jobs = [job for r in recorders for job in r.jobs]
        for job in jobs:
            job.name = f"{self.name}: {job.fn_name}"
        return jobs


def template_launch(call: Any, node: Node) -> TemplateLaunch:
    """The :class:`TemplateLaunch` of template ``node`` run through ``call``."""
    from ....schedule.precision import fp32_matmul_policy

    name = f"template {node.op} %{node.outputs[0].name}" if node.outputs else f"template {node.op}"
    return TemplateLaunch(name, call, _describe(tuple(node.args)), _describe(dict(node.kwargs)),
                          fp32_matmul_policy())


@contextlib.contextmanager
def _patched(patches: list[tuple[Any, str, Any]]) -> Iterator[None]:
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, value in patches:
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def _policy(policy: str) -> contextlib.AbstractContextManager[None]:
    """The launchers read torch's float32 policy of the process that compiled the graph."""
    from . import launch

    return _patched([(launch, "fp32_matmul_policy", lambda: policy)])


#: the modules whose ``*_kernel`` attributes are launched from Python
_KERNEL_MODULES = ("kernels", "sparse", "sparse_estimate")


@contextlib.contextmanager
def _recording(arch: int, smem_bytes: int | None) -> Iterator[list[Any]]:
    """Every attention kernel replaced by a recorder; the launchers see an ``sm_<arch>`` device."""
    import importlib

    from ..cross_compile import LaunchRecorder
    from . import launch

    recorders: list[Any] = []
    patches: list[tuple[Any, str, Any]] = [
        (launch, "interpret_mode", lambda: False),
        (launch, "multiprocessors", lambda device: MULTIPROCESSORS.get(arch, 8))]
    if smem_bytes is not None:
        patches.append((launch, "device_smem", lambda device: int(smem_bytes)))
    for short in _KERNEL_MODULES:
        module = importlib.import_module(f"{__package__}.{short}")
        for attr, value in vars(module).items():
            if attr.endswith("_kernel") and hasattr(value, "fn") and hasattr(value, "__getitem__"):
                recorder = LaunchRecorder(value, attr, module=module.__name__, fn_name=attr)
                recorders.append(recorder)
                patches.append((module, attr, recorder))
    patches += _conv_recording(recorders, smem_bytes)
    with _patched(patches):
        yield recorders


def _conv_recording(recorders: list[Any], smem_bytes: int | None) -> list[tuple[Any, str, Any]]:
    """Patches under which the convolution-gradient template records its generated kernels: the
    conv modules' loader hands out recorders (over the real JIT functions), the forward's
    launcher cache starts empty, and a CUDA tensor's problem sees the target's shared memory."""
    from ..conv import backward as conv_backward
    from ..conv import forward as conv_forward
    from ..conv import problem as conv_problem
    from ..cross_compile import LaunchRecorder

    load = conv_forward.load_kernel

    def recording_loader(source: str, name: str, interpret: bool | None = None) -> Any:
        recorders.append(LaunchRecorder(load(source, name, False), name, source=source, fn_name=name))
        return recorders[-1]

    default_smem = conv_problem._device_smem

    def target_smem(device: torch.device | None = None) -> int:
        return int(smem_bytes) if device is not None and smem_bytes is not None else default_smem(None)

    return [(conv_forward, "load_kernel", recording_loader), (conv_backward, "load_kernel", recording_loader),
            (conv_forward, "interpret_mode", lambda: False), (conv_forward, "_launchers", {}),
            (conv_problem, "_device_smem", target_smem)]


def precompile_launch(call: Any, node: Node) -> TemplateLaunch | None:
    """:func:`template_launch`, or None (logged) when the node's arguments cannot be described:
    then the runtime's first call compiles the kernels."""
    try:
        return template_launch(call, node)
    except Exception as exc:  # noqa: BLE001 - no precompile, not a failure
        log.info("no precompile for %s: %s", node.op, exc)
        return None


def launch_summary(jobs: list[Any]) -> Mapping[str, int]:
    """Recorded launches per kernel (for logs and tests)."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job.fn_name] = counts.get(job.fn_name, 0) + 1
    return counts
