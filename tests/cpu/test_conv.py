"""The CPU target's convolution kernels (implicit GEMM, direct depthwise) with fused epilogues,
against float64, in strict mode; schedule configs; weight packing; a ResNet block end to end."""
from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright.schedule.space import InfeasibleConfig
from tilewright.targets.cpu.target import CpuTarget

from .helpers import assert_configs_match, run_compiled

pytestmark = pytest.mark.usefixtures("cpu_target")


@pytest.fixture
def generated(monkeypatch: pytest.MonkeyPatch) -> None:
    """No compile-time race against oneDNN: the generated default runs (what these tests check)."""
    monkeypatch.setattr(CpuTarget, "race_candidates", lambda self, kernel: [])


def _conv_kernels(report: Any) -> list[dict[str, Any]]:
    assert all(k["status"] == "ran" for k in report.kernels), report.kernels
    assert all(g.mode == "cpu" for g in report.graphs)
    found = [k for k in report.kernels if k["kind"] == "conv"]
    assert found, f"no conv kernel ran: {[k['kind'] for k in report.kernels]}, fallbacks {report.fallbacks}"
    assert not any(f["op"] == "aten.convolution.default" for f in report.fallbacks), report.fallbacks
    return found


def _check(got: torch.Tensor, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...], slack: float = 1e-5) -> None:
    want = fn(*[i.double() for i in inputs])
    eager_err = (fn(*inputs).double() - want).abs().max().item()
    err = (got.double() - want).abs().max().item()
    assert err <= 4 * eager_err + slack, (err, eager_err)


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


CASES: list[tuple[str, Callable[..., Any], Callable[[], tuple[torch.Tensor, ...]]]] = [
    ("odd_3x3_bias", lambda x, w, b: F.conv2d(x, w, b, padding=1), lambda: (_x(2, 5, 13, 11), _x(7, 5, 3, 3), _x(7))),
    ("stride2_no_bias", lambda x, w: F.conv2d(x, w, stride=2, padding=1), lambda: (_x(1, 6, 15, 17), _x(9, 6, 3, 3))),
    ("pointwise_1x1", lambda x, w: F.conv2d(x, w), lambda: (_x(3, 13, 9, 7), _x(17, 13, 1, 1))),
    ("stem_7x7_s2", lambda x, w: F.conv2d(x, w, stride=2, padding=3), lambda: (_x(1, 3, 29, 27), _x(10, 3, 7, 7))),
    ("1x1_stride2", lambda x, w: F.conv2d(x, w, stride=2), lambda: (_x(2, 9, 11, 13), _x(11, 9, 1, 1))),
    ("grouped_asym_pad", lambda x, w, b: F.conv2d(x, w, b, padding=(1, 2), groups=3),
     lambda: (_x(2, 12, 11, 9), _x(18, 4, 3, 3), _x(18))),
    ("depthwise_7x7", lambda x, w, b: F.conv2d(x, w, b, padding=3, groups=10),
     lambda: (_x(2, 10, 13, 15), _x(10, 1, 7, 7), _x(10))),
    ("depthwise_s2", lambda x, w: F.conv2d(x, w, stride=2, padding=1, groups=6), lambda: (_x(1, 6, 14, 11), _x(6, 1, 3, 3))),
    ("depthwise_wide_dilated", lambda x, w: F.conv2d(x, w, padding=2, dilation=2, groups=4),
     lambda: (_x(1, 4, 5, 37), _x(4, 1, 3, 3))),
    ("channel_multiplier", lambda x, w: F.conv2d(x, w, padding=1, groups=5), lambda: (_x(1, 5, 8, 9), _x(10, 1, 3, 3))),
    ("dilated", lambda x, w: F.conv2d(x, w, padding=2, dilation=2), lambda: (_x(1, 4, 12, 13), _x(5, 4, 3, 3))),
    ("several_k_slices", lambda x, w: F.conv2d(x, w, padding=1), lambda: (_x(1, 45, 10, 9), _x(21, 45, 3, 3))),
    ("conv1d", lambda x, w, b: F.conv1d(x, w, b, padding=1), lambda: (_x(2, 6, 19), _x(5, 6, 3), _x(5))),
    ("strided_input", lambda x, w: F.conv2d(x[:, ::2, 1:], w, padding=1), lambda: (_x(2, 10, 12, 9), _x(7, 5, 3, 3))),
    ("channels_last", lambda x, w: F.conv2d(x.contiguous(memory_format=torch.channels_last), w, padding=1),
     lambda: (_x(1, 6, 9, 10), _x(5, 6, 3, 3))),
]


@pytest.mark.parametrize("name,fn,make", CASES, ids=[c[0] for c in CASES])
def test_conv_matches_float64(generated: None, name: str, fn: Callable[..., Any],
                              make: Callable[[], tuple[torch.Tensor, ...]]) -> None:
    torch.manual_seed(0)
    inputs = make()
    out, report = run_compiled(fn, *inputs)
    _check(out, fn, inputs)
    kernels = _conv_kernels(report)
    if "depthwise" in name:
        assert kernels[0]["algo"] == "depthwise"


EPILOGUES: list[tuple[str, Callable[..., Any], Callable[[], tuple[torch.Tensor, ...]]]] = [
    ("bias_relu", lambda x, w, b: torch.relu(F.conv2d(x, w, b, padding=1)), lambda: (_x(2, 5, 9, 11), _x(7, 5, 3, 3), _x(7))),
    ("affine_silu", lambda x, w, s, t: F.silu(F.conv2d(x, w, stride=2, padding=1) * s[:, None, None] + t[:, None, None]),
     lambda: (_x(1, 6, 13, 10), _x(11, 6, 3, 3), _x(11), _x(11))),
    ("residual_relu", lambda x, w, r: torch.relu(F.conv2d(x, w, padding=1) + r),
     lambda: (_x(2, 8, 7, 9), _x(8, 8, 3, 3), _x(2, 8, 7, 9))),
    ("gelu_depthwise", lambda x, w: F.gelu(F.conv2d(x, w, padding=3, groups=9)), lambda: (_x(1, 9, 10, 11), _x(9, 1, 7, 7))),
    ("two_outputs", lambda x, w: (F.conv2d(x, w), torch.tanh(F.conv2d(x, w)) * 2.0),
     lambda: (_x(2, 7, 5, 6), _x(13, 7, 1, 1))),
]


@pytest.mark.parametrize("name,fn,make", EPILOGUES, ids=[c[0] for c in EPILOGUES])
def test_fused_epilogue(generated: None, name: str, fn: Callable[..., Any],
                        make: Callable[[], tuple[torch.Tensor, ...]]) -> None:
    torch.manual_seed(1)
    inputs = make()
    out, report = run_compiled(fn, *inputs)
    outs = out if isinstance(out, tuple) else (out,)
    for i, got in enumerate(outs):
        _check(got, lambda *a, i=i: (fn(*a) if isinstance(out, tuple) else (fn(*a),))[i], inputs)
    kernels = _conv_kernels(report)
    assert any(k["epilogue"] for k in kernels), "the pointwise ops after the convolution run in its kernel"
    if name == "affine_silu":  # the per-channel affine is folded into the weights (pointwise kernels compute them)
        assert any("aten.sigmoid.default" in k["epilogue"] for k in kernels), kernels
    else:
        assert not any(k["kind"] == "pointwise" for k in report.kernels), report.kernels


@pytest.mark.parametrize("depthwise", [False, True])
def test_bfloat16(generated: None, depthwise: bool) -> None:
    torch.manual_seed(2)
    groups = 6 if depthwise else 1
    x, w, b = _x(2, 6, 11, 9), _x(6 if depthwise else 9, 1 if depthwise else 6, 3, 3), _x(6 if depthwise else 9)
    fn = lambda x, w, b: F.silu(F.conv2d(x, w, b, stride=1, padding=1, groups=groups))
    inputs = tuple(t.bfloat16() for t in (x, w, b))
    out, report = run_compiled(fn, *inputs)
    assert out.dtype == torch.bfloat16
    _check(out, fn, inputs, 1e-2)
    _conv_kernels(report)


def test_float64(generated: None) -> None:
    torch.manual_seed(3)
    x, w = torch.randn(1, 5, 9, 8, dtype=torch.float64), torch.randn(6, 5, 3, 3, dtype=torch.float64)
    out, report = run_compiled(lambda x, w: torch.sigmoid(F.conv2d(x, w, padding=1)), x, w)
    torch.testing.assert_close(out, torch.sigmoid(F.conv2d(x, w, padding=1)), rtol=1e-12, atol=1e-12)
    _conv_kernels(report)


@pytest.fixture(scope="module")
def conv_kernel() -> Any:
    """One fused conv+bias+ReLU kernel whose weight is a graph input (built once)."""
    from tilewright.frontend.api import tunable_kernels

    saved = tilewright.config.target
    tilewright.config.target = "cpu"
    try:
        torch.manual_seed(4)
        x, w, b = _x(2, 10, 9, 11), _x(19, 10, 3, 3), _x(19)
        kernels = tunable_kernels(lambda x, w, b: torch.relu(F.conv2d(x, w, b, stride=2, padding=1)), (x, w, b))
    finally:
        tilewright.config.target = saved
        torch._dynamo.reset()
    return next(k for k in kernels if k.problem.kind == "conv")


def test_every_sampled_config_gives_the_same_result(conv_kernel: Any) -> None:
    kernel = conv_kernel
    torch.manual_seed(5)
    tensors = kernel.make_inputs("cpu")
    x, w, b = tensors[:3]
    want = torch.relu(F.conv2d(x.double(), w.double(), b.double(), stride=2, padding=1))
    configs = list(kernel.space.enumerate())
    sample = random.Random(0).sample(configs, 8) + [kernel.space.default_config()]
    sample += [c for c in configs if c["extern"]]
    sample += [next(c for c in configs if c["wpack"] == mode and c["threads"] > 1 and c["KC"] < 90)
               for mode in ("cached", "strided", "task")]
    assert_configs_match(kernel, sample, tensors, want, rtol=1e-4, atol=1e-4)


def test_schedule_space(conv_kernel: Any) -> None:
    from tilewright.targets.cpu.conv_source import conv_space
    from tilewright.targets.cpu.toolchain import cpu_description

    space = conv_kernel.space
    default = space.default_config()
    assert space.is_feasible(default) and not default["extern"], "the generated kernel is the default"
    assert default["wpack"] == "cached", "a graph-input weight is packed once"
    assert sum(1 for c in space.enumerate() if c["extern"]) == 1, "extern is one candidate"
    assert conv_kernel.problem.dims["KRS"] == 90 and conv_kernel.problem.flops >= 2 * 2 * 19 * 5 * 6 * 90
    computed = conv_space("gemm", 64, 3136, 576, 1, torch.float32, torch.bfloat16, cpu_description(), False)
    with pytest.raises(InfeasibleConfig, match="graph input"):
        computed.validate({**computed.default_config(), "wpack": "cached"})
    with pytest.raises(InfeasibleConfig, match="converted"):
        computed.validate({**computed.default_config(), "wpack": "strided"})
    with pytest.raises(InfeasibleConfig, match="extern"):
        space.validate({**default, "extern": True, "KC": next(k for k in space.params["KC"] if k != default["KC"])})
    big = conv_space("gemm", 64, 3136, 576, 1, torch.float32, torch.float32, cpu_description(), True).default_config()
    assert big["threads"] == max(space.params["threads"]) and big["NC"] < 3136


def test_packed_weight_follows_in_place_updates(generated: None) -> None:
    torch.manual_seed(6)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    x = _x(1, 4, 7, 8)
    compiled = torch.compile(conv, backend="tilewright")
    with torch.no_grad():
        first = compiled(x)
        torch.testing.assert_close(first, conv(x), rtol=1e-5, atol=1e-5)
        conv.weight.mul_(-2.0)  # in place: the version counter moves, the packed copy is stale
        second = compiled(x)
        torch.testing.assert_close(second, conv(x), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_unsupported_convolutions_say_why() -> None:
    torch.manual_seed(7)
    x, w = _x(1, 4, 6, 5), _x(4, 3, 3, 3)
    out, report = run_compiled(lambda x, w: F.conv_transpose2d(x, w, stride=2), x, w)
    torch.testing.assert_close(out, F.conv_transpose2d(x, w, stride=2), rtol=1e-5, atol=1e-5)
    reasons = [f["reason"] for f in report.fallbacks if "convolution" in f["op"]]
    assert reasons and "transposed" in reasons[0], report.fallbacks


def test_race_against_onednn_is_measured() -> None:
    torch.manual_seed(8)
    x, w = _x(1, 8, 12, 12), _x(16, 8, 3, 3)
    out, report = run_compiled(lambda x, w: torch.relu(F.conv2d(x, w, padding=1)), x, w)
    _check(out, lambda x, w: torch.relu(F.conv2d(x, w, padding=1)), (x, w))
    kernel = _conv_kernels(report)[0]
    assert kernel["schedule_source"] == "measured", kernel


class _Block(torch.nn.Module):
    """A ResNet basic block with a strided projection shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(c_out)
        self.c2 = torch.nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(c_out)
        self.down = torch.nn.Sequential(torch.nn.Conv2d(c_in, c_out, 1, stride, bias=False), torch.nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.down(x))


def _small_resnet() -> torch.nn.Module:
    torch.manual_seed(9)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 7, 2, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                _Block(8, 12, 2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(12, 5))
    for m in model.modules():  # non-trivial running statistics so the folded batch norms matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def test_small_resnet_inference_matches_eager(generated: None) -> None:
    model = _small_resnet().eval()
    x = torch.randn(2, 3, 27, 25)
    with torch.no_grad():
        got, report = run_compiled(model, x)
        want = copy.deepcopy(model).double()(x.double())
        eager = model(x).double()
    assert (got.double() - want).abs().max().item() <= 10 * (eager - want).abs().max().item() + 1e-5
    kernels = _conv_kernels(report)
    assert len(kernels) == 4, [k["ops"] for k in kernels]
    assert any("aten.add.Tensor" in k["epilogue"] for k in kernels), "the residual add is fused"


def test_small_resnet_training_step(generated: None) -> None:
    """Forward convolutions generated; their gradients stay oneDNN calls, with the reason in explain."""
    model = _small_resnet().train()
    ref = copy.deepcopy(model).double()
    x = torch.randn(2, 3, 19, 21)
    with tilewright.report.collect() as report:
        loss = torch.compile(model, backend="tilewright")(x).square().mean()
        loss.backward()
    torch._dynamo.reset()
    ref_loss = ref(x.double()).square().mean()
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) <= 1e-4 * abs(ref_loss.item()) + 1e-6
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad.double(), r.grad, rtol=1e-3, atol=1e-4)
    assert any(k["kind"] == "conv" for k in report.kernels)
    reasons = [f["reason"] for f in report.fallbacks if "convolution_backward" in f["op"]]
    assert reasons and "not generated" in reasons[0], report.fallbacks


class _CountingSource:
    """Stands in for a ConvSource: 'packs' by cloning, and counts the packs."""

    def __init__(self) -> None:
        self.packs = 0

    def pack_weight(self, w: torch.Tensor, mr: int, dot: bool = False) -> torch.Tensor:
        self.packs += 1
        return w.clone()


def test_packed_weight_is_not_served_to_a_new_tensor_at_a_dead_ones_address() -> None:
    """Two tensor objects with one address, shape and version (views of one buffer share its
    version counter, as a new tensor allocated where a dead one was has version 0 like it): the
    second is packed anew. The same object, unchanged, is served from the cache; an in-place
    update repacks."""
    from tilewright.targets.cpu.conv import PackedWeight

    source = _CountingSource()
    cache = PackedWeight(source)  # type: ignore[arg-type]
    buf = torch.randn(64)
    a = buf[:54].view(6, 9)
    assert torch.equal(cache.get(a, 4), a) and source.packs == 1
    cache.get(a, 4)
    assert source.packs == 1  # same object, same version: cached
    buf.numpy()[:54] = 7.0  # new contents written behind the version counter (as by a kernel)
    b = buf[:54].view(6, 9)
    assert (b.data_ptr(), b._version) == (a.data_ptr(), a._version)
    assert torch.equal(cache.get(b, 4), torch.full((6, 9), 7.0)) and source.packs == 2
    b.mul_(2.0)  # an in-place update moves the version
    assert torch.equal(cache.get(b, 4), torch.full((6, 9), 14.0)) and source.packs == 3
