"""NaN semantics through the backend match torch: max/min-like ops propagate NaN (a NaN loss
must never be hidden), in pointwise kernels, clamps, reductions (persistent and looped) and
pooling windows; bfloat16 casts round to nearest even like torch."""
from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from .helpers import assert_close, compile_and_run, kernel_ops


def _with_nans(*shape: int, seed: int = 0) -> torch.Tensor:
    """Random values with NaN at a few scattered positions (every row of a 2-D tensor gets a NaN
    except the first, so rows with and without NaN are both checked)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    flat = x.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[: max(1, flat.numel() // 9)]] = float("nan")
    if x.dim() == 2:
        x[0] = torch.randn(x.shape[1], generator=g)  # a clean row
        x[1, -1] = float("nan")  # NaN in the last element of a row
    return x


POINTWISE: dict[str, Callable[..., torch.Tensor]] = {
    "relu": lambda x, y: F.relu(x),
    "maximum": lambda x, y: torch.maximum(x, y),
    "minimum": lambda x, y: torch.minimum(x, y),
    "clamp": lambda x, y: torch.clamp(x, -0.5, 0.7),
    "clamp_min": lambda x, y: torch.clamp(x, min=0.1),
    "clamp_max": lambda x, y: torch.clamp(x, max=0.1),
    "clamp_tensor": lambda x, y: torch.clamp(x, min=y, max=y + 1.0),
    "hardtanh": lambda x, y: F.hardtanh(x),
    "relu6": lambda x, y: F.relu6(x),
}


@pytest.mark.parametrize("name", sorted(POINTWISE))
def test_pointwise_propagates_nan(name: str) -> None:
    x, y = _with_nans(7, 13, seed=1), _with_nans(7, 13, seed=2)
    fn = POINTWISE[name]
    out, report = compile_and_run(fn, x, y)
    want = fn(x, y)
    assert want.isnan().any()  # the case is meaningful
    assert_close(out, want)
    assert torch.equal(out.isnan(), want.isnan())
    assert report.kernels, str(report)


REDUCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "amax": lambda x: torch.amax(x, dim=1),
    "amin": lambda x: torch.amin(x, dim=1),
    "amax_all": lambda x: torch.amax(x),
    "max_dim": lambda x: torch.max(x, dim=1),
    "min_dim": lambda x: torch.min(x, dim=1),
    "argmax": lambda x: torch.argmax(x, dim=1),
    "argmin": lambda x: torch.argmin(x, dim=1),
    "max": lambda x: torch.max(x),
    "softmax": lambda x: torch.softmax(x, dim=1),
}


@pytest.mark.parametrize("cols", [37, 1001])
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions_propagate_nan(name: str, cols: int) -> None:
    x = _with_nans(5, cols, seed=3)
    fn = REDUCTIONS[name]
    out, _ = compile_and_run(fn, x)
    want = fn(x)
    assert_close(out, want)


def test_amax_kernel_row_without_nan_is_unchanged() -> None:
    x = torch.randn(6, 301)
    x[2, 17] = float("nan")
    x[4, 300] = float("nan")
    out, report = compile_and_run(lambda t: torch.amax(t * 2.0, dim=1), x)
    want = torch.amax(x * 2.0, dim=1)
    assert "aten.amax.default" in kernel_ops(report), str(report)
    assert_close(out, want)
    assert out.isnan().tolist() == [False, False, True, False, True, False]


@pytest.mark.parametrize("combine", ["amax", "amin"])
def test_looped_and_persistent_reductions_propagate_nan(combine: str) -> None:
    from tilewright.frontend.api import tunable_kernels

    x = torch.randn(4, 301)
    x[1, 5] = float("nan")  # early in the row: later blocks of a looped kernel must keep it
    x[3, 300] = float("nan")  # in the last, partial block
    fn = lambda t: getattr(torch, combine)(t * 2.0, dim=1)  # noqa: E731
    (kernel,) = tunable_kernels(fn, (x,))
    want = fn(x)
    for rblock in (32, 512):  # looped over row blocks, and persistent
        config = dict(kernel.space.default_config(), RBLOCK=rblock, XBLOCK=2, num_warps=1)
        assert kernel.space.is_feasible(config), kernel.space.check(config)
        tensors = [x] + [torch.zeros(v.type.shape) for v in kernel.spec.outputs]
        kernel.runner(config)(tensors)
        assert_close(tensors[1], want)
        assert tensors[1].isnan().tolist() == [False, True, False, True]


def test_max_pool_propagates_nan() -> None:
    x = torch.randn(2, 3, 9, 11)
    x[0, 1, 4, 5] = float("nan")
    x[1, 2, 0, 0] = float("nan")
    fn = lambda t: F.max_pool2d(t, 3, 2, 1, return_indices=True)  # noqa: E731
    out, report = compile_and_run(fn, x)
    want = fn(x)
    assert_close(out[0], want[0])
    assert torch.equal(out[1], want[1])
    assert "aten.max_pool2d_with_indices.default" in kernel_ops(report), str(report)


def test_nan_loss_is_not_hidden() -> None:
    """A NaN in the logits reaches a loss computed from relu, clamp and a max."""
    x = torch.randn(4, 19)
    x[3, 7] = float("nan")
    fn = lambda t: (F.relu(t).clamp(max=3.0) - t.amax(dim=1, keepdim=True)).sum()  # noqa: E731
    out, _ = compile_and_run(fn, x)
    assert out.isnan()
    assert fn(x).isnan()


def test_bfloat16_cast_rounds_to_nearest_even() -> None:
    # ties (exactly half an ulp of bfloat16) and values just above and below them
    base = torch.tensor([1.0, -8.5, 3.0, 1000.0, -0.1875, 65280.0])
    bits = base.view(torch.int32)
    cases = torch.cat([(bits + d).view(torch.float32) for d in (0x8000, 0x7FFF, 0x8001, 0x18000, -0x8000)])
    x = torch.cat([cases, torch.randn(211) * 100, torch.tensor([float("inf"), float("nan"), 3.4e38])])
    out, report = compile_and_run(lambda t: (t * 1.0).bfloat16(), x)
    want = (x * 1.0).bfloat16()
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float().nan_to_num(0.0), want.float().nan_to_num(0.0))
    assert torch.equal(out.isnan(), want.isnan())
    assert report.kernels, str(report)


def test_bfloat16_store_rounds_to_nearest_even() -> None:
    """A fused bfloat16 kernel computes in float32 and rounds once on the store, like torch's
    float32 -> bfloat16 conversion of the float32 result."""
    a = torch.randn(3, 257).bfloat16()
    b = torch.randn(3, 257).bfloat16()
    out, _ = compile_and_run(lambda p, q: p * 1.37 + q, a, b)
    want = (a.float() * 1.37 + b.float()).bfloat16()
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), want.float())


def test_nan_and_rounding_kernels_compile_for_sm90() -> None:
    """The interpreter accepts more than Triton's compiler: the NaN-propagating max/min,
    bit-level bfloat16 rounding and typed one-element scalars must compile for a GPU too."""
    pytest.importorskip("triton.backends.nvidia")
    from tilewright.targets.triton.kernel import GeneratedKernel
    from tilewright.targets.triton.cross_compile import compile_in_subprocess, job_for
    from tilewright.frontend.api import tunable_kernels

    def fn(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pw = (F.relu(x).clamp(max=2.0) + torch.maximum(x, y) - torch.minimum(x, y)).bfloat16()
        one = x[:1, :1] * torch.arange(1, dtype=torch.float32) + torch.logical_and(x[:1, :1], y[0, 0])
        return pw, torch.amax(x * 2.0, dim=1), torch.amin(x[:, :37], dim=1), one

    kernels = [k for k in tunable_kernels(fn, [torch.randn(5, 3001), torch.randn(5, 3001)])
               if isinstance(k, GeneratedKernel)]
    jobs = []
    for k in kernels:
        configs = [k.config]
        if k.spec.kind == "reduction":  # both the looped and the persistent variant
            rnumel = int(k.spec.meta["rnumel"])
            configs = [c for c in (next((c for c in k.space.enumerate() if int(c["RBLOCK"]) < rnumel), None),
                                   next((c for c in k.space.enumerate() if int(c["RBLOCK"]) >= rnumel), None))
                       if c is not None]
        jobs += [job_for(k, c) for c in configs]
    assert len(jobs) >= 4
    assert any("propagate_nan" in j.source for j in jobs) and any("bitcast=True" in j.source for j in jobs)
    results = compile_in_subprocess(jobs)
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed[:2]
