"""Every generated kernel of the model zoo compiles to machine code for an H100 (sm_90).

No GPU is needed: Triton's compiler runs down to a cubin for the target. This catches code
the interpreter accepts but the compiler rejects. Kernels are compiled with their chosen
config and, for reductions, with both the persistent and the looped variant.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tilewright.targets.triton.kernel import GeneratedKernel
from tilewright.targets.triton.scatter import ScatterKernel
from tilewright.targets.triton.cross_compile import CompileJob, compile_in_subprocess, job_for, jobs_for
from tilewright.frontend.api import tunable_kernels

from ..models.model_zoo import MODELS, main_output

pytest.importorskip("triton.backends.nvidia")


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


def _check(jobs: list[CompileJob]) -> None:
    assert jobs
    results = compile_in_subprocess(jobs)
    failed = [r for r in results if not r["ok"]]
    assert not failed, failed[:3]
    assert all(r["cubin_bytes"] > 0 for r in results)


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
