"""Fused-attention template steps are compiled in the compile pool before their first call, with
the specialisation the launcher will use, and a hanging compile marks the template broken.

No GPU here: the pool compiles offline for ``sm_90`` (real cubins through ptxas) while the
compiled graph itself runs in Triton's interpreter; the compiler is told the target compiles in
workers (as it does on a GPU).
"""
from __future__ import annotations

import functools
import json
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright.autotune import compile_pool
from tilewright.autotune.compile_pool import SHARED_MEMORY_LIMIT, CompilePool
from tilewright.report import collect
from tilewright.targets.triton.target import TritonTarget

pytest.importorskip("triton.backends.nvidia")

FWD_KERNELS = {"attn_fwd_kernel"}
BWD_KERNELS = {"attn_bwd_preprocess_kernel", "attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel"}


@pytest.fixture
def pool_sees(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[Any, str | None]]:
    """Precompile on (as on a GPU), 2 workers; {work name: (work, error)} of everything the pool ran."""
    seen: dict[str, tuple[Any, str | None]] = {}
    run = CompilePool.run

    def recording_run(self: CompilePool, work: Any) -> dict[str, str]:
        errors = run(self, work)
        seen.update({key: (fn, errors.get(key)) for key, fn in work.items()})
        return errors

    monkeypatch.setattr(CompilePool, "run", recording_run)
    monkeypatch.setattr(TritonTarget, "compiles_in_workers", lambda self, kernels: True)
    monkeypatch.setattr(compile_pool, "_default_target", lambda: "sm_90")
    monkeypatch.setattr(tilewright.config, "compile_workers", 2)
    return seen


def _templates(seen: dict[str, tuple[Any, str | None]]) -> dict[str, tuple[Any, str | None]]:
    return {k: v for k, v in seen.items() if k.startswith("template ")}


def _recorded(work: Any) -> set[str]:
    """The kernels a template's work compiles (recorded again here, from its launch description)."""
    launch = work.args[0]
    return {job.fn_name for job in launch.compile_jobs(90, SHARED_MEMORY_LIMIT[90])}


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_attention_forward_and_training_kernels_compile_to_sm90_cubins_in_the_pool(pool_sees):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 16, requires_grad=True) for _ in range(3))
    compiled = torch.compile(_sdpa, backend="tilewright")
    out = compiled(q, k, v)
    out.backward(torch.ones_like(out))
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = _sdpa(q64, k64, v64)
    want.backward(torch.ones_like(want))
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-5)
    for t, t64 in zip((q, k, v), (q64, k64, v64)):
        torch.testing.assert_close(t.grad.double(), t64.grad, rtol=1e-4, atol=1e-4)

    templates = _templates(pool_sees)
    forward = {k: v for k, v in templates.items() if "flash_attention_backward" not in k}
    backward = {k: v for k, v in templates.items() if "flash_attention_backward" in k}
    assert len(forward) == 1 and len(backward) == 1, sorted(pool_sees)
    for work, error in templates.values():
        assert error is None, error  # recorded, compiled to a non-empty sm_90 cubin, within 227 KiB
        assert work.func is compile_pool._compile_template_offline and work.args[1] == 90
    (fwd_work, _), = forward.values()
    (bwd_work, _), = backward.values()
    assert _recorded(fwd_work) == FWD_KERNELS
    assert _recorded(bwd_work) == BWD_KERNELS  # preprocess, dK/dV and dQ


def test_recorded_launch_has_the_launchers_specialisation():
    """The recorded job states what the launch passes: the default config the device gets (227 KiB
    on sm_90), constexprs, unit strides as constants, aligned pointers, the dtype's dot."""
    from tilewright.targets.triton.attention import launch as L
    from tilewright.targets.triton.attention.precompile import TemplateLaunch, TensorSpec
    from tilewright.targets.triton.templates import template_call

    class _Node:  # what template_call reads: the op's packet name
        target = torch.ops.tilewright.flash_attention.default

    call = template_call(_Node())  # type: ignore[arg-type]
    q = TensorSpec((2, 3, 129, 64), (3 * 129 * 64, 129 * 64, 64, 1), 0, "bfloat16")
    jobs = TemplateLaunch("t", call, (q, q, q, None, None, None, 0.125, True, 0, 0.0)).compile_jobs(90, 232448)
    (job,) = jobs
    want = L.forward_space(64, "bfloat16", 232448).default_config()
    assert (job.num_warps, job.num_stages) == (want["num_warps"], want["num_stages"])
    assert {k: job.constexprs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D", "EVEN_D", "IS_CAUSAL", "UPCAST")} == \
        {"BLOCK_M": want["BLOCK_M"], "BLOCK_N": want["BLOCK_N"], "BLOCK_D": 64, "EVEN_D": True, "IS_CAUSAL": True,
         "UPCAST": False}
    assert job.constexprs["sqd"] == 1 and "Q" in job.aligned and "M" not in job.aligned  # 129 rows
    tuned = {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2}
    (job,) = TemplateLaunch("t", call.with_config(tuned), (q, q, q, None, None, None, 0.125, False, 0, 0.0)
                            ).compile_jobs(90, 232448)
    assert (job.constexprs["BLOCK_M"], job.constexprs["BLOCK_N"], job.num_warps, job.num_stages) == (64, 32, 4, 2)


def test_block_sparse_attention_records_its_estimator_and_kernel():
    from tilewright.targets.triton.attention.precompile import TemplateLaunch, TensorSpec
    from tilewright.targets.triton.attention.sparse import TritonSparseAttentionCall

    q = TensorSpec((1, 2, 150, 32), (2 * 150 * 32, 150 * 32, 32, 1), 0, "float16")
    args = (q, q, q, 32 ** -0.5, True, 0, "xattention", json.dumps({"block": 64}))
    jobs = TemplateLaunch("s", TritonSparseAttentionCall(), args).compile_jobs(90, 232448)
    assert {j.fn_name for j in jobs} == {"bsattn_fwd_kernel", "xattn_scores_kernel"}
    (fwd,) = [j for j in jobs if j.fn_name == "bsattn_fwd_kernel"]
    assert fwd.constexprs["BLOCK"] == 64 and fwd.constexprs["IS_CAUSAL"] is True


class _Block(torch.nn.Module):
    """A GPT-2-like attention block: fused qkv projection, causal SDPA, output projection."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.out = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.out(y.transpose(1, 2).reshape(b, t, c))


@pytest.mark.fallback
def test_a_hanging_template_compile_marks_it_broken_and_the_reference_runs(pool_sees, monkeypatch):
    monkeypatch.setattr(tilewright.config, "compile_timeout_s", 4.0)
    monkeypatch.setattr(compile_pool, "template_task", lambda launch, target: functools.partial(time.sleep, 600))
    monkeypatch.setattr(compile_pool, "compile_task", lambda kernel, config, target: functools.partial(time.sleep, 0))
    torch.manual_seed(0)
    model = _Block()
    x = torch.randn(2, 11, 32)
    eager = model(x)
    eager.sum().backward()
    want_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with collect() as report:
        got = torch.compile(model, backend="tilewright")(x)
        got.sum().backward()
    torch.testing.assert_close(got, eager, rtol=1e-4, atol=1e-5)
    for p, want in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-4)
    templates = _templates(pool_sees)
    assert len(templates) == 2 and all("compile timeout after 4s" in (e or "") for _, e in templates.values())
    reasons = {f["op"]: f["reason"] for f in report.fallbacks}
    for op in ("template tilewright.flash_attention.default", "template tilewright.flash_attention_backward.default"):
        assert "compile failed: compile timeout after 4s" in reasons.get(op, ""), reasons
    entries = [e for g in report.graphs for e in g.kernels if e.get("kind") == "template"]
    assert len(entries) == 2 and all("compile timeout" in (e.get("fallback") or "") for e in entries)


class _ConvNet(torch.nn.Module):
    """Two convolutions: a 3x3 stride-1 (input gradient as a forward conv of the flipped weight)
    and a 3x3 stride-2 (the strided input-gradient kernel)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def test_conv_gradient_template_compiles_its_kernels_in_the_pool(pool_sees):
    """The convolution-gradient template's generated kernels (weight gradient, input gradient)
    are recorded and compiled to sm_90 cubins in the pool; gradients still match float64."""
    torch.manual_seed(0)
    model = _ConvNet()
    x = torch.randn(2, 3, 13, 11, requires_grad=True)
    out = torch.compile(model, backend="tilewright")(x)
    out.sum().backward()
    model64 = _ConvNet().double()
    model64.load_state_dict(model.state_dict())
    x64 = x.detach().double().requires_grad_()
    want = model64(x64)
    want.sum().backward()
    torch.testing.assert_close(out.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-4)
    for p, p64 in zip(model.parameters(), model64.parameters()):
        torch.testing.assert_close(p.grad.double(), p64.grad, rtol=1e-4, atol=1e-4)

    conv_templates = {k: v for k, v in _templates(pool_sees).items() if "convolution_backward" in k}
    assert conv_templates, sorted(pool_sees)
    kernels: set[str] = set()
    for work, error in conv_templates.values():
        assert error is None, error
        assert work.func is compile_pool._compile_template_offline and work.args[1] == 90
        kernels |= _recorded(work)
    assert "tw_conv_wgrad" in kernels and "tw_conv_dgrad" in kernels, kernels
