"""The bfloat16 dot core (AVX512_BF16 ``vdpbf16ps``): bfloat16 GEMMs packed as pairs along K."""
from __future__ import annotations

import random
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright.schedule.space import InfeasibleConfig
from tilewright.targets.cpu.gemm_dot import dot_pays
from tilewright.targets.cpu.gemm_micro import gemm_space, has_bf16_dot
from tilewright.targets.cpu.toolchain import cpu_description

from .helpers import assert_configs_match

needs_bf16_dot = pytest.mark.skipif(not has_bf16_dot(cpu_description()),
                                    reason="this CPU has no AVX512_BF16 (the dot core is not offered here)")


def _kernel(m: int, k: int, n: int, batched: bool = False) -> Any:
    from tilewright.frontend.api import tunable_kernels

    saved = tilewright.config.target
    tilewright.config.target = "cpu"
    try:
        torch.manual_seed(m + k + n)
        if batched:
            a, b = torch.randn(3, m, k).bfloat16(), torch.randn(3, k, n).bfloat16()
            kernels = tunable_kernels(lambda a, b: torch.relu(torch.bmm(a, b)), (a, b))
        else:
            x, w, bias = torch.randn(m, k).bfloat16(), torch.randn(n, k).bfloat16(), torch.randn(n).bfloat16()
            kernels = tunable_kernels(lambda x, w, b: F.gelu(F.linear(x, w, b)), (x, w, bias))
    finally:
        tilewright.config.target = saved
        torch._dynamo.reset()
    return next(k for k in kernels if k.problem.kind == "matmul")


@needs_bf16_dot
@pytest.mark.parametrize("m,k,n,batched", [(37, 131, 45, False), (5, 1037, 70, False), (29, 77, 53, True)])
def test_dot_core_matches_float64_for_sampled_configs(m: int, k: int, n: int, batched: bool) -> None:
    kernel = _kernel(m, k, n, batched)
    space = kernel.space
    assert space.params["dot"] == [False, True]
    assert space.default_config()["dot"] is dot_pays(cpu_description())  # every size, where the probe says it pays
    tensors = kernel.make_inputs("cpu")
    if batched:
        a, b = tensors[:2]
        want = torch.relu(torch.bmm(a.double(), b.double()))
    else:
        x, w, bias = tensors[:3]
        want = F.gelu(x.double() @ (w.double() if w.shape == (k, n) else w.double().T) + bias.double())
    dots = [c for c in space.enumerate() if c["dot"] and not c["extern"]]
    small_kc = [c for c in dots if c["KC"] < k][:2]  # several K slices: pairs never straddle two
    sample = random.Random(0).sample(dots, min(6, len(dots))) + small_kc + [dict(space.default_config(), dot=True)]
    scale = want.abs().max().item()
    # the output is rounded to bfloat16 (8 bits): the float accumulation must not add to that
    assert_configs_match(kernel, sample, tensors, want, rtol=1e-2, atol=1e-2 * scale)
    plain = space.default_config()  # the FMA core gives the same answer
    tensors[-1].fill_(float("nan"))
    kernel.runner(plain)(tensors)
    torch.testing.assert_close(tensors[-1].double(), want, rtol=1e-2, atol=1e-2 * scale)


def test_dot_is_offered_only_for_bfloat16_on_cpus_that_have_it() -> None:
    desc = cpu_description()
    f32 = gemm_space(64, 64, 64, 1, torch.float32, desc)
    assert f32.params["dot"] == [False]
    no_bf16 = dict(desc, isa=[f for f in desc.get("isa", []) if f != "avx512_bf16"])
    assert gemm_space(64, 64, 64, 1, torch.float32, no_bf16, torch.bfloat16).params["dot"] == [False]
    if has_bf16_dot(desc):
        bf16 = gemm_space(64, 64, 300, 1, torch.float32, desc, torch.bfloat16)
        assert bf16.params["dot"] == [False, True]
        # pairs along K never straddle two K slices: every KC is even, or covers K (one slice)
        assert all(kc % 2 == 0 or kc >= 300 for kc in bf16.params["KC"]), bf16.params["KC"]
        with pytest.raises(InfeasibleConfig, match="pack"):
            bf16.validate({**bf16.default_config(), "pack": False})


def test_dot_core_is_the_default_at_every_size_on_hosts_where_it_pays() -> None:
    desc = cpu_description()
    for m, n, k in ((256, 1536, 384), (1, 768, 768), (1024, 1024, 1024), (37, 45, 131)):
        space = gemm_space(m, n, k, 1, torch.float32, desc, torch.bfloat16)
        assert space.default_config()["dot"] is (has_bf16_dot(desc) and dot_pays(desc))
    assert dot_pays({**desc, "model": "another CPU"}) is False


def test_race_offers_both_bf16_cores_and_extern() -> None:
    """A bfloat16 GEMM's compile-time race times the default core, the other core (with its own
    blocks: pairs keep 2 bytes per value of K, so the dot core's KC is larger) and extern."""
    desc = cpu_description()
    kernel = _kernel(256, 1024, 384)
    candidates = kernel.race_candidates()
    default = dict(kernel.space.default_config(), extern=False)
    assert candidates[0] == default and candidates[-1] == dict(default, extern=True)
    assert all(kernel.space.is_feasible(c) for c in candidates)
    if not has_bf16_dot(desc):
        assert len(candidates) == 2
        return
    assert len(candidates) == 3
    other = candidates[1]
    assert other["dot"] is not default["dot"] and not other["extern"]
    dot_config = other if other["dot"] else default
    fma_config = default if other["dot"] else other
    assert dot_config["KC"] > fma_config["KC"] and dot_config["KC"] % 2 == 0
    f32 = _kernel_f32(64, 96, 80)
    assert [c["extern"] for c in f32.race_candidates()] == [False, True]  # float32: no second core


def _kernel_f32(m: int, k: int, n: int) -> Any:
    from tilewright.frontend.api import tunable_kernels

    saved = tilewright.config.target
    tilewright.config.target = "cpu"
    try:
        kernels = tunable_kernels(lambda x, w: F.linear(x, w), (torch.randn(m, k), torch.randn(n, k)))
    finally:
        tilewright.config.target = saved
        torch._dynamo.reset()
    return next(k for k in kernels if k.problem.kind == "matmul")


@needs_bf16_dot
def test_every_race_candidate_matches_float64() -> None:
    """Whichever candidate the race picks computes the same GEMM (odd sizes, K split into slices)."""
    kernel = _kernel(53, 611, 77)
    tensors = kernel.make_inputs("cpu")
    x, w, bias = tensors[:3]
    want = F.gelu(x.double() @ (w.double() if w.shape == (611, 77) else w.double().T) + bias.double())
    scale = want.abs().max().item()
    assert_configs_match(kernel, kernel.race_candidates(), tensors, want, rtol=1e-2, atol=1e-2 * scale)
