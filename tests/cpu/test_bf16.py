"""bfloat16 on the native CPU target: computed in float32, rounded to bfloat16 after every op as eager does."""
from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from tilewright.report import collect

from ..models.model_zoo import MODELS, main_output
from .helpers import run_compiled

BF16 = torch.bfloat16

pytestmark = pytest.mark.usefixtures("cpu_target")


@pytest.mark.parametrize("name,fn,make,bit_exact", [
    ("pointwise", lambda x, y: torch.relu(x * 2 + y) - x * y + y.abs(),
     lambda: (torch.randn(37, 53, dtype=BF16), torch.randn(53, dtype=BF16)), True),
    ("sum", lambda x: x.sum(-1), lambda: (torch.randn(9, 40, dtype=BF16),), True),
    ("upcast", lambda x: x.float() * 3 + 1, lambda: (torch.randn(9, 40, dtype=BF16),), True),
    ("softmax", lambda x: torch.softmax(x, -1), lambda: (torch.randn(7, 33, dtype=BF16) * 3,), False),
    ("layer_norm", lambda x, w, b: F.layer_norm(x, (33,), w, b),
     lambda: (torch.randn(5, 33, dtype=BF16), torch.randn(33, dtype=BF16), torch.randn(33, dtype=BF16)), False),
    ("specials", lambda x: x.exp() + x.amax(-1, keepdim=True),
     lambda: (torch.tensor([[1.0, float("nan"), float("inf"), -float("inf"), 3.0]], dtype=BF16),), False),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bf16_kernels_match_eager(name: str, fn: Callable[..., Any], make: Callable[[], tuple[torch.Tensor, ...]],
                                  bit_exact: bool) -> None:
    torch.manual_seed(0)
    inputs = make()
    out, report = run_compiled(fn, *inputs)
    want = fn(*inputs)
    assert out.dtype == want.dtype
    if bit_exact:  # same per-op rounding to bfloat16 as eager, no transcendental functions
        assert torch.equal(out, want)
    else:
        torch.testing.assert_close(out.float(), want.float(), rtol=1.6e-2, atol=1e-2, equal_nan=True)
    assert report.kernels and all(k["status"] == "ran" for k in report.kernels)


def test_gpt2_in_bf16_on_the_cpu_target() -> None:
    torch.manual_seed(0)
    model, inputs, _ = MODELS["gpt2"]()
    model.eval()
    ref = copy.deepcopy(model).double()
    model = model.to(BF16)
    with torch.no_grad(), collect() as report:
        got = main_output(torch.compile(model, backend="tilewright")(*inputs)).double()
    torch._dynamo.reset()
    with torch.no_grad():
        want = main_output(ref(*inputs))
        eager = main_output(model(*inputs)).double()
    eager_err = (eager - want).abs().max().item()
    assert (got - want).abs().max().item() <= 3 * eager_err + 1e-3
    assert report.kernels and all(k["status"] == "ran" for k in report.kernels)
