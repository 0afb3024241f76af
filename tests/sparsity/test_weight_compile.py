"""Sparse/low-rank weights through torch.compile: the exact path unchanged when not asked for,
plans applied in compiled graphs (CPU target, strict mode), explain, the user's model untouched."""
from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tilewright
from tilewright.report import collect
from tilewright.sparsity import PlanEntry, SparsityPlan, model_fingerprint
from tilewright.sparsity.candidates import block_candidate, materialize

pytestmark = pytest.mark.native_cpu  # skipped without a C++ compiler (an error in CI): tests/conftest.py


@pytest.fixture
def cpu_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compile for the native CPU target, from an empty Dynamo cache."""
    monkeypatch.setattr(tilewright.config, "target", "cpu")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 40, 3, padding=1)
        self.fc1 = nn.Linear(40, 72)
        self.fc2 = nn.Linear(72, 56)
        self.fc3 = nn.Linear(56, 33)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean((2, 3))
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(h)))))


def _plan(model: Net) -> SparsityPlan:
    bs = block_candidate(model.fc1.weight.detach(), 0.5, (16, 16), None)
    cs = block_candidate(model.conv.weight.detach().reshape(40, -1), 0.5, (16, 8), None)
    entries = [
        PlanEntry("conv", "conv", "block_sparse", cs.params, 0.01, 2.0),
        PlanEntry("fc1", "linear", "block_sparse", bs.params, 0.01, 1.6),
        PlanEntry("fc2", "linear", "low_rank", {"rank": 20, "full_rank": 56}, 0.01, 1.5),
        PlanEntry("fc3", "linear", "2:4", {"n": 2, "m": 4}, 0.01, 0.5),
    ]
    return SparsityPlan(entries, 0.5, "rel_l2", model_fingerprint(model))


def _approx_model(model: Net, plan: SparsityPlan) -> Net:
    approx = Net()
    approx.load_state_dict(model.state_dict())
    with torch.no_grad():
        for e in plan.applied():
            mod = approx.get_submodule(e.site)
            mod.weight.copy_(materialize(mod.weight, e.method, e.params))
    return approx.eval()


def test_plan_runs_sparse_kernels_in_the_compiled_graph(cpu_target, tmp_path) -> None:
    model = Net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = _plan(model)
    path = plan.save(tmp_path / "plan.json")
    x = torch.randn(2, 3, 7, 9)
    compiled = torch.compile(model, backend="tilewright", options={"sparsity": {"plan": str(path)}})
    with torch.no_grad(), collect() as report:
        compiled(x)
    gc.collect()  # the compressed weights live as long as the compiled graph, not Dynamo's graph module
    with torch.no_grad():
        y = compiled(x)
    with torch.no_grad():
        judge = _approx_model(model, plan).double()(x.double())
    torch.testing.assert_close(y.double(), judge, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(y, model(x), rtol=1e-3, atol=1e-3)  # the approximation really ran
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    approx = {a["site"]: a for a in report.to_dict()["approximations"]}
    assert {s: a["method"] for s, a in approx.items()} == {"conv": "block_sparse", "fc1": "block_sparse",
                                                            "fc2": "low_rank", "fc3": "2:4"}
    assert "mask" not in approx["fc1"]["params"] and approx["fc1"]["params"]["density"] == pytest.approx(0.5, abs=0.15)
    ran = {k["name"]: k["status"] for k in report.kernels if k["kind"] == "template"}
    assert {n.split(".")[1] for n in ran} == {"bsr_conv2d", "bsr_linear", "nm_linear", "packed_weight"}
    assert set(ran.values()) == {"ran"}
    text = str(report)
    assert "approximate rewrites" in text and "fc2 [linear] low_rank rank=20" in text


def test_exact_path_unchanged_when_sparsity_is_not_asked_for(cpu_target) -> None:
    model = Net().eval()
    x = torch.randn(2, 3, 7, 9)
    with torch.no_grad(), collect() as plain_report:
        plain = torch.compile(model, backend="tilewright")(x)
    torch._dynamo.reset()
    with torch.no_grad(), collect() as strict_report:  # a budget nothing meets: every layer stays exact
        gated = torch.compile(model, backend="tilewright", options={"sparsity": {"budget": 1e-9}})(x)
    torch._dynamo.reset()
    with collect() as grad_report:  # grad mode on: sparsity is not applied
        with_grad = torch.compile(model, backend="tilewright", options={"sparsity": {"plan": _plan(model)}})(x)
    assert torch.equal(plain, gated) and torch.equal(plain, with_grad.detach())
    assert plain_report.to_dict()["approximations"] == [] == strict_report.to_dict()["approximations"]
    assert grad_report.to_dict()["approximations"] == []
    assert any("grad mode is on" in n for g in grad_report.graphs for n in g.notes)
    assert [k["name"] for k in plain_report.kernels] == [k["name"] for k in strict_report.kernels]


def test_budget_option_calibrates_on_the_first_call_and_saves_the_plan(cpu_target, tmp_path) -> None:
    model = Net().eval()
    with torch.no_grad():
        model.fc1.weight[:, 16:] *= 1e-4  # fc1 compresses well
    x = torch.randn(2, 3, 7, 9)
    path = tmp_path / "calibrated.json"
    with torch.no_grad(), collect() as report:
        y = torch.compile(model, backend="tilewright",
                          options={"sparsity": {"budget": 0.01, "save_plan": str(path),
                                                "methods": ["block_sparse"], "block": [16, 16]}})(x)
    plan = SparsityPlan.load(path)
    assert plan.entry("fc1").method == "block_sparse" and plan.model_error <= 0.01
    ref = model(x)
    assert ((y - ref).norm() / ref.norm()).item() <= 0.0101
    assert any(a["site"] == "fc1" for a in report.to_dict()["approximations"])
    torch._dynamo.reset()
    with torch.no_grad():  # the saved plan reproduces the calibrated compile
        again = torch.compile(model, backend="tilewright", options={"sparsity": {"plan": str(path)}})(x)
    assert torch.equal(y, again)


def test_bad_sparsity_options_are_clear_errors(cpu_target) -> None:
    model = Net().eval()
    x = torch.randn(1, 3, 5, 5)
    for options, message in (({"budgett": 0.1}, "unknown options"), ({}, "needs 'plan'"),
                             ({"budget": 0.1, "methods": ["magic"]}, "unknown weight methods")):
        torch._dynamo.reset()
        with torch.no_grad(), pytest.raises(Exception, match=message):
            torch.compile(model, backend="tilewright", options={"sparsity": options})(x)


class Attn(nn.Module):
    """One causal self-attention layer with projections: the attention rewrite must still fuse it."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.qkv, self.out = nn.Linear(32, 96), nn.Linear(32, 32)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, 2, 16).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(a.transpose(1, 2).reshape(b, t, 32))


def test_weight_rewrites_keep_attention_fusion(cpu_target) -> None:
    model = Attn().eval()
    entries = [PlanEntry("qkv", "linear", "low_rank", {"rank": 8, "full_rank": 32}, 0.1, 1.5),
               PlanEntry("out", "linear", "block_sparse", block_candidate(model.out.weight.detach(), 0.5, (16, 16),
                                                                          None).params, 0.1, 1.6)]
    plan = SparsityPlan(entries, 0.5, "rel_l2", model_fingerprint(model))
    x = torch.randn(2, 9, 32)
    with torch.no_grad(), collect() as report:
        y = torch.compile(model, backend="tilewright", options={"sparsity": {"plan": plan}})(x)
    assert report.attention_fused == 1
    assert {a["site"] for a in report.to_dict()["approximations"]} == {"qkv", "out"}
    approx = Attn()
    approx.load_state_dict(model.state_dict())
    with torch.no_grad():
        for e in entries:
            mod = approx.get_submodule(e.site)
            mod.weight.copy_(materialize(mod.weight, e.method, e.params))
        judge = approx.double()(x.double())
    torch.testing.assert_close(y.double(), judge, rtol=1e-4, atol=1e-4)


def test_compressed_weights_live_as_long_as_the_sparsity_result() -> None:
    from tilewright.sparsity import ops
    from tilewright.sparsity.apply import sparsify_graph

    model = Net().eval()
    plan = _plan(model)
    kept: dict[str, object] = {}

    def backend(gm, example_inputs):
        gm, kept["result"] = sparsify_graph(gm, example_inputs, {"plan": plan})
        return gm.forward

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    x = torch.randn(1, 3, 5, 6)
    with torch.no_grad():
        first = compiled(x)
        handles = list(kept["result"].handles)
        assert len(handles) == 10 and all(h in ops._STORE for h in handles)
        gc.collect()
        assert torch.equal(compiled(x), first)  # the Dynamo graph module may be gone; the result holds them
    del kept["result"]
    gc.collect()
    assert not any(h in ops._STORE for h in handles)
    torch._dynamo.reset()
