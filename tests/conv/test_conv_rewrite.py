"""fold_batchnorm: exact folds (count and numerics) and near-misses that must not fold."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from tilewright.passes.fx.conv_rewrite import fold_batchnorm

from ._capture import compile_with, count_targets

aten = torch.ops.aten
NORMS = (aten._native_batch_norm_legit_no_training.default, aten.sub.Tensor, aten.mul.Tensor,
         aten.add.Tensor)


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _norm_users_of_convs(gm: torch.fx.GraphModule) -> int:
    """Norm/affine ops applied to a convolution's output beyond the fold's one per-channel scale
    and one per-channel shift (``conv * s[C,1,..] + t[C,1,..]``, the convolution's epilogue)."""
    def per_channel(operand: object, channels: int) -> bool:
        if not isinstance(operand, torch.fx.Node):
            return True  # a number
        val = operand.meta.get("val")
        return val is not None and val.dim() >= 1 and val.shape[0] == channels and val.numel() == channels

    extra = 0
    for conv in (n for n in gm.graph.nodes if n.target is aten.convolution.default):
        channels = conv.meta["val"].shape[1]
        cur, allowed = conv, [aten.mul.Tensor, aten.add.Tensor]
        while len(cur.users) == 1:
            user = next(iter(cur.users))
            if user.target not in NORMS:
                break
            other = [a for a in user.args[:2] if a is not cur]
            if user.target in allowed and other and per_channel(other[0], channels):
                allowed = allowed[allowed.index(user.target) + 1:]
                cur = user
                continue
            extra += 1
            break
    return extra


def _weights_are_parameters(gm: torch.fx.GraphModule) -> bool:
    """Every convolution's weight is a graph input (a parameter), not a per-call computed copy."""
    return all(n.args[1].op == "placeholder" for n in gm.graph.nodes if n.target is aten.convolution.default)


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
    return model


def _fold_and_compare(model: nn.Module, x: torch.Tensor, decompose_bn: bool = False,
                      dtype: torch.dtype = torch.float64) -> tuple[int, torch.fx.GraphModule]:
    model = model.to(dtype).eval()
    x = x.to(dtype)
    compiled, rec = compile_with(model, fw_pass=fold_batchnorm, decompose_bn=decompose_bn)
    with torch.no_grad():
        ref = model(x)
        out = compiled(x)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    return rec["fw"][0], rec["graphs"][0]


class Affine(nn.Module):
    """A frozen per-channel affine norm (FrozenBatchNorm-style: x * scale + shift)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.rand(c) + 0.5)
        self.register_buffer("shift", torch.randn(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)


@pytest.mark.parametrize("decompose_bn", [False, True], ids=["bn_op", "bn_decomposed"])
@pytest.mark.parametrize("bias", [False, True])
def test_fold_conv2d_bn(decompose_bn, bias):
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=bias),
                                        nn.BatchNorm2d(5), nn.ReLU()))
    n, gm = _fold_and_compare(model, torch.randn(2, 3, 9, 7), decompose_bn)
    assert n == 1
    assert count_targets(gm, aten._native_batch_norm_legit_no_training.default) == 0
    assert _norm_users_of_convs(gm) == 0
    assert count_targets(gm, aten.convolution.default) == 1
    assert _weights_are_parameters(gm)  # the affine runs in the epilogue; weights are never rescaled per call


@pytest.mark.parametrize("build,shape", [
    (lambda: nn.Sequential(nn.Conv1d(4, 6, 3, stride=2), nn.BatchNorm1d(6)), (2, 4, 15)),
    (lambda: nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3)), (1, 2, 5, 6, 7)),
    (lambda: nn.Sequential(nn.Conv2d(6, 6, 3, groups=6), nn.BatchNorm2d(6)), (1, 6, 9, 9)),
    (lambda: nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, affine=False)), (1, 4, 7, 7)),
    (lambda: nn.Sequential(nn.Conv2d(4, 5, 3), Affine(5), nn.ReLU()), (1, 4, 7, 7)),
    (lambda: nn.Sequential(nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5), Affine(5)), (1, 4, 7, 7)),
], ids=["conv1d", "conv3d", "depthwise", "bn_no_affine", "frozen_affine", "bn_then_affine"])
def test_fold_variants(build, shape):
    for decompose_bn in (False, True):
        torch._dynamo.reset()
        n, gm = _fold_and_compare(_randomize_bn(build()), torch.randn(*shape), decompose_bn)
        assert n == 1
        assert _norm_users_of_convs(gm) == 0


def test_fold_float32_keeps_residual_add():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(5, 5, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(5)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)) + x)  # the residual add must stay

    n, gm = _fold_and_compare(_randomize_bn(Block()), torch.randn(2, 5, 7, 9),
                              dtype=torch.float32)
    assert n == 1 and count_targets(gm, aten.add.Tensor) >= 1


def test_training_mode_bn_does_not_fold():
    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).double().train()
    ref_model = copy.deepcopy(model)
    compiled, rec = compile_with(model, fw_pass=fold_batchnorm)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = compiled(x)
        ref = ref_model(x)
    assert rec["fw"] == [0]
    torch.testing.assert_close(out, ref)


def test_bn_without_running_stats_does_not_fold():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    n, _ = _fold_and_compare(model, torch.randn(2, 3, 8, 8))
    assert n == 0


def test_conv_with_second_user_does_not_fold():
    class TwoUsers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    n, gm = _fold_and_compare(_randomize_bn(TwoUsers()), torch.randn(1, 3, 7, 7))
    assert n == 0
    assert count_targets(gm, aten._native_batch_norm_legit_no_training.default) == 1


def test_non_per_channel_operand_does_not_fold():
    class Spatial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("mask", torch.rand(1, 1, 5, 5))

        def forward(self, x):
            return self.conv(x) * self.mask  # varies over pixels: not foldable

    n, _ = _fold_and_compare(Spatial(), torch.randn(1, 3, 7, 7))
    assert n == 0


def test_transposed_conv_does_not_fold():
    model = _randomize_bn(nn.Sequential(nn.ConvTranspose2d(3, 4, 3), nn.BatchNorm2d(4)))
    n, _ = _fold_and_compare(model, torch.randn(1, 3, 5, 5))
    assert n == 0
