"""The sparse attention rewrite in compiled models (CPU target, strict mode) and calibration.

Without a sparsity plan the graph keeps its ``flash_attention`` nodes and the output is exact;
with plan entries the chosen sites become ``block_sparse_attention`` nodes whose C++ kernels
run (the output equals eager attention with the same blocks dropped); sites the sparse kernels
cannot take (masks, training graphs) stay exact; calibration returns (params, density, error)
and the gate helper picks the sparsest setting within a budget.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright import compiler
from tilewright.report import collect
from tilewright.sparsity.attention import (
    attention_sites,
    attention_sparsity_pass,
    block_sparse_reference,
    build_index,
    calibrate_attention,
    capture_attention_inputs,
    rewrite_attention_sites,
    site_ordinal,
    sparsest_within,
)


class TwoLayerAttention(torch.nn.Module):
    """Two causal self-attention layers over [B, L, 32] (4 heads of 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = torch.nn.ModuleList([torch.nn.Linear(32, 96) for _ in range(2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        for proj in self.qkv:
            q, k, v = proj(x).reshape(B, L, 3, 4, 8).permute(2, 0, 3, 1, 4)
            x = x + F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, L, 32)
        return x


@pytest.fixture
def cpu_compile(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Compile for the CPU target; yields a list whose entries (plan entries) the pass applies."""
    monkeypatch.setattr(tilewright.config, "target", "cpu")
    torch._dynamo.reset()
    entries: list[Any] = []
    original = compiler.default_passes

    def passes() -> Any:
        manager = original()
        manager.passes.append(("sparse_attention", attention_sparsity_pass(entries)))
        return manager
    monkeypatch.setattr(compiler, "default_passes", passes)
    yield entries
    torch._dynamo.reset()


def _run(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    with torch.no_grad(), collect() as report:
        out = torch.compile(model, backend="tilewright")(x)
    return out, report


def test_without_a_plan_attention_stays_exact(cpu_compile: list[Any]) -> None:
    model = TwoLayerAttention().eval()
    x = torch.randn(2, 70, 32)
    out, report = _run(model, x)
    with torch.no_grad():
        want = model.double()(x.double())
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)
    ops = [k["name"] for k in report.kernels if k.get("kind") == "template"]
    assert ops and all("block_sparse" not in op for op in ops)
    assert report.attention_fused == 2


def test_plan_entries_rewrite_the_chosen_sites(cpu_compile: list[Any]) -> None:
    model = TwoLayerAttention().eval()
    x = torch.randn(2, 70, 32)
    params = {"block": 16, "sinks": 1, "window": 1}
    cpu_compile.extend([{"site": "attention:1", "kind": "attention", "method": "sinks_window", "params": params},
                        {"site": 0, "kind": "attention", "method": "exact", "params": {}}])
    out, report = _run(model, x)
    sparse = [k for k in report.kernels if "block_sparse_attention" in k["name"]]
    assert len(sparse) == 1 and sparse[0]["status"] == "ran", str(report)
    assert report.attention_fused == 1  # site 0 is still the dense fused kernel

    # judge: eager with the second attention dropping the same blocks (float64)
    calls = 0
    original = F.scaled_dot_product_attention

    def judged(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False, **kw: Any) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 2:
            index = build_index("sinks_window", params, q, k, None, True, 0, backend="torch")
            return block_sparse_reference(q, k, v, index, None, True, 0)[0]
        return original(q, k, v, is_causal=is_causal, **kw)
    F.scaled_dot_product_attention = judged
    try:
        with torch.no_grad():
            want = model.double()(x.double())
    finally:
        F.scaled_dot_product_attention = original
    torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        exact = model(x.double())
    assert (out.double() - exact).abs().max() > 1e-3  # the sparsity did change the output


def test_sites_the_kernels_cannot_take_stay_exact(cpu_compile: list[Any]) -> None:
    class Masked(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    q, k, v = (torch.randn(1, 2, 40, 8) for _ in range(3))
    m = torch.rand(40, 40) > 0.3
    cpu_compile.append({"site": "attention:0", "kind": "attention", "method": "sinks_window",
                        "params": {"block": 16}})
    with torch.no_grad(), collect() as report:
        out = torch.compile(Masked(), backend="tilewright")(q, k, v, m)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=m), atol=1e-5, rtol=1e-5)
    assert report.attention_fused == 1
    assert not [k_ for k_ in report.kernels if "block_sparse" in k_["name"]]
    assert site_ordinal("attention:3") == 3 and site_ordinal(2) == 2
    with pytest.raises(ValueError, match="neither an ordinal"):
        site_ordinal("layer.3")


def test_unknown_method_is_a_clear_error() -> None:
    from tilewright.ir.graph import Graph

    with pytest.raises(ValueError, match="unknown method"):
        rewrite_attention_sites(Graph(), [{"site": 0, "kind": "attention", "method": "bigbird"}])
    assert attention_sites(Graph()) == []


def test_calibration_and_gate() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 160, 32, generator=g)
    k = torch.randn(1, 2, 160, 32, generator=g)
    v = torch.randn(1, 2, 160, 32, generator=g)
    results = calibrate_attention(q, k, v, "sinks_window", block=16, causal=True)
    densities = [d for _, d, _ in results]
    assert densities == sorted(densities) and 0 < densities[0] < densities[-1] <= 1.0
    assert results[0][2] > results[-1][2]  # keeping more blocks costs less error
    widest = results[-1]
    chosen = sparsest_within(results, widest[2] + 1e-9)
    assert chosen is not None and chosen[1] <= widest[1]
    assert sparsest_within(results, -1.0) is None
    x = calibrate_attention(q, k, v, "xattention", [{"threshold": 1.0, "stride": 4}], block=16, causal=True)
    assert x[0][1] == pytest.approx(1.0) and x[0][2] < 1e-5  # everything kept: exact


def test_capture_attention_inputs() -> None:
    model = TwoLayerAttention().eval()
    with torch.no_grad(), capture_attention_inputs() as calls:
        model(torch.randn(1, 20, 32))
    assert len(calls) == 2 and calls[0]["causal"] and calls[0]["q"].shape == (1, 4, 20, 8)
    assert F.scaled_dot_product_attention.__name__ != "recording"


def test_triton_target_runs_the_sparse_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Triton target (interpreter) lowers the sparse node to its block-sparse kernel."""
    monkeypatch.setattr(tilewright.config, "target", "triton")
    torch._dynamo.reset()
    entries = [{"site": "attention:0", "kind": "attention", "method": "sinks_window",
                "params": {"block": 16, "sinks": 1, "window": 1}}]
    original = compiler.default_passes

    def passes() -> Any:
        manager = original()
        manager.passes.append(("sparse_attention", attention_sparsity_pass(entries)))
        return manager
    monkeypatch.setattr(compiler, "default_passes", passes)

    class One(torch.nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
    try:
        with torch.no_grad(), collect() as report:
            out = torch.compile(One(), backend="tilewright")(q, k, v)
    finally:
        torch._dynamo.reset()
    sparse = [k_ for k_ in report.kernels if "block_sparse_attention" in k_["name"]]
    assert len(sparse) == 1 and sparse[0]["status"] == "ran", str(report)
    index = build_index("sinks_window", entries[0]["params"], q, k, None, True, 0)
    want = block_sparse_reference(q.double(), k.double(), v.double(), index, None, True, 0)[0]
    torch.testing.assert_close(out.double(), want, atol=1e-5, rtol=1e-5)
