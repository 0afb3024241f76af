"""The interface between kernels and the tuner/cost model.

Every generated kernel exposes a :class:`TunableKernel`: what problem it solves (kind,
dimensions, dtypes, FLOPs and bytes), its schedule space, and a way to run it with a config
on freshly made inputs. The autotuner and the cost model see kernels only through this.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence

from .space import Config, ScheduleSpace


@dataclass(frozen=True)
class KernelProblem:
    """A plain description of one kernel instance, enough to key a tuning record.

    Attributes:
        kind: "pointwise", "reduction", "matmul", "attention", "conv", ...
        fingerprint: hash of the kernel's generated structure (ops fused, layout), without config.
        dims: named problem sizes, e.g. {"M": 128, "N": 768, "K": 768, "B": 1} or
            {"numel": 4096} or {"rows": 128, "rnumel": 768}.
        dtype: main compute dtype name ("float16", "bfloat16", "float32").
        signature: shapes/dtypes/strides of every argument, as plain lists/strings.
        flops: floating-point operations of one launch.
        bytes: minimum bytes read and written by one launch.
        meta: extra kind-specific facts (number of fused ops, epilogue ops, causal, ...).
    """

    kind: str
    fingerprint: str
    dims: dict[str, int]
    dtype: str
    signature: tuple[Any, ...] = ()
    flops: float = 0.0
    bytes: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        """Stable hash of kernel fingerprint + shapes/dtypes/strides (no device, no config)."""
        payload = {"kind": self.kind, "fp": self.fingerprint, "dims": self.dims,
                   "dtype": self.dtype, "sig": self.signature}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-serialisable)."""
        d = asdict(self)
        d["signature"] = list(self.signature)
        return d


class TunableKernel(Protocol):
    """What the tuner needs from a kernel: its problem, space, inputs and a runner."""

    name: str
    problem: KernelProblem
    space: ScheduleSpace

    def make_inputs(self, device: str) -> Sequence[Any]:
        """Fresh random inputs (and output buffers) for one launch on ``device``."""
        ...

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        """Compile the kernel for ``config`` (may raise) and return a launcher over inputs."""
        ...
