"""The bfloat16 dot core's packing paths (pairs read as words along K, row-major B interleaved by
vector permutes, strided fallbacks) and its default, decided by the host's throughput probe."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import tilewright
from tilewright.targets.cpu.gemm_dot import _host_advantage, dot_pays, has_bf16_dot
from tilewright.targets.cpu.toolchain import cpu_description

from .helpers import assert_configs_match

needs_bf16_dot = pytest.mark.skipif(not has_bf16_dot(cpu_description()),
                                    reason="this CPU has no AVX512_BF16 (the dot core is not offered here)")


def _matmul_kernel(fn: Callable[..., torch.Tensor], args: tuple[torch.Tensor, ...]) -> Any:
    from tilewright.frontend.api import tunable_kernels

    saved = tilewright.config.target
    tilewright.config.target = "cpu"
    try:
        kernels = tunable_kernels(fn, args)
    finally:
        tilewright.config.target = saved
        torch._dynamo.reset()
    return next(k for k in kernels if k.problem.kind == "matmul")


Case = tuple[str, Callable[..., torch.Tensor], Callable[..., torch.Tensor], tuple[int, ...], tuple[int, ...]]


def _cases() -> list[Case]:
    """(id, model, the kernel's result from its own operands (the mm/bmm inputs), shapes)."""
    return [
        # A read along M (a transposed activation: K stride != 1), row-major B with 32-column vector runs
        ("a_t", lambda a, b: torch.mm(a.t(), b) * 0.5, lambda a, b: (a @ b) * 0.5, (77, 41), (77, 83)),
        # linear weight (B read along K: words), odd K (a half pair at the end)
        ("linear", lambda x, w: torch.nn.functional.linear(x, w), lambda a, b: a @ b, (39, 133), (67, 133)),
        # bmm, row-major B, odd K and N, 64-column panels possible
        ("bmm", lambda a, b: torch.bmm(a, b).relu(), lambda a, b: torch.bmm(a, b).relu(), (2, 19, 65), (2, 65, 101)),
    ]


@needs_bf16_dot
@pytest.mark.parametrize("case", _cases(), ids=lambda c: c[0])
def test_dot_core_packing_matches_float64(case: Case) -> None:
    _, fn, ref, sa, sb = case
    torch.manual_seed(len(sa) + sa[-1])
    a, b = torch.randn(*sa).bfloat16(), torch.randn(*sb).bfloat16()
    kernel = _matmul_kernel(fn, (a, b))
    tensors = kernel.make_inputs("cpu")
    assert all(t.abs().sum() > 0 for t in tensors[:2])
    want = ref(*(t.double() for t in tensors[:2]))
    scale = want.abs().max().item()
    space = kernel.space
    configs = [dict(space.default_config(), dot=True)]
    per_block: dict[tuple[int, int], dict[str, Any]] = {}  # one config per register block, smallest KC and MC
    for c in space.enumerate():
        if c["dot"] and not c["extern"] and c["threads"] == 1:
            best = per_block.setdefault((c["MR"], c["NR"]), c)
            if (c["KC"], c["MC"], c["NC"]) < (best["KC"], best["MC"], best["NC"]):
                per_block[(c["MR"], c["NR"])] = c
    configs += list(per_block.values())
    assert {32, 64} <= {nr for _, nr in per_block}
    assert_configs_match(kernel, configs, tensors, want, rtol=1e-2, atol=1e-2 * scale)


def test_dot_default_follows_the_probe() -> None:
    desc = cpu_description()
    if not has_bf16_dot(desc):
        assert dot_pays(desc) is False
        return
    assert dot_pays(desc) is (_host_advantage() >= 1.25)
    assert dot_pays({**desc, "model": "another CPU"}) is False  # the probe measures only the host
    assert 0.1 < _host_advantage() < 10.0
