"""2-D max pooling, its backward and average pooling on the native CPU target: values and indices
equal to ATen's (padding, stride, dilation, ceil_mode, count_include_pad, divisor_override, odd
sizes, channels-last input, NaN windows), input gradients equal to ATen's (overlapping windows add
in the same order), float32 and bfloat16."""
from __future__ import annotations

import pytest
import torch

from .helpers import run_compiled

pytestmark = pytest.mark.usefixtures("cpu_target")


def _pools(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    y = torch.relu(x)
    a, ia = torch.nn.functional.max_pool2d(y, 3, 2, 1, return_indices=True)
    b, ib = torch.nn.functional.max_pool2d(y, (3, 2), (1, 2), (1, 0), dilation=(1, 2), ceil_mode=True,
                                           return_indices=True)
    c = torch.nn.functional.max_pool2d(y[0], 2)  # 3-D input
    avg = torch.nn.functional.avg_pool2d
    return (a, ia, b, ib, c, avg(x, 3, 2, 1), avg(x, (2, 3), (2, 1), (1, 1), ceil_mode=True, count_include_pad=False),
            avg(x, 3, 2, 1, divisor_override=5), avg(x[0], 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_and_average_pool_forward_equal_aten(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 9).to(dtype).contiguous(memory_format=torch.channels_last)
    x[0, 1, 2, 3] = float("nan")  # a NaN wins its windows, as in ATen
    got, report = run_compiled(_pools, x)
    for g, w in zip(got, _pools(x)):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert torch.equal(g.nan_to_num(7.0), w.nan_to_num(7.0))
    assert sum(k["kind"] == "window" for k in report.kernels) == 7
    assert all(k["status"] == "ran" for k in report.kernels)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_pool_backward_equals_aten(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 4, 13, 10).to(dtype)
    x[:, :, 4:7, 3:6] = 0.5  # ties: the first position in the window wins
    g = torch.randn(2, 4, 7, 10).to(dtype)

    def step(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_()
        y = torch.nn.functional.max_pool2d(x * 2, 3, (2, 1), 1)  # overlapping windows
        (y * g).sum().backward()
        return x.grad

    want = step(x, g)
    from tilewright.report import collect

    with collect() as report:
        got = torch.compile(step, backend="tilewright")(x, g)
    torch._dynamo.reset()
    assert torch.equal(got, want)
    ran = {op for k in report.kernels if k["kind"] == "window" and k["status"] == "ran" for op in k["ops"]}
    assert ran == {"aten.max_pool2d_with_indices.default", "aten.max_pool2d_with_indices_backward.default"}
