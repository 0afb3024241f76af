"""Convolution gradients (Triton weight/input kernels, ATen fallback) against autograd."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tilewright.targets.triton.conv import ops as conv_ops
from tilewright.targets.triton.conv.forward import ConvProblem
from tilewright.targets.triton.conv.backward import (conv_backward, conv_input_grad,
                                              conv_input_grad_direct, conv_weight_grad,
                                              dgrad_schedule_space, wgrad_schedule_space)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

CASES = [
    # x shape, w shape, stride, padding, dilation, groups
    ((2, 6, 9, 11), (8, 3, 3, 3), 1, 1, 1, 2),
    ((2, 5, 9, 11), (7, 5, 3, 2), 2, 1, (2, 1), 1),
    ((1, 6, 7, 9), (12, 1, 3, 3), 1, 1, 1, 6),  # depthwise, multiplier 2
    ((2, 5, 13), (7, 5, 3), 3, 2, 2, 1),  # 1-D
    ((1, 4, 5, 6, 7), (6, 2, 3, 3, 3), (1, 2, 1), 1, 1, 2),  # 3-D grouped
    ((1, 3, 11, 10), (4, 3, 1, 1), 2, 0, 1, 1),  # strided 1x1 (ResNet downsample)
    ((1, 3, 8, 9), (4, 3, 3, 3), 1, 3, 1, 1),  # padding beyond the kernel's reach
]


def _l(v, dims):
    return [v] * dims if isinstance(v, int) else list(v)


def _autograd(xs, ws, s, p, d, g, dtype=torch.float32):
    x = torch.randn(xs, dtype=dtype, device=DEV, requires_grad=True)
    w = torch.randn(ws, dtype=dtype, device=DEV, requires_grad=True)
    b = torch.randn(ws[0], dtype=dtype, device=DEV, requires_grad=True)
    y = FN[len(xs) - 2](x, w, b, s, p, d, g)
    dy = torch.randn_like(y)
    y.backward(dy)
    return x, w, b, dy


@pytest.mark.parametrize("case", CASES, ids=["grouped", "strided_dilated", "depthwise", "conv1d",
                                             "conv3d", "downsample", "wide_padding"])
def test_conv_backward_matches_autograd(case):
    xs, ws, s, p, d, g = case
    dims = len(xs) - 2
    x, w, b, dy = _autograd(xs, ws, s, p, d, g)
    gi, gw, gb = conv_backward(dy, x.detach(), w.detach(), [ws[0]], _l(s, dims), _l(p, dims),
                               _l(d, dims), False, [0] * dims, g, [True, True, True])
    torch.testing.assert_close(gi, x.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw, w.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gb, b.grad, atol=1e-4, rtol=1e-4)
    for policy in ("zero_insert", "aten"):
        other = conv_input_grad(dy, xs, w.detach(), _l(s, dims), _l(p, dims), _l(d, dims), g,
                                strided=policy)
        torch.testing.assert_close(other, x.grad, atol=1e-4, rtol=1e-4)
    direct = conv_input_grad_direct(dy, xs, w.detach(), _l(s, dims), _l(p, dims), _l(d, dims), g)
    torch.testing.assert_close(direct, x.grad, atol=1e-4, rtol=1e-4)


def test_conv_backward_channels_last_and_mask():
    x, w, b, dy = _autograd((2, 8, 9, 7), (6, 8, 3, 3), 1, 1, 1, 1)
    xc = x.detach().to(memory_format=torch.channels_last)
    gi, gw, gb = conv_backward(dy.to(memory_format=torch.channels_last), xc, w.detach(), None,
                               [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False])
    assert gi is None and gb is None
    torch.testing.assert_close(gw, w.grad, atol=1e-4, rtol=1e-4)


def test_weight_grad_fp16_and_configs():
    x, w, _, dy = _autograd((2, 16, 7, 9), (16, 16, 3, 3), 2, 1, 1, 1)
    prob = ConvProblem.from_shapes((2, 16, 7, 9), (16, 16, 3, 3), False, 2, 1)
    space = wgrad_schedule_space(prob)
    for cfg in list(space.enumerate())[:: max(1, space.size() // 2)][:2]:
        gw = conv_weight_grad(dy, x.detach(), (16, 16, 3, 3), [2, 2], [1, 1], [1, 1], 1, cfg)
        torch.testing.assert_close(gw, w.grad, atol=1e-4, rtol=1e-4)
    gw16 = conv_weight_grad(dy.half(), x.detach().half(), (16, 16, 3, 3), [2, 2], [1, 1],
                            [1, 1], 1)
    torch.testing.assert_close(gw16.float(), w.grad, atol=5e-2, rtol=2e-2)


def test_input_grad_kernel_configs_fp16_channels_last():
    x, w, _, dy = _autograd((2, 16, 9, 8), (16, 16, 3, 3), 2, 1, 1, 1)
    prob = ConvProblem.from_shapes((2, 16, 9, 8), (16, 16, 3, 3), False, 2, 1)
    space = dgrad_schedule_space(prob)
    for cfg in list(space.enumerate())[:: max(1, space.size() // 2)][:2]:
        gi = conv_input_grad_direct(dy, x.shape, w.detach(), 2, 1, 1, 1, cfg)
        torch.testing.assert_close(gi, x.grad, atol=1e-4, rtol=1e-4)
    dy_cl = dy.half().to(memory_format=torch.channels_last)
    gi16 = conv_input_grad_direct(dy_cl, x.shape, w.detach().half(), 2, 1, 1, 1)
    assert gi16.stride(1) == 1
    torch.testing.assert_close(gi16.float(), x.grad, atol=5e-2, rtol=2e-2)


def test_aten_fallbacks():
    # transposed convolution is not lowered: both entry points defer to ATen
    x = torch.randn(1, 3, 5, 5, device=DEV)
    w = torch.randn(3, 4, 3, 3, device=DEV)
    ref = torch.ops.aten.convolution(x, w, None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1)
    out = conv_ops.convolution(x, w, None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1)
    torch.testing.assert_close(out, ref)
    dy = torch.randn_like(ref)
    got = conv_ops.convolution_backward(dy, x, w, None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1,
                                        [True, True, False])
    want = torch.ops.aten.convolution_backward(dy, x, w, None, [1, 1], [0, 0], [1, 1], True,
                                               [0, 0], 1, [True, True, False])
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


def test_kernel_failure_falls_back_once(monkeypatch, caplog):
    conv_ops._failed.clear()
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("simulated compile failure")
    monkeypatch.setattr(conv_ops, "conv_forward", broken)
    x = torch.randn(1, 4, 6, 7, device=DEV)
    w = torch.randn(5, 4, 3, 3, device=DEV)
    ref = F.conv2d(x, w, None, 1, 1)
    with caplog.at_level("WARNING", logger="tilewright.targets.triton.conv.ops"):
        for _ in range(2):
            out = conv_ops.convolution(x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
            torch.testing.assert_close(out, ref)
    assert len(calls) == 1 and sum("conv kernel failed" in r.message for r in caplog.records) == 1
    conv_ops._failed.clear()
