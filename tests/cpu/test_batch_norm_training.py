"""Batch norm in training on the native CPU target: forward statistics, running stats and every
gradient against a float64 reference on odd sizes and layouts, and the kernels' structure that
made ResNet-18's training step fast: the per-channel reduction over ``(N, H, W)`` walks ``H * W``
as one vectorised run inside a loop over ``N`` (no division per element), and the backward's
element pass (grad input) is in the same kernel as its two channel sums."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from tilewright.report import collect

pytestmark = pytest.mark.usefixtures("cpu_target")


class _Block(torch.nn.Module):
    """A ResNet basic block: conv -> BN -> ReLU -> conv -> BN, + residual -> ReLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.bn2 = torch.nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


def _step(model: torch.nn.Module, x: torch.Tensor, target: Any) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = target(x)
    (out * out.detach().sin()).sum().backward()
    grads = [p.grad for p in model.parameters()]
    stats = [b for name, b in model.named_buffers() if "running" in name]
    return [out.detach(), x.grad, *grads, *stats]


def _run(x: torch.Tensor, c: int) -> tuple[list[torch.Tensor], list[torch.Tensor], Any]:
    torch.manual_seed(0)
    model = _Block(c).train()
    ref = _Block(c).double().train()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    want = _step(ref, x.double(), ref)
    with collect() as report:
        got = _step(model, x, torch.compile(model, backend="tilewright"))
    torch._dynamo.reset()
    return got, want, report


def _x(shape: tuple[int, ...], layout: str) -> torch.Tensor:
    x = torch.randn(*shape) * 3 + 1
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":  # a view whose rows are not one run (W is a slice of a wider tensor)
        return torch.randn(*shape[:-1], shape[-1] + 4)[..., 2:-2] * 3 + 1
    return x


@pytest.mark.parametrize("shape,layout", [((3, 5, 7, 9), "nchw"), ((1, 6, 5, 11), "nchw"),
                                          ((2, 5, 7, 9), "channels_last"), ((2, 3, 6, 5), "sliced"),
                                          ((2, 4, 1, 1), "nchw")])
def test_training_step_matches_float64(shape: tuple[int, ...], layout: str) -> None:
    got, want, report = _run(_x(shape, layout), shape[1])
    assert all(k["status"] == "ran" for k in report.kernels), report.kernels
    # the BN fold (passes/fx/conv_rewrite.py) is for inference graphs: training uses batch statistics
    assert not any("folded" in note for g in report.graphs for note in g.notes), [g.notes for g in report.graphs]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)


def test_nchw_kernels_walk_one_run_and_fuse_the_backward() -> None:
    got, want, report = _run(_x((2, 8, 12, 10), "nchw"), 8)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)
    reductions = [k for k in report.kernels if k["kind"] == "reduction"]
    assert reductions
    for k in reductions:  # (N, H, W) walked as N runs of H * W: no per-dim sizes to divide by
        runtime = k["sizes"]["runtime"]
        assert "run" in runtime and "outer reduced" in runtime, (k["name"], runtime)
        assert "size2" not in runtime and "size3" not in runtime, (k["name"], runtime)
    # one reduction kernel per batch norm in the backward (ReLU's mask, both channel sums, grad
    # input): the grad-input pass reads the channel sums through unsqueeze views inside the kernel,
    # so no full-size pointwise kernel follows it
    ops = {k["name"]: [op.split(".")[1] for op in k["ops"]] for k in report.kernels}
    backward = [k["name"] for k in reductions if "where" in ops[k["name"]]]
    assert len(backward) == 2, ops
    for name in backward:
        assert ops[name].count("sum") >= 2 and ops[name].count("sub") >= 2, ops[name]
    pointwise = [name for k in report.kernels if k["kind"] == "pointwise"
                 for name in [k["name"]] if "sub" in ops[name]]
    assert not pointwise, {name: ops[name] for name in pointwise}


def _softmax_over(x: torch.Tensor, dims: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    e = torch.exp(x - x.amax(dims, keepdim=True))
    return (e / e.sum(dims, keepdim=True)).to(dtype)


@pytest.mark.parametrize("shape,dims,dtype", [((3, 5, 37), (0, 2), torch.float32), ((3, 5, 37), (0, 2), torch.float64),
                                              ((2, 4, 3, 33), (0, 2, 3), torch.float32),
                                              ((3, 2, 5, 7), (1, 3), torch.float64)])
def test_multi_dim_reduction_with_an_outer_loop(shape: tuple[int, ...], dims: tuple[int, ...], dtype: torch.dtype) -> None:
    """Several levels over non-adjacent reduced dims: each pass is runs inside the outer loop, and
    exp(x - max) is kept between passes at the element's place in the whole row (in the output, or
    in a scratch buffer when the output is float64)."""
    from .helpers import run_compiled

    torch.manual_seed(0)
    x = torch.randn(*shape) * 4
    got, report = run_compiled(lambda t: _softmax_over(t, dims, dtype), x)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), _softmax_over(x.double(), dims, torch.float64), rtol=1e-5, atol=1e-6)
    kernels = [k for k in report.kernels if k["kind"] == "reduction"]
    assert len(kernels) == 1 and kernels[0]["status"] == "ran", report.kernels
    assert "outer reduced" in kernels[0]["sizes"]["runtime"], kernels[0]["sizes"]
