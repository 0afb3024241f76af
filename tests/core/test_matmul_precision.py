"""float32 matmuls follow torch's precision flags; cuBLAS is a schedule candidate (issue #16).

The Triton matmul's ``tl.dot`` input precision is a schedule parameter whose choices come from
torch's flags (TF32 allowed: ``tf32``; torch's default ``highest``: ``ieee`` or ``tf32x3``); the
policy is part of the kernel's source, problem key and schedule space, so nothing chosen or
compiled under one precision serves the other. ``extern`` runs torch.mm/bmm and then the
generated epilogue; the roofline scores each precision at its own peak and extern as cuBLAS.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright.autotune.schema import TuningKey, space_version
from tilewright.costmodel.devices import DEVICE_SPECS
from tilewright.costmodel.roofline import RooflineModel
from tilewright.frontend.api import tunable_kernels
from tilewright.runtime.graph import verify_tolerance
from tilewright.schedule.device import device_info
from tilewright.schedule.precision import fp32_matmul_policy, precision_choices
from tilewright.schedule.problem import KernelProblem
from tilewright.schedule.space import ScheduleSpace
from tilewright.targets.triton import target as triton_target
from tilewright.targets.triton.matmul import MatmulKernel
from tilewright.targets.triton.spaces import matmul_space

H100 = {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sm_count": 132, "is_gpu": True}


@pytest.fixture(autouse=True)
def _triton_target(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tilewright.config, "target", "triton")


@pytest.fixture
def restore_flags() -> Iterator[None]:
    """Leave torch's float32 matmul flags as they were (legacy API only: mixing raises)."""
    allow, precision = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cuda.matmul.allow_tf32 = allow


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.gelu(x @ w.t() + b) * 0.5


def _matmul_kernel(m: int = 37, k: int = 45, n: int = 29, dtype: torch.dtype = torch.float32) -> MatmulKernel:
    x, w, b = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(n, dtype=dtype)
    kernels = [k_ for k_ in tunable_kernels(_linear, (x, w, b)) if isinstance(k_, MatmulKernel)]
    assert len(kernels) == 1
    return kernels[0]


def test_precision_follows_torch_flags(restore_flags: None) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    assert fp32_matmul_policy() == "ieee"
    ieee = _matmul_kernel()
    assert ieee.space.params["PRECISION"] == ["ieee", "tf32x3"] and ieee.space.default["PRECISION"] == "ieee"
    assert ieee.problem.meta["precision"] == "ieee" and "policy: ieee" in ieee.spec.source

    torch.set_float32_matmul_precision("high")
    assert fp32_matmul_policy() == "tf32"
    tf32 = _matmul_kernel()
    assert tf32.space.params["PRECISION"] == ["tf32"] and tf32.problem.meta["precision"] == "tf32"

    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = True
    assert fp32_matmul_policy() == "tf32"
    half = _matmul_kernel(dtype=torch.bfloat16)
    assert "PRECISION" not in half.space.params and "precision" not in half.problem.meta


def test_tf32x3_can_be_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TILEWRIGHT_TF32X3", "0")
    assert precision_choices("ieee") == ["ieee"]
    assert precision_choices("tf32") == ["tf32"]
    with pytest.raises(ValueError, match="unknown float32 matmul policy"):
        precision_choices("fp64")


def test_new_precision_api_and_mixed_flags_are_read() -> None:
    """torch >= 2.9's fp32_precision wins; a mix of both APIs (whose getters raise) reads safely."""
    code = """
import json, torch
from tilewright.schedule.precision import fp32_matmul_policy
out = [fp32_matmul_policy()]
m = torch.backends.cuda.matmul
if hasattr(m, "fp32_precision"):
    m.fp32_precision = "tf32"; out.append(fp32_matmul_policy())
    m.fp32_precision = "ieee"; out.append(fp32_matmul_policy())
    m.allow_tf32 = True; out.append(fp32_matmul_policy())
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TILEWRIGHT_INTERPRET")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got[0] == "ieee"
    if len(got) > 1:
        assert got[1:] == ["tf32", "ieee", "tf32"]


def test_a_flag_change_gives_other_fingerprints_and_keys(restore_flags: None) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    ieee = _matmul_kernel()
    torch.backends.cuda.matmul.allow_tf32 = True
    tf32 = _matmul_kernel()
    assert ieee.problem.fingerprint != tf32.problem.fingerprint
    assert ieee.problem.key() != tf32.problem.key()
    assert space_version(ieee.space) != space_version(tf32.space)
    info = device_info("cpu")
    assert TuningKey.make(ieee.problem, ieee.space, info) != TuningKey.make(tf32.problem, tf32.space, info)
    assert ieee.spec.source != tf32.spec.source  # the compiled-kernel cache is keyed by source


def test_a_flag_change_recompiles_the_graph(restore_flags: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from tilewright.targets.triton import matmul as mm

    built: list[str] = []
    build = mm.MatmulKernelBuilder.build

    def recording(self: mm.MatmulKernelBuilder) -> object:
        source = build(self)
        built.append(source.meta["precision"])
        return source

    monkeypatch.setattr(mm.MatmulKernelBuilder, "build", recording)
    torch.backends.cuda.matmul.allow_tf32 = False
    fn = torch.compile(lambda x, w: torch.relu(x @ w), backend="tilewright")
    x, w = torch.randn(19, 23), torch.randn(23, 17)
    torch.testing.assert_close(fn(x, w), torch.relu(x @ w))
    assert set(built) == {"ieee"}
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.testing.assert_close(fn(x, w), torch.relu(x @ w))
    assert built[-1] == "tf32", "a TF32 flag change must not reuse the IEEE graph"


@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32", "extern"])
def test_interpreter_computes_each_variant_at_odd_sizes(precision: str, restore_flags: None) -> None:
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    kernel = _matmul_kernel(37, 45, 29)
    if precision == "extern":
        config = dict(kernel.space.default_config(), extern=True)
    else:
        config = dict(kernel.space.default_config(), PRECISION=precision)
    assert kernel.space.is_feasible(config)
    torch.manual_seed(0)
    tensors = kernel.make_inputs("cpu")
    kernel.runner(config)(tensors)
    x, wt, b = tensors[0].double(), tensors[1].double(), tensors[2].double()
    torch.testing.assert_close(tensors[-1].double(), _linear(x, wt.t() if wt.shape == (45, 29) else wt, b),
                               rtol=1e-4, atol=1e-4)


def test_extern_bmm_without_epilogue_writes_the_output_directly() -> None:
    a, b = torch.randn(3, 21, 35), torch.randn(3, 35, 19).transpose(1, 2).contiguous().transpose(1, 2)
    kernels = [k for k in tunable_kernels(torch.bmm, (a, b)) if isinstance(k, MatmulKernel)]
    (kernel,) = kernels
    assert kernel.spec.meta["extern_direct"] == 1 and kernel.spec.meta["batched"] == 1
    tensors = kernel.make_inputs("cpu")
    kernel.runner(dict(kernel.space.default_config(), extern=True))(tensors)
    torch.testing.assert_close(tensors[-1], torch.bmm(tensors[0], tensors[1]))
    assert kernel.describe_extra().get("precision") in ("ieee", "tf32x3", "tf32")


def test_extern_bf16_runs_its_epilogue() -> None:
    kernel = _matmul_kernel(33, 40, 24, torch.bfloat16)
    assert kernel.spec.meta["extern_direct"] == 0
    tensors = kernel.make_inputs("cpu")
    kernel.runner(dict(kernel.space.default_config(), extern=True))(tensors)
    x, wt, b = tensors[0], tensors[1], tensors[2]
    expected = _linear(x.float(), (wt.t() if wt.shape == (40, 24) else wt).float(), b.float())
    torch.testing.assert_close(tensors[-1].float(), expected, rtol=3e-2, atol=3e-2)
    kernel.config = dict(kernel.space.default_config(), extern=True)
    assert kernel.describe_extra()["gemm"] == "extern torch.mm"


def _problem(size: int, policy: str, epilogue: bool = True) -> tuple[KernelProblem, ScheduleSpace]:
    """A float32 [size]^3 GEMM problem as the matmul builder states it (building one would run it)."""
    meta = {"precision": policy, "extern_direct": int(not epilogue), "epilogue_ops": ["aten.add"] * epilogue}
    problem = KernelProblem("matmul", f"gemm-{policy}", {"B": 1, "M": size, "N": size, "K": size}, "float32",
                            (), 2.0 * size ** 3, 4.0 * (3 * size * size + size), meta)
    return problem, matmul_space(size, size, size, 4, precision_choices(policy))


def _best(problem: KernelProblem, space: ScheduleSpace, **fixed: object) -> float:
    configs = [c for c in space.enumerate() if all(c[k] == v for k, v in fixed.items())]
    return min(RooflineModel().predict(problem, configs, H100))


def test_cost_model_scores_each_precision_at_its_own_peak() -> None:
    spec = DEVICE_SPECS["H100-SXM"]
    assert spec.peak_flops("float32", True, "ieee") == spec.fp32_flops
    assert spec.peak_flops("float32", True, "tf32") == spec.tf32_tc_flops
    assert spec.peak_flops("float32", True, "tf32x3") == pytest.approx(spec.tf32_tc_flops / 3)

    problem, space = _problem(4096, "ieee")
    ieee = _best(problem, space, extern=False, PRECISION="ieee")
    tf32x3 = _best(problem, space, extern=False, PRECISION="tf32x3")
    extern = _best(problem, space, extern=True)
    # compute-bound float32 under "highest": Triton's FMA dot < cuBLAS SGEMM < three TF32 products
    assert tf32x3 < extern < ieee
    assert RooflineModel().predict(problem, [dict(space.default_config(), extern=True)],
                                   device_info("cpu")) == [float("inf")], "no cuBLAS in the interpreter"

    problem32, space32 = _problem(4096, "tf32")
    assert _best(problem32, space32, extern=False) < tf32x3
    assert _best(problem32, space32, extern=True) < extern, "cuBLAS follows the flags too"


def test_cost_model_charges_the_extern_epilogue_pass() -> None:
    """extern with an epilogue costs a second launch and a pass over the product; without one,
    torch.mm writes the output itself."""
    problem, space = _problem(512, "tf32")
    direct, direct_space = _problem(512, "tf32", epilogue=False)
    with_pass, without = _best(problem, space, extern=True), _best(direct, direct_space, extern=True)
    assert with_pass - without >= 3e-6  # at least the second launch


def test_race_candidates_only_on_a_gpu(monkeypatch: pytest.MonkeyPatch, restore_flags: None) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    kernel = _matmul_kernel()
    target = triton_target.TritonTarget()
    assert target.race_candidates(kernel) == [], "interpreter timings never choose a GEMM"
    monkeypatch.setattr(triton_target, "on_gpu", lambda k: True)
    candidates = target.race_candidates(kernel)
    assert [c["extern"] for c in candidates] == [False, False, True]
    assert {c["PRECISION"] for c in candidates[:2]} == {"ieee", "tf32x3"}
    assert all(kernel.space.is_feasible(c) for c in candidates)
    kernel.config_source = "tuned"
    assert target.race_candidates(kernel) == [], "a tuned schedule is not raced"


def test_verify_tolerance_follows_the_chosen_precision(restore_flags: None) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    kernel = _matmul_kernel()
    on_cuda = type("T", (), {"dtype": torch.float32, "device": torch.device("cuda")})()
    kernel.config = dict(kernel.space.default_config(), PRECISION="ieee")
    exact = verify_tolerance(kernel, on_cuda)
    kernel.config = dict(kernel.space.default_config(), PRECISION="tf32x3")
    assert verify_tolerance(kernel, on_cuda) == exact, "tf32x3 keeps float32 tolerances"
    torch.backends.cuda.matmul.allow_tf32 = True
    tf32 = _matmul_kernel()
    tf32.config = dict(tf32.space.default_config())
    assert verify_tolerance(tf32, on_cuda)[0] > exact[0]
