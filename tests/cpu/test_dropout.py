"""Dropout on the native CPU target: the keep-mask is computed inside the fused C++ kernels from
(seed, element index), the backward recomputes the same mask, and every call draws a new one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tilewright.report import collect


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_mask_fuses_and_backward_uses_the_same_mask(cpu_target: None, p: float, dtype: torch.dtype) -> None:
    # gelu(x) >= 0.35 and a small residual: a kept element never rounds to out == res in bf16
    x = (torch.rand(37, 203) + 0.5).to(dtype).requires_grad_(True)
    res = (0.1 * torch.randn(37, 203)).to(dtype)
    fn = lambda x, r: F.dropout(F.gelu(x), p, training=True) + r
    compiled = torch.compile(fn, backend="tilewright")
    with collect() as report:
        out = compiled(x, res)
        out.float().sum().backward()
    kept = (out - res) != 0
    rate = kept.float().mean().item()
    assert abs(rate - (1 - p)) < 0.03, rate  # 7511 draws: 3 sigma is about 0.017
    want = (F.gelu(x.detach().float()) / (1 - p)).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close((out - res)[kept].float(), want.float()[kept], rtol=tol, atol=tol)
    x64 = x.detach().double().requires_grad_(True)
    F.gelu(x64).backward(kept.double() / (1 - p))  # the backward must use the forward's mask
    torch.testing.assert_close(x.grad.float(), x64.grad.float(), rtol=tol, atol=tol)
    assert all(g.target.startswith("C++") for g in report.graphs), [g.target for g in report.graphs]
    # only the seed stays an ATen call: one draw from torch's generator, so torch.manual_seed still rules
    assert {f["op"] for f in report.fallbacks} <= {"tilewright.seed.default"}, report.fallbacks
    assert any("tilewright.dropout_mask.default" in k["ops"] for k in report.kernels), str(report)
    again = compiled(x, res)
    assert not torch.equal(again, out), "every call draws a new mask"


def test_dropout_masks_are_independent_and_uniform(cpu_target: None) -> None:
    """The hash's draws: no correlation between neighbouring elements, a uniform kept fraction per column."""
    x = torch.ones(512, 64)
    with collect() as report:
        out = torch.compile(lambda x: F.dropout(x, 0.5, training=True), backend="tilewright")(x)
    assert {f["op"] for f in report.fallbacks} <= {"tilewright.seed.default"}, report.fallbacks
    kept = (out != 0).float()
    assert abs(kept.mean().item() - 0.5) < 0.01
    per_column = kept.mean(0)
    assert (per_column - 0.5).abs().max().item() < 0.1  # 512 draws per column: 4.5 sigma is 0.1
    neighbours = (kept[:, 1:] == kept[:, :-1]).float().mean().item()
    assert abs(neighbours - 0.5) < 0.02, neighbours  # independent draws agree half the time
