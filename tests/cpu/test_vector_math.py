"""Vector (``tw_vf``) erf, tanh and GELU in pointwise kernels against float64, on odd sizes (whole
vectors and the scalar tail), special values (NaN, +-inf, +-0, the formulas' switch points)."""
from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tests.cpu.helpers import run_compiled

_SPECIAL = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 0.125, -0.125, 0.5, -0.5, 0.49999997, 0.50000006,
            1e-30, -1e-30, 1e-4, 3.0, -3.0, 9.0, -9.0, 20.0, -20.0, 100.0, -100.0, 1e30, -1e30]

_OPS: list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = [
    ("erf", torch.erf),
    ("tanh", torch.tanh),
    ("gelu", F.gelu),
    ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
    # with sigmoid (already vectorised): the whole fused body takes the vector loop
    ("chain", lambda x: torch.sigmoid(x * 1.5 + 0.25) * F.gelu(x) - torch.tanh(x)),
]


def _inputs(rows: int, cols: int) -> torch.Tensor:
    torch.manual_seed(rows * cols)
    x = torch.randn(rows, cols) * 3
    flat = x.view(-1)
    if flat.numel() < 2 * len(_SPECIAL):
        return x
    flat[: len(_SPECIAL)] = torch.tensor(_SPECIAL)
    flat[-len(_SPECIAL):] = torch.tensor(_SPECIAL)  # in the tail of the last row too
    return x


@pytest.fixture(autouse=True)
def _strict_cpu(cpu_target: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tilewright.config, "strict", True)  # a fallback to eager fails the test


@pytest.mark.parametrize("name,fn", _OPS, ids=[n for n, _ in _OPS])
@pytest.mark.parametrize("shape", [(37, 61), (3, 4099), (1, 7)])
def test_vector_math_matches_float64(name: str, fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, int]) -> None:
    x = _inputs(*shape)
    got, _ = run_compiled(fn, x)
    want = fn(x.double())
    assert torch.equal(torch.isnan(got), torch.isnan(want)), name
    finite = ~torch.isnan(want)
    # float32 results: 2e-6 relative, or 1e-7 absolute near 0; GELU's 1 + erf/tanh cancels for negative x
    # (as in any float32 evaluation), so its absolute slack grows with |x|
    same = got.double()[finite] == want[finite]  # infinities included
    err = torch.where(same, 0.0, (got.double()[finite] - want[finite]).abs())
    slack = 1e-7 if name in ("erf", "tanh") else 4e-7 * (1 + x.double()[finite].abs())
    bound = 2e-6 * want[finite].abs() + slack
    worst = int(torch.argmax(err - bound))
    assert bool((err <= bound).all()), (name, x.view(-1)[finite.view(-1)][worst].item(), got.double()[finite][worst].item(),
                                        want[finite][worst].item())
    if name in ("erf", "tanh"):  # odd functions keep the sign of zero
        zero = want == 0
        assert torch.equal(torch.signbit(got[zero]), torch.signbit(want[zero]))


def test_float64_reference_sanity() -> None:
    assert math.isclose(torch.erf(torch.tensor(0.5, dtype=torch.float64)).item(), math.erf(0.5))
