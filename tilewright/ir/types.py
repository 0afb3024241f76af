"""Tensor types of the IR: shape, dtype, strides, storage offset and device of every value."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorType:
    """Static facts about one tensor value (concrete sizes; graphs are specialised per shape)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    strides: tuple[int, ...]
    device: torch.device
    offset: int = 0

    @staticmethod
    def of(t: torch.Tensor) -> "TensorType":
        """The type of a real or fake tensor."""
        return TensorType(tuple(int(s) for s in t.shape), t.dtype, tuple(int(s) for s in t.stride()),
                          torch.device(t.device), int(t.storage_offset()))

    @property
    def numel(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def span_bytes(self) -> int:
        """Bytes from the first to one past the last element the strides reach (0 when empty)."""
        if self.numel == 0:
            return 0
        return (1 + sum((s - 1) * st for s, st in zip(self.shape, self.strides))) * self.dtype.itemsize

    @property
    def rank(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def is_contiguous(self) -> bool:
        """Row-major contiguous (size-1 dims ignored)."""
        expected = 1
        for size, stride in reversed(list(zip(self.shape, self.strides))):
            if size != 1 and stride != expected:
                return False
            expected *= size
        return True

    def __str__(self) -> str:
        dt = str(self.dtype).replace("torch.", "")
        shape = "x".join(str(s) for s in self.shape) or "scalar"
        text = f"{dt}[{shape}]"
        if not self.is_contiguous():
            text += f"{{strides={list(self.strides)}}}"
        return text


def is_float(dtype: torch.dtype) -> bool:
    """True for floating-point dtypes."""
    return dtype.is_floating_point


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic runs in inside kernels: half types compute in float32."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


TRITON_DTYPES: dict[torch.dtype, str] = {
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
    torch.float32: "tl.float32",
    torch.float64: "tl.float64",
    torch.int8: "tl.int8",
    torch.int16: "tl.int16",
    torch.int32: "tl.int32",
    torch.int64: "tl.int64",
    torch.uint8: "tl.uint8",
    torch.bool: "tl.int1",
}


def triton_dtype(dtype: torch.dtype) -> str:
    """The ``tl.*`` name of a torch dtype; raises for dtypes kernels do not support."""
    try:
        return TRITON_DTYPES[dtype]
    except KeyError:
        raise NotImplementedError(f"dtype {dtype} has no Triton lowering") from None
