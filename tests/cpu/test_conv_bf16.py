"""bfloat16 convolutions on the dot core (AVX512_BF16 ``vdpbf16ps``): pair-packed weights and im2col,
sampled configs against float64, the schedule space, the race's candidates."""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright.schedule.space import InfeasibleConfig
from tilewright.targets.cpu.conv_dot import pack_weight_pairs
from tilewright.targets.cpu.conv_source import conv_space
from tilewright.targets.cpu.gemm_dot import dot_pays
from tilewright.targets.cpu.gemm_micro import has_bf16_dot
from tilewright.targets.cpu.toolchain import cpu_description

from .helpers import assert_configs_match

needs_bf16_dot = pytest.mark.skipif(not has_bf16_dot(cpu_description()),
                                    reason="this CPU has no AVX512_BF16 (the dot core is not offered here)")

CASES: list[tuple[str, tuple[int, ...], tuple[int, ...], dict[str, Any]]] = [
    ("odd_3x3", (2, 5, 13, 11), (7, 5, 3, 3), {"padding": 1}),  # CRS 45: an odd reduction
    ("stem_7x7_s2", (1, 3, 29, 27), (10, 3, 7, 7), {"stride": 2, "padding": 3}),
    ("several_k_slices", (1, 45, 10, 9), (21, 45, 3, 3), {"padding": 1}),
    ("grouped_asym_pad", (2, 12, 11, 9), (18, 4, 3, 3), {"padding": (1, 2), "groups": 3}),
    ("1x1_stride2", (2, 9, 11, 13), (11, 9, 1, 1), {"stride": 2}),
    ("3x3_s2_64", (1, 64, 14, 14), (64, 64, 3, 3), {"stride": 2, "padding": 1}),
]


def _kernel(fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...]) -> Any:
    from tilewright.frontend.api import tunable_kernels

    saved = tilewright.config.target
    tilewright.config.target = "cpu"
    try:
        kernels = tunable_kernels(fn, inputs)
    finally:
        tilewright.config.target = saved
        torch._dynamo.reset()
    return next(k for k in kernels if k.problem.kind == "conv")


@needs_bf16_dot
@pytest.mark.parametrize("name,xs,ws,kw", CASES, ids=[c[0] for c in CASES])
def test_dot_core_matches_float64_for_sampled_configs(name: str, xs: tuple[int, ...], ws: tuple[int, ...],
                                                      kw: dict[str, Any]) -> None:
    torch.manual_seed(len(name))
    x, w, b = torch.randn(*xs).bfloat16(), torch.randn(*ws).bfloat16(), torch.randn(ws[0]).bfloat16()
    fn = lambda x, w, b: F.silu(F.conv2d(x, w, b, **kw))  # noqa: E731
    kernel = _kernel(fn, (x, w, b))
    space = kernel.space
    assert space.params["dot"] == [False, True]
    assert space.default_config()["dot"] is dot_pays(cpu_description())
    tensors = kernel.make_inputs("cpu")
    want = fn(*[t.double() for t in tensors[:3]])
    crs = ws[1] * ws[2] * ws[3]
    dots = [c for c in space.enumerate() if c["dot"] and not c["extern"]]
    small_kc = [c for c in dots if c["KC"] < crs][:2]  # several slices of the reduction: pairs never straddle two
    task = [c for c in dots if c["wpack"] == "task"][:1]
    sample = random.Random(0).sample(dots, min(6, len(dots))) + small_kc + task + [dict(space.default_config(), dot=True)]
    scale = want.abs().max().item()
    # the output is rounded to bfloat16 (8 bits): the float accumulation must not add to that
    assert_configs_match(kernel, sample, tensors, want, rtol=1e-2, atol=1e-2 * scale)


def test_pair_packed_weight_layout() -> None:
    torch.manual_seed(3)
    groups, kg, cg, mr = 2, 7, 3, 4  # CRS 27 (odd), K/G 7 (padded to 8)
    w = torch.randn(groups * kg, cg, 3, 3).bfloat16()
    packed = pack_weight_pairs(w, groups, mr)
    assert packed.shape == (groups, 2, 14, mr) and packed.dtype == torch.int32
    bits = w.view(torch.int16).to(torch.int64) & 0xFFFF
    for g, panel, q, i in [(0, 0, 0, 0), (1, 1, 13, 2), (0, 1, 5, 3), (1, 1, 6, 3)]:
        row = g * kg + panel * mr + i
        word = int(packed[g, panel, q, i]) & 0xFFFFFFFF
        if panel * mr + i >= kg:
            assert word == 0
            continue
        flat = bits[row].reshape(-1)
        lo, hi = int(flat[2 * q]), int(flat[2 * q + 1]) if 2 * q + 1 < flat.numel() else 0
        assert word == lo | (hi << 16), (g, panel, q, i)


def test_dot_is_offered_only_for_bfloat16_gemm_convolutions() -> None:
    desc = cpu_description()
    assert conv_space("gemm", 64, 3136, 576, 1, torch.float32, torch.float32, desc, True).params["dot"] == [False]
    assert conv_space("depthwise", 1, 3136, 9, 64, torch.float32, torch.bfloat16, desc, True).params["dot"] == [False]
    no_bf16 = dict(desc, isa=[f for f in desc.get("isa", []) if f != "avx512_bf16"])
    assert conv_space("gemm", 64, 3136, 576, 1, torch.float32, torch.bfloat16, no_bf16, True).params["dot"] == [False]
    if has_bf16_dot(desc):
        space = conv_space("gemm", 64, 3136, 147, 1, torch.float32, torch.bfloat16, desc, True)
        assert space.params["dot"] == [False, True]
        # pairs never straddle two slices of the reduction: every KC is even, or covers it
        assert all(kc % 2 == 0 or kc >= 147 for kc in space.params["KC"]), space.params["KC"]
        with pytest.raises(InfeasibleConfig, match="wpack"):
            space.validate({**space.default_config(), "dot": True, "wpack": "strided"})
        space.validate({**space.default_config(), "dot": True, "KC": 147})  # an odd KC covering the reduction


@needs_bf16_dot
def test_race_times_both_cores_and_extern() -> None:
    torch.manual_seed(5)
    x, w = torch.randn(1, 16, 12, 12).bfloat16(), torch.randn(24, 16, 3, 3).bfloat16()
    kernel = _kernel(lambda x, w: torch.relu(F.conv2d(x, w, padding=1)), (x, w))
    candidates = kernel.race_candidates()
    assert [(c["dot"], c["extern"]) for c in candidates] == [(dot_pays(cpu_description()), False),
                                                            (not dot_pays(cpu_description()), False),
                                                            (dot_pays(cpu_description()), True)]
    assert all(kernel.space.is_feasible(c) for c in candidates)
