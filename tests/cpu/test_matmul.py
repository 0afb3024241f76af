"""The CPU target's matmul kernels (mm / bmm with fused epilogues) against float64, in strict mode."""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright.report import collect
from tilewright.schedule.space import InfeasibleConfig

from .helpers import assert_configs_match, run_compiled

pytestmark = pytest.mark.usefixtures("cpu_target")


def _f64(fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return fn(*[i.double() for i in inputs])


def _matmul_kernels(report: Any) -> list[dict[str, Any]]:
    assert all(k["status"] == "ran" for k in report.kernels), report.kernels
    assert all(g.mode == "cpu" for g in report.graphs)
    found = [k for k in report.kernels if k["kind"] == "matmul"]
    assert found, f"no matmul kernel ran: {[k['kind'] for k in report.kernels]}, fallbacks {report.fallbacks}"
    return found


def _close_to_f64(got: torch.Tensor, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...], k: int) -> None:
    want = _f64(fn, inputs)
    eager_err = (fn(*inputs).double() - want).abs().max().item()
    err = (got.double() - want).abs().max().item()
    assert err <= 4 * eager_err + 1e-6 * k, (err, eager_err)


CASES: list[tuple[str, Callable[..., Any], Callable[[], tuple[torch.Tensor, ...]]]] = [
    ("odd", lambda a, b: a @ b, lambda: (torch.randn(37, 29), torch.randn(29, 53))),
    ("row_vector", lambda a, b: a @ b, lambda: (torch.randn(1, 70), torch.randn(70, 45))),
    ("column", lambda a, b: a @ b, lambda: (torch.randn(33, 17), torch.randn(17, 1))),
    ("k1", lambda a, b: a @ b, lambda: (torch.randn(19, 1), torch.randn(1, 23))),
    ("transposed_a", lambda a, b: a.t() @ b, lambda: (torch.randn(29, 37), torch.randn(29, 53))),
    ("transposed_b", lambda a, b: a @ b.t(), lambda: (torch.randn(37, 29), torch.randn(53, 29))),
    ("strided", lambda a, b: a[:, ::2] @ b[1:, :], lambda: (torch.randn(41, 60), torch.randn(31, 67))),
    ("multi_block", lambda a, b: a @ b, lambda: (torch.randn(301, 530), torch.randn(530, 291))),
    ("bmm", lambda a, b: torch.bmm(a, b), lambda: (torch.randn(3, 21, 35), torch.randn(3, 35, 18))),
    ("bmm_broadcast_b", lambda a, b: torch.bmm(a, b.expand(4, -1, -1)),
     lambda: (torch.randn(4, 13, 22), torch.randn(1, 22, 39))),
    ("bmm_transposed", lambda a, b: a.transpose(1, 2) @ b,
     lambda: (torch.randn(2, 27, 19), torch.randn(2, 27, 33))),
]


@pytest.mark.parametrize("name,fn,make", CASES, ids=[c[0] for c in CASES])
def test_matmul_matches_float64(name: str, fn: Callable[..., Any], make: Callable[[], tuple[torch.Tensor, ...]]) -> None:
    torch.manual_seed(0)
    inputs = make()
    out, report = run_compiled(fn, *inputs)
    _close_to_f64(out, fn, inputs, inputs[0].shape[-1])
    _matmul_kernels(report)


EPILOGUES: list[tuple[str, Callable[..., Any], Callable[[], tuple[torch.Tensor, ...]]]] = [
    ("linear_bias_gelu", lambda x, w, b: F.gelu(F.linear(x, w, b)),
     lambda: (torch.randn(2, 19, 45), torch.randn(57, 45), torch.randn(57))),
    ("residual", lambda x, w, r: torch.relu(x @ w) * 0.5 + r,
     lambda: (torch.randn(23, 40), torch.randn(40, 31), torch.randn(23, 31))),
    ("two_outputs", lambda x, w, b: (x @ w, torch.tanh(x @ w + b)),
     lambda: (torch.randn(26, 33), torch.randn(33, 47), torch.randn(47))),
    ("bmm_scale_mask", lambda q, k, m: (q @ k.transpose(-1, -2)) * 0.125 + m,
     lambda: (torch.randn(2, 3, 17, 16), torch.randn(2, 3, 17, 16), torch.randn(17, 17))),
]


@pytest.mark.parametrize("name,fn,make", EPILOGUES, ids=[c[0] for c in EPILOGUES])
def test_fused_epilogue(name: str, fn: Callable[..., Any], make: Callable[[], tuple[torch.Tensor, ...]]) -> None:
    torch.manual_seed(1)
    inputs = make()
    out, report = run_compiled(fn, *inputs)
    outs = out if isinstance(out, tuple) else (out,)
    for i, got in enumerate(outs):
        _close_to_f64(got, lambda *a, i=i: (fn(*a) if isinstance(out, tuple) else (fn(*a),))[i], inputs, 64)
    kernels = _matmul_kernels(report)
    assert any(k["epilogue"] for k in kernels), "the pointwise ops after the matmul run in its kernel"
    assert not any(k["kind"] == "pointwise" for k in report.kernels), report.kernels


def test_bfloat16_linear() -> None:
    torch.manual_seed(2)
    x, w, b = torch.randn(37, 70), torch.randn(45, 70), torch.randn(45)
    fn = lambda x, w, b: F.silu(F.linear(x, w, b))
    inputs = tuple(t.bfloat16() for t in (x, w, b))
    out, report = run_compiled(fn, *inputs)
    assert out.dtype == torch.bfloat16
    want = _f64(fn, inputs)
    eager_err = (fn(*inputs).double() - want).abs().max().item()
    assert (out.double() - want).abs().max().item() <= 2 * eager_err + 1e-2
    _matmul_kernels(report)


def test_float64_matmul() -> None:
    torch.manual_seed(3)
    a, b = torch.randn(23, 41, dtype=torch.float64), torch.randn(41, 35, dtype=torch.float64)
    out, report = run_compiled(lambda a, b: torch.sigmoid(a @ b), a, b)
    torch.testing.assert_close(out, torch.sigmoid(a @ b), rtol=1e-12, atol=1e-12)
    _matmul_kernels(report)


@pytest.fixture(scope="module")
def linear_kernel() -> Any:
    """One fused linear+bias+GELU kernel (built once) to run configs of its space on."""
    from tilewright.frontend.api import tunable_kernels

    saved = tilewright.config.target
    tilewright.config.target = "cpu"
    try:
        torch.manual_seed(4)
        x, w, b = torch.randn(77, 130), torch.randn(130, 83), torch.randn(83)
        kernels = tunable_kernels(lambda x, w, b: F.gelu(x @ w + b), (x, w, b))
    finally:
        tilewright.config.target = saved
        torch._dynamo.reset()
    return next(k for k in kernels if k.problem.kind == "matmul")


def test_every_sampled_config_gives_the_same_result(linear_kernel: Any) -> None:
    kernel = linear_kernel
    assert kernel.problem.flops >= 2 * 77 * 83 * 130 and kernel.problem.dims == {"B": 1, "M": 77, "N": 83, "K": 130}
    torch.manual_seed(5)
    tensors = kernel.make_inputs("cpu")
    x, w, b = tensors[:3]
    want = F.gelu(x.double() @ w.double() + b.double())
    configs = list(kernel.space.enumerate())
    sample = random.Random(0).sample(configs, 10) + [kernel.space.default_config()]
    sample += [c for c in configs if c["extern"]] + [c for c in configs if not c["pack"]][:1]
    sample += [c for c in configs if c["pack_b"] != sample[-3]["pack_b"] and c["threads"] > 1][:2]
    assert_configs_match(kernel, sample, tensors, want, rtol=1e-4, atol=1e-4)


def test_schedule_space_defaults_and_constraints(linear_kernel: Any) -> None:
    from tilewright.targets.cpu.gemm_micro import gemm_space, micro_shapes, vector_isa
    from tilewright.targets.cpu.toolchain import cpu_description

    space = linear_kernel.space
    default = space.default_config()
    assert space.is_feasible(default) and not default["extern"], "the generated kernel is the default"
    shapes = micro_shapes(vector_isa(cpu_description()), torch.float32)
    assert (default["MR"], default["NR"]) in shapes
    assert sum(1 for c in space.enumerate() if c["extern"]) == 1, "extern is one candidate"
    bad = [{**default, "MR": mr, "NR": nr} for mr in space.params["MR"] for nr in space.params["NR"]
           if (mr, nr) not in shapes][:1]
    bad += [{**default, "MC": mc} for mc in space.params["MC"] if mc % default["MR"]][:1]
    bad += [{**default, "extern": True, "KC": next(kc for kc in space.params["KC"] if kc != default["KC"])}]
    bad += [{**default, "threads": 3 * max(space.params["threads"])}]
    for config in bad:
        with pytest.raises(InfeasibleConfig):
            space.validate(config)
    bf16 = gemm_space(64, 64, 64, 1, torch.float32, cpu_description(), torch.bfloat16)
    with pytest.raises(InfeasibleConfig, match="pack"):
        bf16.validate({**bf16.default_config(), "pack": False})
    for isa in ("avx512", "avx2", "scalar"):
        for dtype in (torch.float32, torch.float64):
            assert micro_shapes(isa, dtype), (isa, dtype)
    big = gemm_space(2048, 2048, 2048, 1, torch.float32, cpu_description()).default_config()
    assert big["threads"] == max(space.params["threads"]) and big["KC"] < 2048 and big["MC"] < 2048


def test_mlp_runs_its_linears_as_matmul_kernels() -> None:
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.GELU(), torch.nn.Linear(96, 24), torch.nn.Tanh())
    x = torch.randn(5, 11, 48)
    with torch.no_grad():
        out, report = run_compiled(model, x)
        want = model.double()(x.double())
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-5)
    assert len(_matmul_kernels(report)) == 2
    assert all(k["kind"] == "matmul" for k in report.kernels), report.kernels


def test_tiny_gpt2_runs_its_matmuls_as_kernels() -> None:
    from ..models.model_zoo import MODELS, main_output

    torch.manual_seed(0)
    model, inputs, _ = MODELS["gpt2"]()
    model.eval()
    with torch.no_grad(), collect() as report:
        got = main_output(torch.compile(model, backend="tilewright")(*inputs)).double()
    torch._dynamo.reset()
    with torch.no_grad():
        eager = main_output(model(*inputs)).double()
        import copy

        ref = copy.deepcopy(model).double()
        want = main_output(ref(*[i.double() if i.is_floating_point() else i for i in inputs]))
    assert (got - want).abs().max().item() <= 10 * (eager - want).abs().max().item() + 1e-5
    kernels = _matmul_kernels(report)
    assert len(kernels) >= 4, [k["ops"] for k in kernels]
    assert not any("aten.mm" in f["op"] or "aten.addmm" in f["op"] for f in report.fallbacks), report.fallbacks
