"""ResNet (transformers, tiny config) through the conv passes and kernels, vs eager and float64."""
from __future__ import annotations

import copy

import pytest
import torch

from tilewright.targets.triton.conv import backward as conv_backward_mod
from tilewright.targets.triton.conv import ops as conv_ops
from tilewright.targets.triton.conv.ops import lower_convolutions
from tilewright.passes.fx.conv_rewrite import fold_batchnorm

from ._capture import compile_with, count_targets

transformers = pytest.importorskip("transformers")
aten = torch.ops.aten
DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _reset():
    torch._dynamo.reset()
    conv_ops._failed.clear()
    yield
    torch._dynamo.reset()


def _resnet() -> torch.nn.Module:
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                    num_channels=3)
    model = transformers.ResNetModel(cfg).to(DEV)
    for m in model.modules():  # non-trivial running statistics so folding is really tested
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model


def _outputs(out) -> list[torch.Tensor]:
    return [out.last_hidden_state, out.pooler_output]


class _Counter:
    """Counts convolutions that ran as Triton kernels (conv_forward calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = conv_ops.conv_forward

        def counting(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(conv_ops, "conv_forward", counting)


def _err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.double() - ref).abs().max().item() / max(ref.abs().max().item(), 1e-12)


def test_resnet_inference_fold_and_kernels(monkeypatch):
    model = _resnet().eval()
    x = torch.randn(2, 3, 33, 31, device=DEV)
    seen: dict[str, int] = {}

    def fw_pass(gm: torch.fx.GraphModule) -> int:
        seen["bn"] = count_targets(gm, aten._native_batch_norm_legit_no_training.default)
        seen["conv"] = count_targets(gm, aten.convolution.default)
        folded = fold_batchnorm(gm)
        seen["bn_after"] = count_targets(gm, aten._native_batch_norm_legit_no_training.default)
        seen["lowered"] = lower_convolutions(gm)
        return folded

    counter = _Counter(monkeypatch)
    compiled, rec = compile_with(model, fw_pass=fw_pass)
    with torch.no_grad():
        out = _outputs(compiled(x))
        eager = _outputs(model(x))
        ref64 = _outputs(copy.deepcopy(model).double()(x.double()))
    assert seen["bn"] == seen["conv"] and seen["conv"] >= 5
    assert rec["fw"] == [seen["bn"]] and seen["bn_after"] == 0
    assert seen["lowered"] == seen["conv"]
    coverage = counter.calls / seen["conv"]
    assert coverage >= 0.9 and not conv_ops._failed
    for o, e, r in zip(out, eager, ref64):
        torch.testing.assert_close(o, e, atol=1e-4, rtol=1e-4)
        assert _err(o, r) <= 10 * _err(e, r) + 1e-5


def test_resnet_training_forward_and_backward(monkeypatch):
    model = _resnet().train()
    model64 = copy.deepcopy(model).double()
    model32 = copy.deepcopy(model)
    x = torch.randn(2, 3, 33, 31, device=DEV)
    lowered: dict[str, int] = {"fw": 0, "bw": 0, "bw_nodes": 0}

    def fw_pass(gm: torch.fx.GraphModule) -> int:
        assert fold_batchnorm(gm) == 0  # training-mode batch norm never folds
        lowered["fw"] += lower_convolutions(gm)
        return lowered["fw"]

    def bw_pass(gm: torch.fx.GraphModule) -> int:
        lowered["bw_nodes"] += count_targets(gm, aten.convolution_backward.default)
        lowered["bw"] += lower_convolutions(gm)
        return lowered["bw"]

    counter = _Counter(monkeypatch)

    def no_aten(*args, **kwargs):
        raise AssertionError("a gradient fell back to ATen")
    monkeypatch.setattr(conv_backward_mod, "_aten_grads", no_aten)  # every gradient is Triton
    compiled, _ = compile_with(model, fw_pass=fw_pass, bw_pass=bw_pass)
    results = []
    for m, inp in ((compiled, x), (model32, x), (model64, x.double())):
        out = _outputs(m(inp))
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device).view(o.shape)).sum()
                   for o in out)
        loss.backward()
        named = m.named_parameters() if m is not compiled else model.named_parameters()
        grads = {n: p.grad for n, p in named}
        results.append((out, grads))
    (ours, g_ours), (eager, g_eager), (ref, g_ref) = results
    assert lowered["fw"] >= 5 and lowered["bw"] == lowered["bw_nodes"] >= 5
    assert counter.calls >= 0.9 * lowered["fw"] and not conv_ops._failed
    for o, e, r in zip(ours, eager, ref):
        assert _err(o, r) <= 10 * _err(e, r) + 1e-5
    assert set(g_ours) == set(g_ref)
    for name in g_ref:
        assert _err(g_ours[name], g_ref[name]) <= 10 * _err(g_eager[name], g_ref[name]) + 1e-5, name
