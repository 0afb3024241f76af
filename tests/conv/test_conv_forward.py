"""Every convolution configuration against torch.nn.functional.conv{1,2,3}d (odd sizes)."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from tilewright.targets.triton.conv.forward import (ConvKernel, ConvProblem, Epilogue, conv_forward,
                                     conv_schedule_space, epilogue_tensor_args, supports)
from tilewright.targets.triton.conv.templates import pixel_offset, store_lines, tensor_params

DEV = "cuda" if torch.cuda.is_available() else "cpu"
FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"atol": 2e-2, "rtol": 2e-2} if dtype != torch.float32 else {"atol": 1e-4, "rtol": 1e-4}


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    perm = [0] + list(range(2, t.dim())) + [1]
    inv = [0, t.dim() - 1] + list(range(1, t.dim() - 1))
    return t.permute(perm).contiguous().permute(inv)


def _check(n, c, size, k, kernel, stride=1, padding=0, dilation=1, groups=1, bias=True,
           dtype=torch.float32, channels_last=False, config=None):
    dims = len(size)
    x = torch.randn(n, c, *size, dtype=dtype, device=DEV)
    w = torch.randn(k, c // groups, *kernel, dtype=dtype, device=DEV) / (c // groups) ** 0.5
    b = torch.randn(k, dtype=dtype, device=DEV) if bias else None
    if channels_last:
        x = _channels_last(x)
    ref = FN[dims](x.float(), w.float(), None if b is None else b.float(), stride, padding,
                   dilation, groups)
    y = conv_forward(x, w, b, stride, padding, dilation, groups, config=config)
    assert y.shape == ref.shape and y.dtype == dtype
    if channels_last:
        assert y.stride(1) == 1
    torch.testing.assert_close(y.float(), ref, **_tol(dtype))
    return y


CASES_2D = [
    # n, c, (h, w), k, kernel, stride, padding, dilation, groups, bias
    (2, 5, (11, 13), 7, (3, 3), 1, 1, 1, 1, True),
    (1, 3, (17, 15), 9, (7, 7), 2, 3, 1, 1, False),  # stem-like, few channels
    (2, 19, (9, 7), 21, (1, 1), 1, 0, 1, 1, True),  # pointwise
    (1, 18, (10, 9), 17, (3, 2), (2, 1), (1, 0), (2, 3), 1, True),  # asymmetric everything
    (2, 24, (7, 9), 33, (3, 3), 2, 1, 1, 3, False),  # grouped, wide groups -> igemm
    (1, 12, (9, 11), 12, (3, 3), 1, 1, 1, 12, True),  # depthwise
    (2, 6, (8, 7), 12, (5, 5), 2, 2, 1, 6, False),  # depthwise, multiplier 2
    (1, 8, (9, 9), 12, (3, 3), 1, 2, 2, 4, True),  # small-channel groups -> direct
]


@pytest.mark.parametrize("case", CASES_2D, ids=lambda c: f"c{c[1]}k{c[3]}g{c[8]}")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_conv2d(case, channels_last):
    n, c, size, k, kernel, s, p, d, g, bias = case
    _check(n, c, size, k, kernel, s, p, d, g, bias, channels_last=channels_last)


@pytest.mark.parametrize("case", [
    (2, 5, (23,), 7, (3,), 1, 1, 1, 1, True),
    (1, 16, (31,), 17, (5,), 3, 2, 2, 1, False),
    (2, 10, (19,), 10, (7,), 1, 3, 1, 10, True),  # depthwise 1-D (ConvNeXt/Mamba-like)
], ids=["basic", "strided_dilated", "depthwise"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["ncl", "nlc"])
def test_conv1d(case, channels_last):
    n, c, size, k, kernel, s, p, d, g, bias = case
    _check(n, c, size, k, kernel, s, p, d, g, bias, channels_last=channels_last)


@pytest.mark.parametrize("case", [
    (1, 3, (5, 7, 6), 5, (3, 3, 3), 1, 1, 1, 1, True),
    (2, 17, (5, 6, 5), 9, (1, 3, 3), (1, 2, 2), (0, 1, 1), 1, 1, False),
    (1, 6, (5, 5, 7), 6, (3, 3, 3), 2, 1, (1, 2, 1), 6, True),  # depthwise 3-D
], ids=["basic", "strided", "depthwise"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["ncdhw", "ndhwc"])
def test_conv3d(case, channels_last):
    n, c, size, k, kernel, s, p, d, g, bias = case
    _check(n, c, size, k, kernel, s, p, d, g, bias, channels_last=channels_last)


@pytest.mark.parametrize("case", [CASES_2D[0], CASES_2D[3], CASES_2D[5], CASES_2D[1]],
                         ids=["basic", "dilated", "depthwise", "stem"])
def test_conv2d_fp16(case):
    n, c, size, k, kernel, s, p, d, g, bias = case
    _check(n, c, size, k, kernel, s, p, d, g, bias, dtype=torch.float16)


def test_padding_strings():
    x = torch.randn(1, 4, 9, 8, device=DEV)
    w = torch.randn(5, 4, 3, 3, device=DEV)
    torch.testing.assert_close(conv_forward(x, w, padding="same"), F.conv2d(x, w, padding="same"),
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(conv_forward(x, w, padding="valid"), F.conv2d(x, w), atol=1e-4,
                               rtol=1e-4)


@pytest.mark.parametrize("k_order", ["tap", "flat"])
def test_igemm_k_orders_and_random_configs(k_order):
    x = torch.randn(2, 20, 9, 11, device=DEV)
    w = torch.randn(18, 20, 3, 3, device=DEV)
    prob = ConvProblem.from_tensors(x, w, None, 2, 1, 1, 1)
    space = conv_schedule_space(prob)
    feasible = [c for c in space.enumerate() if c["K_ORDER"] == k_order]
    assert feasible
    rng = random.Random(k_order)
    for cfg in rng.sample(feasible, 3):
        torch.testing.assert_close(conv_forward(x, w, None, 2, 1, 1, 1, config=cfg),
                                   F.conv2d(x, w, None, 2, 1), atol=1e-4, rtol=1e-4)


def test_direct_random_configs():
    x = torch.randn(2, 10, 9, 7, device=DEV)
    w = torch.randn(10, 1, 3, 3, device=DEV)
    prob = ConvProblem.from_tensors(x, w, None, 1, 1, 1, 10)
    space = conv_schedule_space(prob)
    assert prob.algorithm == "direct" and "BLOCK_K" not in space.params
    for cfg in random.Random(1).sample(list(space.enumerate()), 3):
        torch.testing.assert_close(conv_forward(x, w, None, 1, 1, 1, 10, config=cfg),
                                   F.conv2d(x, w, None, 1, 1, 1, 10), atol=1e-5, rtol=1e-5)


def test_schedule_space_constraints():
    prob = ConvProblem.from_shapes([32, 256, 56, 56], [256, 256, 3, 3], True, 1, 1, dtype="float16")
    space = conv_schedule_space(prob)
    assert space.kind == "conv" and space.is_feasible(space.default_config())
    big = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8, "K_ORDER": "tap",
           "X_LAYOUT": "as_is", "W_LAYOUT": "as_is", "num_warps": 2, "num_stages": 4}
    assert "registers" in (space.check(big) or "")
    small = ConvProblem.from_shapes([1, 16, 5, 5], [8, 16, 3, 3], False, smem_bytes=16384)
    reason = conv_schedule_space(small).check({**big, "BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4})
    assert reason is not None
    tiny_smem = ConvProblem.from_shapes([8, 256, 32, 32], [256, 256, 3, 3], False, smem_bytes=16384)
    cfg = {**big, "num_warps": 8, "num_stages": 3}
    assert "shared memory" in (conv_schedule_space(tiny_smem).check(cfg) or "")
    assert ConvProblem.from_shapes([1, 32, 8, 8], [32, 1, 3, 3], False, groups=32).algorithm == "direct"


def test_supports_reasons():
    assert supports([1, 4, 8, 8], [4, 4, 3, 3]) is None
    assert "transposed" in supports([1, 4, 8, 8], [4, 4, 3, 3], transposed=True)
    assert "dtype" in supports([1, 4, 8, 8], [4, 4, 3, 3], dtype=torch.float64)
    assert "groups" in supports([1, 4, 8, 8], [6, 4, 3, 3], groups=3)
    assert supports([1, 4, 8, 8, 8, 8], [4, 4, 3, 3, 3, 3]) is not None
    assert "empty" in supports([1, 4, 2, 2], [4, 4, 5, 5])


def _relu_residual_epilogue(has_bias: bool) -> Epilogue:
    """y = relu(conv + bias) * scale + residual, the lead's kind of fused epilogue."""
    lines = []
    if has_bias:
        lines += ["bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)",
                  "acc = acc + bias[None, :]"]
    lines += ["acc = tl.maximum(acc, 0.0) * scale",
              f"res = tl.load(r_ptr + {pixel_offset('r')}[:, None] + offs_n[None, :] * stride_rc,"
              " mask=mask_m[:, None] & mask_n[None, :], other=0.0)",
              "acc = acc + res.to(tl.float32)"]
    lines += store_lines("out_ptr", "o", "acc")
    params = ["out_ptr"] + tensor_params("o")[1:] + (["bias_ptr"] if has_bias else [])
    params += tensor_params("r") + ["scale"]
    return Epilogue(params=params, lines=lines, fused=["bias", "relu", "mul", "add"])


@pytest.mark.parametrize("groups,channels_last", [(1, False), (1, True), (6, False)],
                         ids=["igemm", "igemm_nhwc", "direct"])
def test_epilogue_bias_relu_residual(groups, channels_last):
    x = torch.randn(2, 6, 9, 11, device=DEV)
    w = torch.randn(12, 6 // groups, 3, 3, device=DEV)
    b = torch.randn(12, device=DEV)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    res = torch.randn(2, 12, 5, 6, device=DEV).permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    epi = _relu_residual_epilogue(True)
    y = conv_forward(x, w, b, 2, 1, 1, groups, epilogue=epi,
                     epilogue_args={**epilogue_tensor_args("r", res), "scale": 0.5})
    ref = F.relu(F.conv2d(x, w, b, 2, 1, 1, groups)) * 0.5 + res
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)


def test_epilogue_missing_argument():
    x = torch.randn(1, 4, 5, 5, device=DEV)
    w = torch.randn(4, 4, 3, 3, device=DEV)
    with pytest.raises(ValueError, match="r_ptr"):
        conv_forward(x, w, None, epilogue=_relu_residual_epilogue(False))


@pytest.mark.parametrize("groups", [1, 5])
def test_conv_kernel_tunable(groups):
    prob = ConvProblem.from_shapes([2, 10, 9, 7], [15, 10 // groups, 3, 3], True, 2, 1, 1, groups,
                                   channels_last=True)
    kern = ConvKernel(prob)
    assert kern.problem.kind == "conv" and kern.problem.dims["GEMM_K"] == 10 // groups * 9
    inputs = kern.make_inputs(DEV)
    x, w, b, out = inputs
    kern.runner(kern.space.default_config())(inputs)
    torch.testing.assert_close(out, F.conv2d(x, w, b, 2, 1, 1, groups), atol=1e-4, rtol=1e-4)
    line = kern.describe()
    assert "conv2d" in line and "fused: bias" in line and "BLOCK_M=" in line
    assert kern.problem.key() == ConvKernel(prob).problem.key()


@pytest.mark.parametrize("act", ["relu", "gelu", "silu"])
@pytest.mark.parametrize("groups", [1, 7], ids=["igemm", "direct"])
def test_epilogue_builder_chains(act, groups):
    from tilewright.targets.triton.conv.epilogues import EpilogueBuilder

    x = torch.randn(2, 7, 9, 8, device=DEV).to(memory_format=torch.channels_last)
    w = torch.randn(14, 7 // groups, 3, 3, device=DEV)
    b = torch.randn(14, device=DEV)
    res = torch.randn(2, 14, 9, 8, device=DEV)
    gamma = torch.rand(14, device=DEV)
    epi, args = (EpilogueBuilder().bias().activation(act).scale_channels("gamma", gamma)
                 .add("res", res).scale("alpha", 0.25).build())
    y = conv_forward(x, w, b, 1, 1, 1, groups, epilogue=epi, epilogue_args=args)
    act_fn = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}[act]
    ref = (act_fn(F.conv2d(x, w, b, 1, 1, 1, groups)) * gamma.view(1, -1, 1, 1) + res) * 0.25
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-4)
    assert epi.fused == ["bias", act, "mul_channel", "add", "mul"]


@pytest.mark.parametrize("x_layout", ["as_is", "channels_last"])
@pytest.mark.parametrize("w_layout", ["as_is", "k_inner"])
def test_layout_schedule_choices(x_layout, w_layout):
    x = torch.randn(2, 17, 9, 8, device=DEV)
    w = torch.randn(19, 17, 3, 3, device=DEV)
    space = conv_schedule_space(ConvProblem.from_tensors(x, w, None, 1, 1, 1, 1))
    cfg = {**space.default_config(), "X_LAYOUT": x_layout, "W_LAYOUT": w_layout}
    assert space.check(cfg) is None
    y = conv_forward(x, w, None, 1, 1, 1, 1, config=cfg)
    assert y.is_contiguous()  # the output keeps the caller's layout
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1), atol=1e-4, rtol=1e-4)
    xc = x.to(memory_format=torch.channels_last)
    cl_space = conv_schedule_space(ConvProblem.from_tensors(xc, w, None, 1, 1, 1, 1))
    assert ("already channels-last" in (cl_space.check(cfg) or "")) == (x_layout == "channels_last")


def test_epilogue_2d_aliases_address_output():
    """Registry-style epilogues index the output as (n_i, rn, oh_i, ow_i) with 2-D masks."""
    lines = ["y_tile = out_ptr + n_i.to(tl.int64) * stride_on + rn * stride_oc + od_i * stride_od"
             " + oh_i * stride_oh + ow_i * stride_ow",
             "tl.store(y_tile, tl.maximum(acc, 0.0).to(out_ptr.dtype.element_ty),"
             " mask=rmask & rnmask)"]
    epi = Epilogue(params=["out_ptr"] + tensor_params("o")[1:], lines=lines, fused=["relu"])
    for groups in (1, 5):
        x = torch.randn(1, 10, 7, 9, device=DEV)
        w = torch.randn(10, 10 // groups, 3, 3, device=DEV)
        torch.testing.assert_close(conv_forward(x, w, None, 1, 1, 1, groups, epilogue=epi),
                                   F.relu(F.conv2d(x, w, None, 1, 1, 1, groups)), atol=1e-4,
                                   rtol=1e-4)
        kern = ConvKernel(ConvProblem.from_tensors(x, w, None, 1, 1, 1, groups), epi)
        src, name = kern.source(kern.space.default_config())
        assert f"def {name}(" in src and len(kern.grid(kern.space.default_config())) == 2


def _loops(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if line.strip().startswith("for ")]


def test_tap_order_reduction_is_one_flat_loop():
    """The pipeliner stages one loop: (tap, channel block) pairs, not taps around a short channel loop."""
    from tilewright.targets.triton.conv.templates import default_epilogue, igemm_source

    for order in ("tap", "flat"):
        assert len(_loops(igemm_source(default_epilogue(True), order))) == 1, order


@pytest.mark.parametrize("channels_last,x_layout", [(False, "as_is"), (True, "as_is"), (False, "channels_last")],
                         ids=["ncdhw", "ndhwc", "ncdhw-packed"])
def test_flat_tap_loop_odd_channels_3d(channels_last, x_layout):
    # 37 channels per group: three 16-wide channel blocks, the last partial; 2x3x3 taps with
    # stride, dilation and padding so many taps fall outside the input
    cfg = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 1, "K_ORDER": "tap",
           "X_LAYOUT": x_layout, "W_LAYOUT": "as_is", "num_warps": 2, "num_stages": 2}
    _check(1, 74, (3, 7, 6), 22, (2, 3, 3), stride=(1, 2, 1), padding=(1, 1, 2), dilation=(1, 1, 2), groups=2,
           channels_last=channels_last, config=cfg)
