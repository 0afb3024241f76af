"""Kernels built from problem specs (what ``tilewright collect`` measures) are real and runnable."""
from __future__ import annotations

import random

import pytest
import torch

from tilewright.autotune.kernel_zoo import SPEC_BUILDERS
from tilewright.costmodel.collect import ProblemSpec, sample_configs


@pytest.mark.parametrize("spec", [
    ProblemSpec("pointwise", {"numel": 1000}, "float32", {"n_inputs": 3, "op": "gelu"}),
    ProblemSpec("reduction", {"rows": 7, "rnumel": 300}, "float32", {"op": "layernorm"}),
    ProblemSpec("reduction", {"rows": 40, "rnumel": 33}, "float32", {"op": "column_sum"}),
    ProblemSpec("matmul", {"B": 1, "M": 33, "N": 40, "K": 24}, "float32", {"epilogue_ops": ["bias", "gelu"]}),
    ProblemSpec("matmul", {"B": 2, "M": 17, "N": 16, "K": 20}, "float16", {"epilogue_ops": ["add"]}),
    ProblemSpec("attention", {"B": 1, "H": 2, "M": 40, "N": 40, "D": 16}, "float32", {"causal": True}),
])
def test_builders_make_kernels_that_run_with_sampled_configs(spec: ProblemSpec) -> None:
    build = SPEC_BUILDERS[spec.kind]
    kernel = build(spec)
    assert kernel.problem.kind == spec.kind
    configs = sample_configs(kernel.space, 2, random.Random(0))
    assert configs and all(kernel.space.is_feasible(c) for c in configs)
    for config in configs:
        tensors = kernel.make_inputs("cpu")
        kernel.runner(config)(tensors)
        outs = [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
        assert all(torch.isfinite(t).all() for t in outs[-1:])
