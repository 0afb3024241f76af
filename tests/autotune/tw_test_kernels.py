"""Small real Triton kernels implementing TunableKernel, plus synthetic replay timings.

The kernels run in Triton's interpreter on CPU (wrapped lazily with interpret=True when no GPU
is present). ``factory`` is a ``module:factory`` target for ``tilewright autotune``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import triton
import triton.language as tl

from tilewright.schedule.problem import KernelProblem
from tilewright.schedule.space import Config, ScheduleSpace, config_hash
from tilewright.targets.triton.jit import wrap_kernel

# -- vector add --------------------------------------------------------------------------------


def _add_body(x_ptr, y_ptr, out_ptr, n, BLOCK_SIZE: tl.constexpr):
    # program-id mapping
    pid = tl.program_id(0)
    offs = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    # masked load, add, masked store
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, x + y, mask=mask)


def _mm_body(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
             stride_cm, stride_cn, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + rm[:, None] * stride_am + (k + rk)[None, :] * stride_ak,
                    mask=(rm[:, None] < M), other=0.0)
        b = tl.load(b_ptr + (k + rk)[:, None] * stride_bk + rn[None, :] * stride_bn,
                    mask=(rn[None, :] < N), other=0.0)
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :] * stride_cn, acc,
             mask=(rm[:, None] < M) & (rn[None, :] < N))


_COMPILED: dict[str, Any] = {}


def _kernel(name: str, body: Callable[..., Any]) -> Any:
    if name not in _COMPILED:
        _COMPILED[name] = wrap_kernel(body, interpret=not torch.cuda.is_available())
    return _COMPILED[name]


def _threads_ok(c: Any) -> str | None:
    if c["BLOCK_SIZE"] < 32 * c["num_warps"]:
        return "fewer elements than threads"
    if c["BLOCK_SIZE"] // (32 * c["num_warps"]) > 16:
        return "register estimate: more than 16 elements per thread"
    return None


@dataclass
class VectorAdd:
    """out = x + y over ``n`` float32 elements; BLOCK_SIZE and num_warps are the schedule."""

    n: int = 3000
    name: str = "vector_add"
    fingerprint: str = "test-vector-add"
    problem: KernelProblem = field(init=False)
    space: ScheduleSpace = field(init=False)

    def __post_init__(self) -> None:
        self.problem = KernelProblem("pointwise", self.fingerprint, {"numel": self.n}, "float32",
                                     ((self.n,), (self.n,), (self.n,)), float(self.n), 12.0 * self.n)
        self.space = make_add_space()

    def make_inputs(self, device: str) -> Sequence[Any]:
        x = torch.randn(self.n, device=device)
        return (x, torch.randn_like(x), torch.empty_like(x))

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        self.space.validate(config)
        kern = _kernel("add", _add_body)
        block = int(config["BLOCK_SIZE"])

        def launch(args: Sequence[Any]) -> None:
            x, y, out = args
            kern[(triton.cdiv(self.n, block),)](x, y, out, self.n, BLOCK_SIZE=block,
                                                num_warps=int(config["num_warps"]))
        return launch


def make_add_space() -> ScheduleSpace:
    return ScheduleSpace("pointwise", {"BLOCK_SIZE": [32, 64, 128, 256, 512, 1024],
                                       "num_warps": [1, 2, 4, 8]},
                         [_threads_ok], default={"BLOCK_SIZE": 256, "num_warps": 4})


@dataclass
class SlowVectorAdd(VectorAdd):
    """VectorAdd whose "compile" takes ``delay`` seconds (to kill a process mid-trial)."""

    delay: float = 0.5
    name: str = "slow_vector_add"

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        import time

        time.sleep(self.delay)
        return super().runner(config)


def slow_factory() -> list[Any]:
    """``module:factory`` target with one slow-compiling kernel."""
    return [SlowVectorAdd(n=500)]


def slower_factory() -> list[Any]:
    """The same kernel (same problem key), each measurement taking 1.5 s: a wide window in
    which a test polling the study sees a trial in flight, however loaded the machine."""
    return [SlowVectorAdd(n=500, delay=1.5)]


# -- tiny matmul ---------------------------------------------------------------------------------

SMEM_LIMIT = 32 * 1024


def _smem(c: Any) -> str | None:
    need = (c["BLOCK_M"] * c["BLOCK_K"] + c["BLOCK_K"] * c["BLOCK_N"]) * 4 * c["num_stages"]
    return None if need <= SMEM_LIMIT else f"shared memory {need} B > {SMEM_LIMIT} B"


def _div(k: int, c: Any) -> str | None:
    return None if k % c["BLOCK_K"] == 0 else f"K={k} not divisible by BLOCK_K"


def _tc(c: Any) -> str | None:
    # tensor-core shape rule: each warp needs a 16x16 tile of the output
    return None if c["BLOCK_M"] * c["BLOCK_N"] >= 256 * c["num_warps"] else "tile too small for warps"


def make_mm_space(k: int = 64) -> ScheduleSpace:
    """Matmul space; constraints are module-level (picklable, for worker processes)."""
    return ScheduleSpace("matmul", {"BLOCK_M": [16, 32, 64, 128], "BLOCK_N": [16, 32, 64, 128],
                                    "BLOCK_K": [16, 32, 64, 128], "num_warps": [1, 2, 4, 8],
                                    "num_stages": [1, 2, 3, 4]},
                         [_smem, functools.partial(_div, k), _tc],
                         default={"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 2,
                                  "num_stages": 2})


@dataclass
class TinyMatmul:
    """C = A @ B in float32 (M=N=K=64 by default)."""

    m: int = 64
    n: int = 64
    k: int = 64
    name: str = "tiny_matmul"
    problem: KernelProblem = field(init=False)
    space: ScheduleSpace = field(init=False)

    def __post_init__(self) -> None:
        self.problem = KernelProblem("matmul", "test-mm", {"M": self.m, "N": self.n, "K": self.k},
                                     "float32", ((self.m, self.k), (self.k, self.n)),
                                     2.0 * self.m * self.n * self.k,
                                     4.0 * (self.m * self.k + self.k * self.n + self.m * self.n))
        self.space = make_mm_space(self.k)

    def make_inputs(self, device: str) -> Sequence[Any]:
        a = torch.randn(self.m, self.k, device=device)
        b = torch.randn(self.k, self.n, device=device)
        return (a, b, torch.empty(self.m, self.n, device=device))

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        self.space.validate(config)
        kern = _kernel("mm", _mm_body)
        bm, bn, bk = int(config["BLOCK_M"]), int(config["BLOCK_N"]), int(config["BLOCK_K"])

        def launch(args: Sequence[Any]) -> None:
            a, b, c = args
            grid = (triton.cdiv(self.m, bm), triton.cdiv(self.n, bn))
            kern[grid](a, b, c, self.m, self.n, self.k, a.stride(0), a.stride(1), b.stride(0),
                       b.stride(1), c.stride(0), c.stride(1), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                       num_warps=int(config["num_warps"]), num_stages=int(config["num_stages"]))
        return launch


# -- synthetic timings ------------------------------------------------------------------------------

def synthetic_time(config: Config) -> float:
    """A smooth made-up run time with one best config (not a real measurement)."""
    t = 10e-6
    for name, best in (("BLOCK_M", 64), ("BLOCK_N", 64), ("BLOCK_K", 32), ("num_warps", 4),
                       ("num_stages", 3), ("BLOCK_SIZE", 512)):
        if name in config:
            t *= 1.0 + 0.25 * abs(math.log2(int(config[name]) / best))
    return t


def replay_table(space: ScheduleSpace, fail_every: int = 0) -> dict[str, float | str]:
    """{config_hash: synthetic seconds or an error} over the feasible space."""
    table: dict[str, float | str] = {}
    for i, config in enumerate(space.enumerate()):
        if fail_every and i % fail_every == fail_every - 1 and config != space.default_config():
            table[config_hash(config)] = "CompilationError: out of resources (recorded)"
        else:
            table[config_hash(config)] = synthetic_time(config)
    return table


class OracleCostModel:
    """A cost model that knows the synthetic timings up to a monotone distortion."""

    def predict(self, problem: Any, configs: Sequence[Config], device: Any = None) -> list[float]:
        return [math.sqrt(synthetic_time(c)) for c in configs]


def factory() -> list[Any]:
    """``module:factory`` target: returns the kernels to tune directly."""
    return [VectorAdd(n=2000)]


def model_factory() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """``module:factory`` target returning (model, example inputs)."""
    return torch.nn.Linear(8, 8), (torch.randn(2, 8),)


def unpicklable_factory() -> list[Any]:
    """A kernel whose space holds a lambda: worker processes must rebuild it from this factory."""
    kernel = VectorAdd(n=256, fingerprint="test-vector-add-unpicklable")
    kernel.space.constraints.append(lambda c: None)
    return [kernel]
