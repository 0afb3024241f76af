"""Generated and hand-written kernels compile for Hopper (sm_90) without a GPU, and fit it.

No GPU is needed: Triton's compiler runs down to a cubin for the target. This catches code the
interpreter accepts but the compiler rejects, and (``test_chosen_configs_fit_hopper``) checks
the configs that would actually run on an H100 or H200 -- the cost model's pick for that device
(and, for GEMMs, the candidates raced against cuBLAS), the attention templates' defaults for the
device's shared memory, with pointers and strides specialised as divisible by 16 as on a real
launch -- against the device: shared memory (the compiler's ``metadata.shared``) within the
per-block limit of the device table, and no register spills (``ptxas -v`` on the PTX: Triton
reports ``n_spills`` only once a GPU has loaded the binary).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright.autotune.tuner import cost_model_pick
from tilewright.costmodel.devices import device_spec
from tilewright.frontend.api import tunable_kernels
from tilewright.targets.triton import target as triton_target
from tilewright.targets.triton.conv.group import ConvGroupKernel
from tilewright.targets.triton.cross_compile import (CompileJob, LaunchRecorder, compile_in_subprocess, job_for,
                                                     jobs_for)
from tilewright.targets.triton.kernel import GeneratedKernel
from tilewright.targets.triton.matmul import MatmulKernel
from tilewright.targets.triton.scatter import ScatterKernel

from ..models.model_zoo import MODELS, main_output

pytest.importorskip("triton.backends.nvidia")

#: what :func:`tilewright.schedule.device.device_info` reports on each card
HOPPER = {
    "H100": {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sm_count": 132, "is_gpu": True,
             "shared_memory_per_block": 232448, "l2_cache_bytes": 52428800},
    "H200": {"name": "NVIDIA H200", "capability": "9.0", "sm_count": 132, "is_gpu": True,
             "shared_memory_per_block": 232448, "l2_cache_bytes": 62914560},
}


def _jobs(kernels: list) -> list[CompileJob]:
    jobs: dict[str, CompileJob] = {}
    for k in kernels:
        if isinstance(k, ScatterKernel):
            for job in jobs_for(k):
                jobs.setdefault(job.source.replace(k.name, "K") + job.fn_name[-8:] + str(job.pointer_types), job)
            continue
        if not isinstance(k, GeneratedKernel):
            continue
        configs = [k.config]
        if k.spec.kind == "reduction":
            rnumel = int(k.spec.meta["rnumel"])
            looped = next((c for c in k.space.enumerate() if int(c["RBLOCK"]) < rnumel), None)
            persistent = next((c for c in k.space.enumerate() if int(c["RBLOCK"]) >= rnumel), None)
            configs = [c for c in (looped, persistent) if c is not None]
        for c in configs:
            job = job_for(k, c)
            body = job.source.replace(k.name, "K")  # same structure under another name: compile once
            jobs.setdefault(body + job.fn_name[-8:] + str(sorted(job.constexprs.items())) + str(job.pointer_types), job)
    return list(jobs.values())


def _check(jobs: list[CompileJob], smem_limit: int = 227 * 1024) -> list[dict[str, Any]]:
    """Compile ``jobs`` for sm_90 (two processes) and check each: compiled, within ``smem_limit``
    bytes of shared memory, no spilled registers."""
    assert jobs
    halves = [jobs[0::2], jobs[1::2]]
    with ThreadPoolExecutor(2) as pool:
        results = [r for part in pool.map(lambda js: compile_in_subprocess(js) if js else [], halves) for r in part]
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed[:3]
    assert all(r["cubin_bytes"] > 0 for r in results)
    assert all(0 < r["registers"] <= 255 for r in results), "ptxas -v must report every kernel"
    too_big = [r for r in results if r["shared"] > smem_limit]
    assert not too_big, f"shared memory over {smem_limit} B: {too_big[:3]}"
    spilled = [r for r in results if r["spill_bytes"] != 0]
    assert not spilled, f"register spills: {spilled[:3]}"
    return results


class _Train(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return main_output(self.model(*inputs))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_model_kernels_compile_for_sm90(name: str) -> None:
    torch.manual_seed(0)
    model, inputs, _ = MODELS[name]()
    model.train()
    kernels = tunable_kernels(_Train(model), inputs)
    assert any(isinstance(k, ScatterKernel) for k in kernels), "the embedding gradient scatter is compiled too"
    _check(_jobs(kernels))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_kernels_compile_for_sm90(dtype: torch.dtype) -> None:
    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        h = F.gelu(x @ w + b)
        return F.layer_norm(h, (h.shape[-1],), g) + torch.softmax(h, -1) + h.sum(0) + (h > 0).long().sum(-1, keepdim=True)

    x, w = torch.randn(33, 40, dtype=dtype), torch.randn(40, 72, dtype=dtype)
    b, g = torch.randn(72, dtype=dtype), torch.randn(72, dtype=dtype)
    kernels = tunable_kernels(fn, (x, w, b, g))
    assert {k.spec.kind for k in kernels} >= {"matmul", "reduction"}
    _check(_jobs(kernels))


def test_dropout_and_scatter_kernels_compile_for_sm90() -> None:
    idx = torch.randint(0, 50, (3, 7))

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 24)

        def forward(self, i: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return (F.dropout(self.emb(i), 0.1, training=True) + x).sum()

    x = torch.randn(3, 7, 24)
    kernels = tunable_kernels(Block().train(), (idx, x))
    sources = "".join(getattr(k, "source", "") or k.spec.source for k in kernels if hasattr(k, "spec"))
    assert "tl.rand(" in sources and any(isinstance(k, ScatterKernel) for k in kernels)
    _check(_jobs(kernels))


# -- the configs that would run on an H100 / H200 ---------------------------------------------

def _block(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    h = F.gelu(x @ w + b)
    return F.layer_norm(h, (h.shape[-1],), g) + torch.softmax(h, -1) + h.sum(0), torch.sigmoid(x) * x


class _Conv(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(32, 64, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


@pytest.fixture(scope="module")
def hopper_kernels() -> Iterator[list[Any]]:
    """The generated kernels of a GEMM block (float32: ieee/tf32x3 candidates; bfloat16) and a conv."""
    saved = tilewright.config.target
    tilewright.config.target = "triton"
    with pytest.MonkeyPatch.context() as patch:
        # only the kernels are wanted, not their results: skip the interpreter's runs
        for cls in (GeneratedKernel, MatmulKernel, ConvGroupKernel):
            patch.setattr(cls, "launch", lambda self, tensors, config=None: None)
        for cls in (GeneratedKernel, MatmulKernel):
            patch.setattr(cls, "tensor_launcher", lambda self: lambda *tensors: None)
        try:
            torch.manual_seed(0)
            kernels: list[Any] = []
            for dtype in (torch.float32, torch.bfloat16):
                x, w = torch.randn(512, 256, dtype=dtype), torch.randn(256, 768, dtype=dtype)
                b, g = torch.randn(768, dtype=dtype), torch.randn(768, dtype=dtype)
                kernels += tunable_kernels(_block, (x, w, b, g))
            image = torch.randn(2, 32, 14, 14, dtype=torch.bfloat16)
            kernels += tunable_kernels(_Conv().to(torch.bfloat16).eval(), (image,))
        finally:
            tilewright.config.target = saved
    yield kernels


def _generated_jobs(kernels: list[Any], info: dict[str, Any],
                    monkeypatch: pytest.MonkeyPatch) -> list[CompileJob]:
    """Each generated kernel under the config the cost model picks for ``info``; GEMMs with every
    candidate the compile-time race would time there."""
    monkeypatch.setattr(triton_target, "on_gpu", lambda kernel: True)
    target = triton_target.TritonTarget()
    jobs: list[CompileJob] = []
    for kernel in kernels:
        if not isinstance(kernel, GeneratedKernel):
            continue
        pick = cost_model_pick(kernel, info)
        assert pick is not None, kernel.name
        configs = [pick]
        if isinstance(kernel, MatmulKernel):
            kernel.config, kernel.config_source = dict(pick), "costmodel"
            configs = target.race_candidates(kernel)
            assert any(c["extern"] for c in configs)
        jobs += [job_for(kernel, c) for c in configs]
    return jobs


def _conv_jobs(kernels: list[Any], info: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[CompileJob]:
    """The conv kernels' launches under the config the cost model picks for ``info`` (recorded)."""
    from tilewright.targets.triton.conv import forward

    recorders: list[LaunchRecorder] = []

    def recording_loader(source: str, name: str, interpret: bool | None = None) -> LaunchRecorder:
        recorders.append(LaunchRecorder(load(source, name), name, source=source))
        return recorders[-1]

    load = forward.load_kernel
    monkeypatch.setattr(forward, "load_kernel", recording_loader)
    monkeypatch.setattr(forward, "interpret_mode", lambda: False)
    monkeypatch.setattr(forward, "_launchers", {})
    convs = [k for k in kernels if isinstance(k, ConvGroupKernel)]
    assert convs
    for kernel in convs:
        pick = cost_model_pick(kernel, info)
        assert pick is not None
        kernel._bound = None
        kernel.launch(kernel.make_inputs("cpu"), pick)
    return [job for r in recorders for job in r.jobs]


#: (dtype, head dim, causal) of the attention launches compiled with the device's defaults
ATTENTION_CASES = ((torch.bfloat16, 128, True), (torch.bfloat16, 64, False), (torch.bfloat16, 256, True),
                   (torch.float32, 64, True), (torch.float32, 128, True))


def _attention_jobs(info: dict[str, Any], cases: tuple[tuple[torch.dtype, int, bool], ...]) -> list[CompileJob]:
    """The attention forward and backward launches with the device's default configs (recorded)."""
    from tilewright.targets.triton.attention import kernels as K
    from tilewright.targets.triton.attention import launch

    names = ("attn_fwd_kernel", "attn_bwd_preprocess_kernel", "attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel")
    smem = int(info["shared_memory_per_block"])
    with pytest.MonkeyPatch.context() as patch:
        recorders = {name: LaunchRecorder(getattr(K, name), name, module=K.__name__, fn_name=name) for name in names}
        for name, recorder in recorders.items():
            patch.setattr(K, name, recorder)
        patch.setattr(launch, "interpret_mode", lambda: False)
        for dtype, d, causal in cases:
            q, k, v = (torch.empty(2, 8, 1024, d, dtype=dtype) for _ in range(3))
            name = str(dtype).split(".")[-1]
            fwd = launch.forward_space(d, name, smem).default_config()
            out, lse = launch.flash_attention_forward(q, k, v, causal=causal, config=fwd)
            bwd = launch.backward_space(d, name, smem).default_config()
            launch.flash_attention_backward(torch.empty_like(out), q, k, v, out, lse, causal=causal, config=bwd)
    jobs = [job for r in recorders.values() for job in r.jobs]
    assert {j.fn_name for j in jobs} == set(names)
    return jobs


def _fp32_dkdv_d128(job: CompileJob) -> bool:
    """The one launch that still spills: IEEE float32 dK/dV at head dim 128 (see the xfail below)."""
    return (job.fn_name == "attn_bwd_dkdv_kernel" and job.constexprs.get("DOT_PREC") == "ieee"
            and int(job.constexprs["BLOCK_D"]) >= 128)


def _distinct(jobs: list[CompileJob]) -> list[CompileJob]:
    seen: dict[str, CompileJob] = {}
    for job in jobs:
        key = repr((job.source.replace(job.name, "K"), job.module, job.fn_name, sorted(job.constexprs.items()),
                    job.pointer_types, job.aligned, job.num_warps, job.num_stages))
        seen.setdefault(key, job)
    return list(seen.values())


def _hopper_jobs(make: Any) -> tuple[list[CompileJob], int]:
    jobs: list[CompileJob] = []
    limits = set()
    for info in HOPPER.values():
        limits.add(device_spec(info).smem_per_block)
        jobs += make(info)
    assert limits == {227 * 1024}, "H100 and H200 share one limit: one compile serves both"
    jobs = _distinct(jobs)
    assert all(job.aligned for job in jobs), "pointers are specialised as a real launch would"
    return jobs, limits.pop()


def test_chosen_configs_fit_hopper(hopper_kernels: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Matmul (every raced candidate), fused pointwise/reduction and conv kernels."""
    jobs, limit = _hopper_jobs(lambda info: _generated_jobs(hopper_kernels, info, monkeypatch)
                               + _conv_jobs(hopper_kernels, info, monkeypatch))
    names = {job.fn_name for job in jobs}
    assert any(n.startswith("tw_mm") for n in names) and any(n.startswith("tw_red") for n in names)
    assert any(n.startswith("tw_pw") for n in names)
    assert sum(1 for job in jobs if job.constexprs.get("EXTERN")) >= 2, "the extern epilogues are compiled too"
    _check(jobs, limit)


def test_attention_defaults_fit_hopper() -> None:
    """Attention forward and backward (bf16 D=64/128/256, float32 D=64/128 with IEEE dots) with
    the device's default configs, recorded from the launchers: no spills, shared memory fits."""
    jobs, limit = _hopper_jobs(lambda info: _attention_jobs(info, ATTENTION_CASES))
    kept = [job for job in jobs if not _fp32_dkdv_d128(job)]
    assert len(kept) == len(jobs) - 1, "exactly one launch is left to the xfail below"
    assert {j.constexprs["BLOCK_D"] for j in kept if j.fn_name == "attn_fwd_kernel"} == {64, 128, 256}
    _check(kept, limit)


@pytest.mark.xfail(strict=True, reason="float32 dK/dV with IEEE dots at head dim 128 spills on sm_90 at every "
                   "tile tried (16x16 on 8 warps: 1012 B; 16x32: 2436 B): Triton's FMA dot holds each operand "
                   "replicated along the 128-wide reduction per thread; TF32 (torch's allow_tf32) does not spill",
                   raises=AssertionError)
def test_float32_ieee_dkdv_head_dim_128_fits_hopper() -> None:
    """The narrow remainder of the check above: only the IEEE float32 D=128 dK/dV launch. Anything
    but its spill (a compile error, too much shared memory, no ptxas report) fails the test."""
    jobs, limit = _hopper_jobs(lambda info: _attention_jobs(info, ((torch.float32, 128, True),)))
    spilling = [job for job in jobs if _fp32_dkdv_d128(job)]
    if len(spilling) != 1:
        pytest.fail(f"expected the one IEEE float32 D=128 dK/dV launch, got {len(spilling)}")
    (result,) = compile_in_subprocess(spilling)
    if not result["ok"] or result["registers"] <= 0 or result["shared"] > limit:
        pytest.fail(f"not a clean compile: {result}")
    assert result["spill_bytes"] == 0, result


#: (dtype, head dim, block, stride) of the block-sparse launches: XAttention's defaults (64/8),
#: a wide stride at head dim 128, float32 (FMA dots) at odd head dim 40
SPARSE_CASES = (("float16", 64, 64, 8), ("bfloat16", 128, 128, 16), ("float32", 40, 64, 8))


def test_block_sparse_attention_fits_hopper() -> None:
    """The block-sparse forward and XAttention's scoring kernel, recorded from their launcher for
    sm_90: no spills, shared memory fits (the scoring loop, unrolled over the stride before, used
    255 registers and spilled 280 B at fp16 D=64, and needed 393 KiB of shared memory at bf16 D=128
    with stride 16)."""
    import json

    from tilewright.targets.triton.attention.precompile import TemplateLaunch, TensorSpec
    from tilewright.targets.triton.attention.sparse import TritonSparseAttentionCall

    jobs: list[CompileJob] = []
    for dtype, d, block, stride in SPARSE_CASES:
        q = TensorSpec((1, 2, 1000, d), (2000 * d, 1000 * d, d, 1), 0, dtype)
        args = (q, q, q, d ** -0.5, True, 0, "xattention", json.dumps({"block": block, "stride": stride}))
        jobs += TemplateLaunch("s", TritonSparseAttentionCall(), args).compile_jobs(90, 232448)
    scoring = [j for j in jobs if j.fn_name == "xattn_scores_kernel"]
    assert len(scoring) == len(SPARSE_CASES) and len(jobs) == 2 * len(SPARSE_CASES)
    assert {j.constexprs["UPCAST"] for j in scoring} == {False}, "half precision dots run on tensor cores"
    _check(jobs, 227 * 1024)
