"""PyTorch's own OpInfo samples for a curated set of ops, through the backend in strict mode.

Each op's float32 samples (see ``benchmarks/opinfo_sweep.py``, which sweeps all of ``op_db``)
must compile, run their generated kernels without falling back, and match eager. The set holds
every op that once failed the sweep plus representative lowered ops of each kind.
"""
from __future__ import annotations

import pytest

pytest.importorskip("expecttest")  # torch.testing._internal needs it

from benchmarks import opinfo_sweep  # noqa: E402

#: ops that failed the sweep before (runtime fallbacks, wrong numbers): two samples each
REGRESSIONS = [
    "nn.functional.max_pool1d", "mvlgamma.mvlgamma_p_1", "mvlgamma.mvlgamma_p_3", "logical_and", "logical_or",
    "index_fill", "index_copy", "index_add", "isreal", "bfloat16",
]

#: representative lowered ops (pointwise, reductions, views, gathers, generators, matmuls): one sample each
REPRESENTATIVE = [
    "add", "sub", "mul", "div.no_rounding_mode", "div.floor_rounding", "div.trunc_rounding", "exp", "log1p",
    "sigmoid", "tanh", "nn.functional.relu", "nn.functional.gelu", "nn.functional.silu", "clamp", "maximum",
    "minimum", "where", "masked_fill", "pow", "round", "sum", "mean", "amax", "amin", "softmax", "log_softmax",
    "var", "nn.functional.layer_norm", "cat", "gather", "index_select", "nn.functional.embedding", "mm", "bmm",
    "addmm", "nn.functional.interpolate.bilinear", "arange", "full_like", "any",
    "all", "half", "nn.functional.max_pool2d", "nn.functional.hardtanh",
]


def _check(names: list[str], samples: int) -> None:
    ops = opinfo_sweep.select_ops(names)
    found = {opinfo_sweep.op_key(o) for o in ops}
    assert set(names) <= found, f"not in op_db: {sorted(set(names) - found)}"
    results = [r for o in ops if opinfo_sweep.op_key(o) in names for r in opinfo_sweep.run_op(o, samples)]
    # a sample whose ops all run as ATen by design (e.g. a 0-d input) is fine; wrong numbers,
    # crashes and runtime fallbacks are not, and every op must have generated code for a sample
    bad = [f"{r.op}[{r.sample}] {r.status}: {r.detail}" for r in results if r.status not in ("ok", "not-lowered")]
    assert not bad, "\n".join(bad)
    lowered = {r.op for r in results if r.status == "ok"}
    assert lowered == set(names), f"no generated kernel ran for {sorted(set(names) - lowered)}"


@pytest.mark.parametrize("name", REGRESSIONS)
def test_opinfo_regressions(name: str) -> None:
    _check([name], samples=2)


@pytest.mark.parametrize("chunk", range(4))
def test_opinfo_representative(chunk: int) -> None:
    _check(REPRESENTATIVE[chunk::4], samples=1)


def test_classification_catches_wrong_numbers() -> None:
    """The comparison the sweep classifies with: NaN-aware, exact on dtype/shape and integers."""
    import torch

    a = torch.tensor([1.0, float("nan"), 3.0])
    assert opinfo_sweep.compare(a.clone(), a) is None
    assert opinfo_sweep.compare(a + 1e-3, a) is not None
    assert opinfo_sweep.compare(a.double(), a) is not None
    assert opinfo_sweep.compare((a.nan_to_num(),), (a,)) is not None
    assert opinfo_sweep.compare(torch.tensor([1, 2]), torch.tensor([1, 3])) is not None
    assert opinfo_sweep.compare(torch.empty(2), torch.empty(2), values=False) is None
