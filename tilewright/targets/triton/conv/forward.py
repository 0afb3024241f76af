"""Convolution lowering: problem description, schedule space, launcher and tunable kernel.

``aten.convolution`` (1-D, 2-D, 3-D; stride, padding, dilation, groups, optional bias; any
input layout, NCHW or channels-last) runs as one of two generated Triton kernels
(see :mod:`tilewright.targets.triton.conv.templates` for the kernel-argument convention and what an
epilogue may use):

- ``igemm``: implicit GEMM (``M`` = output pixels, ``N`` = output channels per group,
  ``K`` = input channels per group x taps), gathered straight from the input;
- ``direct``: per-element multiply-adds for depthwise and few-channel grouped convolutions,
  where a GEMM tile would be mostly padding.

Integration::

    if supports(x.shape, w.shape, stride, padding, dilation, False, 0, groups, x.dtype) is None:
        y = conv_forward(x, w, bias, stride, padding, dilation, groups,
                         config=None, epilogue=my_epilogue, epilogue_args={...})

The problem description lives in :mod:`.conv_problem`, the schedule spaces in
:mod:`.conv_space`; both are re-exported here.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ....schedule.problem import KernelProblem
from ....schedule.space import Config, ConfigValue, ScheduleSpace
from .problem import (DEFAULT_SMEM_BYTES, SPACE_VERSION, ConvProblem,
                           _triple, supports)
from .space import conv_schedule_space
from .templates import (KERNEL_DIRECT, KERNEL_IGEMM, Epilogue, default_epilogue,
                             direct_source, igemm_source)
from ..jit import cdiv, interpret_mode
from ..loader import load_kernel

log = logging.getLogger(__name__)

__all__ = ["ConvProblem", "ConvKernel", "Epilogue", "default_epilogue", "conv_schedule_space",
           "conv_forward", "prepare_conv", "compiled_launcher", "pack_input", "pack_weight", "supports",
           "kernel_source", "as_5d", "epilogue_tensor_args", "SPACE_VERSION",
           "DEFAULT_SMEM_BYTES"]


# -- source and launch -----------------------------------------------------------------------
def kernel_source(problem: ConvProblem, config: Mapping[str, ConfigValue],
                  epilogue: Epilogue | None = None) -> tuple[str, str]:
    """(source, function name) of ``problem``'s kernel for ``config`` and ``epilogue``."""
    epi = epilogue if epilogue is not None else default_epilogue(problem.has_bias)
    if problem.algorithm == "direct":
        return direct_source(epi), KERNEL_DIRECT
    tf32 = problem.dtype == "float32" and torch.backends.cudnn.allow_tf32
    return igemm_source(epi, str(config["K_ORDER"]), allow_tf32=tf32), KERNEL_IGEMM


def as_5d(t: torch.Tensor) -> torch.Tensor:
    """View a ``[N, C, *spatial]`` tensor (1-3 spatial dims) as ``[N, C, D, H, W]``."""
    while t.dim() < 5:
        t = t.unsqueeze(2)
    return t


def _resolve_padding(padding: Any, dims: int, w: torch.Tensor, dilation: Any) -> Any:
    if not isinstance(padding, str):
        return padding
    if padding == "valid":
        return 0
    if padding == "same":
        dil = _triple(dilation, dims, 1)[3 - dims:]
        total = [d * (k - 1) for d, k in zip(dil, w.shape[2:])]
        if any(t % 2 for t in total):
            raise NotImplementedError("padding='same' with an even receptive field is asymmetric")
        return [t // 2 for t in total]
    raise ValueError(f"unknown padding {padding!r}")


def empty_output(problem: ConvProblem, like: torch.Tensor) -> torch.Tensor:
    """Allocate the output in the input's memory format (like ATen)."""
    ys = problem.shapes()[2]
    if problem.channels_last:
        perm = [0] + list(range(2, len(ys))) + [1]
        out = torch.empty([ys[i] for i in perm], dtype=like.dtype, device=like.device)
        return out.permute([0, len(ys) - 1] + list(range(1, len(ys) - 1)))
    return torch.empty(ys, dtype=like.dtype, device=like.device)


#: Config keys that are not kernel constexprs.
SOURCE_KEYS = ("K_ORDER",)
LAYOUT_KEYS = ("X_LAYOUT", "W_LAYOUT")
LAUNCH_KEYS = ("num_warps", "num_stages")


def pack_input(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` as is, or a channels-last copy (``layout="channels_last"``), any rank."""
    if layout == "as_is" or x.stride(1) == 1:
        return x
    perm = [0] + list(range(2, x.dim())) + [1]
    return x.permute(perm).contiguous().permute([0, x.dim() - 1] + list(range(1, x.dim() - 1)))


def pack_weight(w: torch.Tensor, layout: str) -> torch.Tensor:
    """``w`` as is, or a copy with the output channel innermost (``layout="k_inner"``).

    The group launcher repacks only when the weight changed (:class:`~.group.PackedWeights`).
    """
    if layout == "as_is" or w.stride(0) == 1:
        return w
    perm = list(range(1, w.dim())) + [0]
    return w.permute(perm).contiguous().permute([w.dim() - 1] + list(range(0, w.dim() - 1)))


def _packed(config: Mapping[str, ConfigValue], x: torch.Tensor,
            w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (pack_input(x, str(config.get("X_LAYOUT", "as_is"))),
            pack_weight(w, str(config.get("W_LAYOUT", "as_is"))))


def launch_args(problem: ConvProblem, *tensors: torch.Tensor) -> list[Any]:
    """Pointers, sizes and strides (groups 1-3 of the argument convention) of the 5-D
    ``tensors``: ``x5, w5`` for the forward kernels; ``dy5`` and two more for the gradient kernels."""
    od, oh, ow = problem.out_size
    return [*tensors, problem.n, problem.c_in, *problem.in_size, problem.c_out, od, oh, ow,
            *problem.kernel, problem.cg, problem.kg, *problem.stride, *problem.padding,
            *problem.dilation, *(s for t in tensors for s in t.stride())]


def grid(problem: ConvProblem, config: Mapping[str, ConfigValue]) -> tuple[int, int]:
    """Launch grid for ``config``."""
    m = problem.gemm[0]
    if problem.algorithm == "direct":
        return cdiv(m, int(config["BLOCK_M"])), cdiv(problem.c_out, int(config["BLOCK_N"]))
    return (cdiv(m, int(config["BLOCK_M"])) * cdiv(problem.kg, int(config["BLOCK_N"])),
            problem.groups)


_launchers: dict[tuple[Any, ...], tuple[Any, tuple[int, int], dict[str, Any]]] = {}


def launch(problem: ConvProblem, config: Mapping[str, ConfigValue], epilogue: Epilogue | None,
           base_args: Sequence[Any], epilogue_args: Sequence[Any]) -> None:
    """Compile (cached per problem, config and epilogue) and launch with explicit args."""
    epi = epilogue if epilogue is not None else default_epilogue(problem.has_bias)
    kernel, grid_size, consts = compiled_launcher(problem, config, epi)
    kernel[grid_size](*base_args, *epilogue_args, **consts)


def compiled_launcher(problem: ConvProblem, config: Mapping[str, ConfigValue],
              epi: Epilogue) -> tuple[Any, tuple[int, int], dict[str, Any]]:
    """(kernel, grid, constexpr + launch kwargs), cached per problem, config and epilogue."""
    key = (problem, tuple(sorted(config.items())), epi.fingerprint(), interpret_mode(),
           torch.backends.cudnn.allow_tf32)
    entry = _launchers.get(key)
    if entry is None:
        source, name = kernel_source(problem, config, epi)
        skip = SOURCE_KEYS + LAYOUT_KEYS + LAUNCH_KEYS
        consts = {k: v for k, v in config.items() if k not in skip}
        consts.update(num_warps=int(config["num_warps"]), num_stages=int(config["num_stages"]))
        entry = (load_kernel(source, name), grid(problem, config), consts)
        _launchers[key] = entry
    return entry


def conv_forward(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: int | Sequence[int] = 1, padding: Any = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1,
                 config: Mapping[str, ConfigValue] | None = None,
                 epilogue: Epilogue | None = None,
                 epilogue_args: Mapping[str, Any] | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``F.conv{1,2,3}d`` semantics as a generated Triton kernel.

    Args:
        x, w, bias, stride, padding, dilation, groups: as ``torch.nn.functional.conv*d``
            (``padding`` may be "valid" or a symmetric "same").
        config: a schedule config (default: the space's heuristic default).
        epilogue: a custom epilogue; parameters it names that are not in ``epilogue_args``
            are filled in: ``out_ptr``/``stride_o*`` from the output, ``bias_ptr`` from ``bias``.
        epilogue_args: values of the epilogue's other parameters (tensors of output rank are
            passed as pointers; use :func:`epilogue_tensor_args` for pointer + 5 strides).
        out: output buffer (default: allocated in the input's memory format).

    Returns:
        The output tensor ``out``.
    """
    return prepare_conv(x, w, bias, stride, padding, dilation, groups, config, epilogue,
                        epilogue_args, out)()


def prepare_conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
                 stride: int | Sequence[int] = 1, padding: Any = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1,
                 config: Mapping[str, ConfigValue] | None = None,
                 epilogue: Epilogue | None = None,
                 epilogue_args: Mapping[str, Any] | None = None,
                 out: torch.Tensor | None = None) -> Callable[[], torch.Tensor]:
    """Check, compile and bind everything once; return a zero-argument launcher.

    Same arguments as :func:`conv_forward`. The launcher reruns the kernel on the *same*
    tensors (their current contents) and returns ``out``: the shape a compiled callable
    that reuses buffers wants, and what benchmarks time (no per-call Python checks).
    """
    dims = x.dim() - 2
    padding = _resolve_padding(padding, dims, w, dilation)
    reason = supports(tuple(x.shape), tuple(w.shape), stride, padding, dilation, False, 0, groups,
                      x.dtype)
    if reason:
        raise NotImplementedError(f"conv_forward: {reason}")
    if w.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"dtype mismatch x={x.dtype} w={w.dtype}")
    if bias is not None:
        bias = bias.contiguous()  # the default epilogue reads bias[offs_n]
    problem = ConvProblem.from_tensors(x, w, bias, stride, padding, dilation, groups)
    space = conv_schedule_space(problem)
    cfg = space.validate(config) if config is not None else space.default_config()
    if out is None:
        out = empty_output(problem, x)
    epi = epilogue if epilogue is not None else default_epilogue(bias is not None)
    known: dict[str, Any] = {"out_ptr": out, "bias_ptr": bias}
    known.update(epilogue_tensor_args("o", out))
    known.update(epilogue_args or {})
    missing = [p for p in epi.params if p not in known or known[p] is None]
    if missing:
        raise ValueError(f"epilogue parameters without values: {missing}")
    kernel, grid_size, consts = compiled_launcher(problem, cfg, epi)
    epi_args = [known[p] for p in epi.params]
    result = out
    if not any(cfg.get(k, "as_is") != "as_is" for k in LAYOUT_KEYS):
        args = [*launch_args(problem, as_5d(x), as_5d(w)), *epi_args]

        def run() -> torch.Tensor:
            kernel[grid_size](*args, **consts)
            return result
        return run

    def run_packed() -> torch.Tensor:  # layout copies are part of every launch
        xp, wp = _packed(cfg, x, w)
        kernel[grid_size](*launch_args(problem, as_5d(xp), as_5d(wp)), *epi_args, **consts)
        return result
    return run_packed


def epilogue_tensor_args(prefix: str, t: torch.Tensor) -> dict[str, Any]:
    """``{prefix_ptr: t, stride_<prefix>n..w: ...}`` for a tensor of output rank."""
    t5 = as_5d(t)
    args: dict[str, Any] = {f"{prefix}_ptr": t}
    args.update({f"stride_{prefix}{d}": s for d, s in zip("ncdhw", t5.stride())})
    return args


# -- tunable kernel --------------------------------------------------------------------------
@dataclass
class ConvKernel:
    """A convolution kernel (plus its epilogue) as the tuner sees it (:class:`TunableKernel`)."""

    conv: ConvProblem
    epilogue: Epilogue | None = None
    name: str = ""
    problem: KernelProblem = field(init=False)
    space: ScheduleSpace = field(init=False)

    def __post_init__(self) -> None:
        epi = self.epilogue if self.epilogue is not None else default_epilogue(self.conv.has_bias)
        self.epilogue = epi
        self.space = conv_schedule_space(self.conv)
        layout = "cl" if self.conv.channels_last else "cf"
        fp = hashlib.sha256(f"{self.conv.algorithm}|{layout}|{self.conv.dims}|{epi.fingerprint()}"
                            .encode()).hexdigest()[:16]
        m, n_gemm, k_gemm = self.conv.gemm
        od, oh, ow = self.conv.out_size
        xs, ws, ys = self.conv.shapes()
        dims = {"N": self.conv.n, "C": self.conv.c_in, "K": self.conv.c_out, "G": self.conv.groups,
                "D": self.conv.in_size[0], "H": self.conv.in_size[1], "W": self.conv.in_size[2],
                "KD": self.conv.kernel[0], "KH": self.conv.kernel[1], "KW": self.conv.kernel[2],
                "OD": od, "OH": oh, "OW": ow, "M": m, "GEMM_N": n_gemm, "GEMM_K": k_gemm}
        self.problem = KernelProblem(
            kind="conv", fingerprint=fp, dims=dims, dtype=self.conv.dtype,
            signature=(("x", xs, layout), ("w", ws), ("y", ys, layout)),
            flops=self.conv.flops, bytes=self.conv.bytes,
            meta={"algorithm": self.conv.algorithm, "stride": list(self.conv.stride),
                  "padding": list(self.conv.padding), "dilation": list(self.conv.dilation),
                  "fused": list(epi.fused), "epilogue_ops": len(epi.fused)})
        if not self.name:
            self.name = f"conv{self.conv.dims}d_{self.conv.algorithm}_{fp[:8]}"

    def make_inputs(self, device: str) -> Sequence[Any]:
        """Random x, w, bias (or None) and the output buffer, in the problem's layout."""
        dtype = getattr(torch, self.conv.dtype)
        xs, ws, _ = self.conv.shapes()
        x = torch.randn(xs, dtype=dtype, device=device)
        if self.conv.channels_last:
            perm = [0] + list(range(2, len(xs))) + [1]
            x = x.permute(perm).contiguous().permute([0, len(xs) - 1] + list(range(1, len(xs) - 1)))
        w = torch.randn(ws, dtype=dtype, device=device) / max(1, ws[1] * self.conv.taps) ** 0.5
        b = torch.randn(self.conv.c_out, dtype=dtype, device=device) if self.conv.has_bias else None
        return [x, w, b, empty_output(self.conv, x)]

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        """Validate ``config``, compile the kernel, and return a launcher over inputs.

        Only the default epilogue's parameters (output, bias) are filled in; a kernel with
        a custom epilogue is tuned by its owner with its own argument list.
        """
        cfg = self.space.validate(config)
        kernel_source(self.conv, cfg, self.epilogue)  # fail early on bad text

        def run(inputs: Sequence[Any]) -> None:
            x, w, b, out = inputs
            args: dict[str, Any] = {"out_ptr": out, "bias_ptr": b, **epilogue_tensor_args("o", out)}
            assert self.epilogue is not None
            xp, wp = _packed(cfg, x, w)
            launch(self.conv, cfg, self.epilogue, launch_args(self.conv, as_5d(xp), as_5d(wp)),
                   [args[p] for p in self.epilogue.params])
        return run

    def source(self, config: Mapping[str, ConfigValue]) -> tuple[str, str]:
        """(kernel source, function name) for ``config`` (the text a kernel cache stores)."""
        return kernel_source(self.conv, config, self.epilogue)

    def grid(self, config: Mapping[str, ConfigValue]) -> tuple[int, int]:
        """Launch grid for ``config``."""
        return grid(self.conv, config)

    def describe(self, config: Mapping[str, ConfigValue] | None = None) -> str:
        """Explain line: shape, what was fused, and the schedule."""
        cfg = dict(config) if config is not None else self.space.default_config()
        assert self.epilogue is not None
        fused = ", ".join(self.epilogue.fused) or "nothing"
        sched = " ".join(f"{k}={v}" for k, v in cfg.items())
        return f"{self.name}: {self.conv.describe()} | fused: {fused} | schedule: {sched}"
