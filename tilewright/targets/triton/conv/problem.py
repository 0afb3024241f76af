"""A convolution problem: shapes, geometry, derived GEMM sizes, and what is supported.

:class:`ConvProblem` is frozen and hashable (schedule spaces are cached per problem). 1-D and
2-D problems are promoted to 3-D with unit leading spatial dims.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import torch

SPACE_VERSION = "1"
_DTYPES = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4}
#: Shared memory assumed when no GPU is visible (H100: 227 KiB per block).
DEFAULT_SMEM_BYTES = 232448


def _triple(v: int | Sequence[int], dims: int, fill: int) -> tuple[int, int, int]:
    vals = [int(v)] * dims if isinstance(v, int) else [int(e) for e in v]
    if len(vals) == 1 and dims > 1:
        vals = vals * dims
    if len(vals) != dims:
        raise ValueError(f"expected {dims} values, got {vals}")
    return tuple([fill] * (3 - dims) + vals)  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvProblem:
    """One forward convolution, promoted to 3-D (leading unit spatial dims for 1-D / 2-D).

    Attributes:
        dims: 1, 2 or 3 spatial dimensions of the original problem.
        n, c_in, c_out, groups: batch, channels and groups.
        in_size, kernel, stride, padding, dilation: (d, h, w) triples.
        dtype: element dtype name of x and w.
        has_bias: whether a bias is added.
        channels_last: input memory format (channel stride 1); the output follows it.
        smem_bytes: shared memory per block on the target GPU (schedule constraint).
    """

    dims: int
    n: int
    c_in: int
    c_out: int
    groups: int
    in_size: tuple[int, int, int]
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int] = (1, 1, 1)
    padding: tuple[int, int, int] = (0, 0, 0)
    dilation: tuple[int, int, int] = (1, 1, 1)
    dtype: str = "float32"
    has_bias: bool = False
    channels_last: bool = False
    smem_bytes: int = DEFAULT_SMEM_BYTES

    @classmethod
    def from_shapes(cls, x_shape: Sequence[int], w_shape: Sequence[int], has_bias: bool,
                    stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                    dilation: int | Sequence[int] = 1, groups: int = 1, dtype: str = "float32",
                    channels_last: bool = False, smem_bytes: int | None = None) -> "ConvProblem":
        """Build from ``x``/``w`` shapes ``[N, C, *spatial]`` / ``[K, C/groups, *kernel]``."""
        dims = len(x_shape) - 2
        if dims not in (1, 2, 3) or len(w_shape) != len(x_shape):
            raise ValueError(f"bad convolution shapes x={list(x_shape)} w={list(w_shape)}")
        return cls(dims=dims, n=int(x_shape[0]), c_in=int(x_shape[1]), c_out=int(w_shape[0]),
                   groups=int(groups), in_size=_triple(list(x_shape[2:]), dims, 1),
                   kernel=_triple(list(w_shape[2:]), dims, 1),
                   stride=_triple(stride, dims, 1), padding=_triple(padding, dims, 0),
                   dilation=_triple(dilation, dims, 1), dtype=dtype, has_bias=has_bias,
                   channels_last=channels_last,
                   smem_bytes=smem_bytes if smem_bytes is not None else _device_smem())

    @classmethod
    def from_tensors(cls, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                     stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                     dilation: int | Sequence[int] = 1, groups: int = 1) -> "ConvProblem":
        """Build from actual tensors (dtype and memory format included)."""
        return cls.from_shapes(tuple(x.shape), tuple(w.shape), bias is not None, stride, padding,
                               dilation, groups, str(x.dtype).removeprefix("torch."),
                               _is_channels_last(x), _device_smem(x.device))

    @staticmethod
    def supports(x_shape: Sequence[int], w_shape: Sequence[int], stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, transposed: bool = False,
                 output_padding: Any = 0, groups: int = 1,
                 dtype: torch.dtype = torch.float32) -> str | None:
        """None when this ``aten.convolution`` is lowered, else the reason (see :func:`supports`)."""
        return supports(x_shape, w_shape, stride, padding, dilation, transposed, output_padding,
                        groups, dtype)

    # -- derived sizes -------------------------------------------------------------------
    @property
    def out_size(self) -> tuple[int, int, int]:
        """Output (d, h, w)."""
        return tuple((i + 2 * p - d * (k - 1) - 1) // s + 1 for i, k, s, p, d in zip(  # type: ignore[return-value]
            self.in_size, self.kernel, self.stride, self.padding, self.dilation))

    @property
    def cg(self) -> int:
        """Input channels per group."""
        return self.c_in // self.groups

    @property
    def kg(self) -> int:
        """Output channels per group."""
        return self.c_out // self.groups

    @property
    def taps(self) -> int:
        """Kernel taps (kd * kh * kw)."""
        return self.kernel[0] * self.kernel[1] * self.kernel[2]

    @property
    def gemm(self) -> tuple[int, int, int]:
        """Implicit-GEMM sizes (M, N, K) of one group."""
        od, oh, ow = self.out_size
        return self.n * od * oh * ow, self.kg, self.cg * self.taps

    @property
    def algorithm(self) -> str:
        """``"direct"`` for depthwise / few-channel grouped convolutions, else ``"igemm"``."""
        _, n_gemm, k_gemm = self.gemm
        if self.groups > 1 and (self.cg < 8 or self.kg < 8):
            return "direct"  # a 16-wide tensor-core tile would be mostly padding
        if k_gemm < 8:
            return "direct"
        return "igemm"

    @property
    def flops(self) -> float:
        """Multiply-adds x 2 (plus the bias)."""
        m, n_gemm, k_gemm = self.gemm
        return 2.0 * m * n_gemm * k_gemm * self.groups + (m * self.c_out if self.has_bias else 0)

    @property
    def bytes(self) -> float:
        """Minimum bytes moved: read x, w, bias; write y."""
        esize = _DTYPES.get(getattr(torch, self.dtype, torch.float32), 4)
        x = self.n * self.c_in * self.in_size[0] * self.in_size[1] * self.in_size[2]
        w = self.c_out * self.cg * self.taps
        y = self.gemm[0] * self.c_out
        return float(esize * (x + w + y + (self.c_out if self.has_bias else 0)))

    def shapes(self) -> tuple[list[int], list[int], list[int]]:
        """Original-rank shapes of x, w and y."""
        keep = slice(3 - self.dims, 3)
        return ([self.n, self.c_in, *self.in_size[keep]], [self.c_out, self.cg, *self.kernel[keep]],
                [self.n, self.c_out, *self.out_size[keep]])

    def describe(self) -> str:
        """One-line shape summary, e.g. ``conv2d x[2,3,17,17] w[8,3,3,3] s=2 p=1 d=1 g=1``."""
        keep = slice(3 - self.dims, 3)
        xs, ws, ys = self.shapes()
        fmt = lambda t: ",".join(str(v) for v in t)  # noqa: E731
        layout = "NHWC" if self.channels_last else "NCHW"
        return (f"conv{self.dims}d {self.dtype} {layout} x[{fmt(xs)}] w[{fmt(ws)}] "
                f"s={fmt(self.stride[keep])} p={fmt(self.padding[keep])} "
                f"d={fmt(self.dilation[keep])} g={self.groups} -> y[{fmt(ys)}] ({self.algorithm})")


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() >= 3 and x.stride(1) == 1 and x.shape[1] > 1 and not x.is_contiguous()


def _device_smem(device: torch.device | None = None) -> int:
    if device is not None and device.type == "cuda":
        return _cuda_smem(device.index if device.index is not None else torch.cuda.current_device())
    return DEFAULT_SMEM_BYTES


@functools.lru_cache(maxsize=None)
def _cuda_smem(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    return int(getattr(props, "shared_memory_per_block_optin", DEFAULT_SMEM_BYTES))


def supports(x_shape: Sequence[int], w_shape: Sequence[int], stride: Any = 1, padding: Any = 0,
             dilation: Any = 1, transposed: bool = False, output_padding: Any = 0,
             groups: int = 1, dtype: torch.dtype = torch.float32) -> str | None:
    """None when :func:`conv_forward` lowers this ``aten.convolution``, else the reason."""
    dims = len(x_shape) - 2
    if dims not in (1, 2, 3):
        return f"{dims}-D convolution (1-D, 2-D and 3-D are lowered)"
    if len(w_shape) != len(x_shape):
        return "weight rank differs from input rank"
    if transposed:
        return "transposed convolution (runs as an extern ATen call)"
    if any(int(v) != 0 for v in ([output_padding] if isinstance(output_padding, int) else output_padding)):
        return "output_padding"
    if isinstance(padding, str):
        return f"padding={padding!r} (resolve to integers first)"
    if dtype not in _DTYPES:
        return f"dtype {dtype} (float16, bfloat16, float32 are lowered)"
    if groups < 1 or x_shape[1] % groups or w_shape[0] % groups or x_shape[1] // groups != w_shape[1]:
        return f"channels {x_shape[1]}/{w_shape[0]} do not split into {groups} groups"
    try:
        prob = ConvProblem.from_shapes(x_shape, w_shape, False, stride, padding, dilation, groups,
                                       smem_bytes=DEFAULT_SMEM_BYTES)
    except ValueError as exc:
        return str(exc)
    if min(prob.out_size) < 1 or min(prob.stride) < 1 or min(prob.dilation) < 1 or min(prob.padding) < 0:
        return f"empty output or invalid geometry {prob.describe()}"
    if prob.n == 0 or prob.c_out == 0 or prob.c_in == 0:
        return "empty tensor"
    return None
