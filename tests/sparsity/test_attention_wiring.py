"""Sparse attention wired into compiled models: ``options={"sparsity": ...}`` on a tiny HF LLaMA.

A plan holding attention entries runs the block-sparse kernel on the CPU target in strict mode
(explain lists each site with its method, density, error and speedup) and the output equals a
float64 run of the same block-sparse attention; budget mode gates sites with the attention
calibration (a tiny budget keeps them exact, bit-identical to the plain compile), saves the
plan and the reloaded plan gives the same output; a plan for another number of attention sites
is refused; the exact path gets no extra pass when sparsity is not asked for.
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import tilewright
from tilewright import compiler
from tilewright.report import collect
from tilewright.sparsity import PlanEntry, SparsityPlan
from tilewright.sparsity.api import evaluate_plan, sparsify
from tilewright.sparsity.attention import block_sparse_reference, build_index
from tilewright.sparsity.attention.gate import parse_attention

pytestmark = pytest.mark.native_cpu  # skipped without a C++ compiler (an error in CI): tests/conftest.py

SEQ = 96  # six 16-token blocks
STATIC = {"attention:0": ("sinks_window", {"block": 16, "sinks": 1, "window": 2}),
          "attention:1": ("vertical_slash", {"block": 16, "vertical": [0, 2], "slash": [0]})}


def tiny_llama(layers: int = 2) -> torch.nn.Module:
    """A LLaMA with grouped-query attention (4 query heads over 2 kv heads, head dim 16), random weights."""
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=64, intermediate_size=96,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=101,
                                   max_position_embeddings=256, attn_implementation="sdpa")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def _ids(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, 101, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def cpu_strict(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """CPU target, strict mode, an empty Dynamo cache; yields the ``extra_passes`` each IR compile got."""
    monkeypatch.setattr(tilewright.config, "target", "cpu")
    monkeypatch.setattr(tilewright.config, "strict", True)
    seen: list[Any] = []
    original = compiler.compile_graph_for_inputs

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("extra_passes"))
        return original(*args, **kwargs)
    monkeypatch.setattr(compiler, "compile_graph_for_inputs", spy)
    torch._dynamo.reset()
    yield seen
    torch._dynamo.reset()


def _compile(model: torch.nn.Module, ids: torch.Tensor, sparsity: Any = None) -> tuple[torch.Tensor, Any]:
    torch._dynamo.reset()
    options = {} if sparsity is None else {"sparsity": sparsity}
    with torch.no_grad(), collect() as report:
        out = torch.compile(model, backend="tilewright", options=options)(ids).logits
    return out, report


def _sparse_kernels(report: Any) -> list[dict[str, Any]]:
    return [k for k in report.kernels if "block_sparse_attention" in k["name"]]


def _judge(model: torch.nn.Module, ids: torch.Tensor, sites: dict[int, tuple[str, dict[str, Any]]],
           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The model in ``dtype`` with the listed attention calls (call order) block-sparse by the torch reference."""
    judge = copy.deepcopy(model).to(dtype)
    original = F.scaled_dot_product_attention
    calls = [0]

    def sparse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None, dropout_p: float = 0.0,
               is_causal: bool = False, scale: float | None = None, **kw: Any) -> torch.Tensor:
        i, calls[0] = calls[0], calls[0] + 1
        if i not in sites:
            return original(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)
        assert attn_mask is None and is_causal
        method, params = sites[i]
        index = build_index(method, params, q.float(), k.float(), scale, True, 0, backend="torch")
        return block_sparse_reference(q, k, v, index, scale, True, 0)[0]
    F.scaled_dot_product_attention = sparse
    try:
        with torch.no_grad():
            return judge(ids).logits
    finally:
        F.scaled_dot_product_attention = original


def test_plan_with_attention_entries_runs_the_block_sparse_kernel(cpu_strict: list[Any], tmp_path) -> None:
    model = tiny_llama()
    ids = _ids(1)
    entries = [PlanEntry(site, "attention", method, params, 0.004, 1.7) for site, (method, params) in STATIC.items()]
    path = SparsityPlan(entries, 0.05, "rel_l2", {"layers": {}, "attention_sites": 2}).save(tmp_path / "plan.json")
    assert json.loads(path.read_text())["entries"][1]["params"]["vertical"] == [0, 2]  # plain JSON
    out, report = _compile(model, ids, {"plan": str(path)})
    ran = _sparse_kernels(report)
    assert len(ran) == 2 and all(k["status"] == "ran" for k in ran), str(report)
    assert report.attention_fused == 0  # both sites left the dense kernel
    assert cpu_strict and all(p is not None for p in cpu_strict)  # the IR pass was handed to the compiler
    rows = {a["site"]: a for a in report.to_dict()["approximations"]}
    assert set(rows) == set(STATIC)
    for site, (method, _) in STATIC.items():
        row = rows[site]
        assert row["method"] == method and row["kind"] == "attention"
        assert 0 < row["density"] < 1 and row["error"] == pytest.approx(0.004) and row["expected_speedup"] == 1.7
    text = str(report)
    assert "attention:0 [attention] sinks_window" in text and "density=" in text and "expected 1.70x" in text

    want = _judge(model, ids, {0: STATIC["attention:0"], 1: STATIC["attention:1"]})
    torch.testing.assert_close(out.double(), want, atol=2e-4, rtol=2e-4)
    with torch.no_grad():
        dense = copy.deepcopy(model).double()(ids).logits
    assert (out.double() - dense).abs().max() > 1e-2  # the sparse attention did change the logits


def test_budget_mode_gates_attention_and_the_plan_reloads(cpu_strict: list[Any], tmp_path) -> None:
    model = tiny_llama()
    ids = _ids(2)
    plain, plain_report = _compile(model, ids)
    assert cpu_strict[-1] is None  # no sparsity asked for: the compiler gets no extra pass

    tight = {"budget": 1e-7, "methods": [], "attention": {"methods": ["sinks_window"], "block": 16},
             "save_plan": str(tmp_path / "tight.json")}
    gated, report = _compile(model, ids, tight)
    assert torch.equal(gated, plain)  # every site over the tiny budget stays exact: bit-identical
    assert not _sparse_kernels(report) and report.attention_fused == 2
    assert cpu_strict[-1] is None and report.to_dict()["approximations"] == []
    saved = SparsityPlan.load(tmp_path / "tight.json")
    exact = saved.of_kind("attention")
    assert len(exact) == 2 and all(e.is_exact and "> budget" in e.note and e.error > 1e-7 for e in exact)
    assert [k["name"] for k in plain_report.kernels] == [k["name"] for k in report.kernels]

    loose = dict(tight, budget=0.5, save_plan=str(tmp_path / "loose.json"))
    sparse, report = _compile(model, ids, loose)
    assert len(_sparse_kernels(report)) == 2 and all(k["status"] == "ran" for k in _sparse_kernels(report))
    plan = SparsityPlan.load(tmp_path / "loose.json")
    assert plan.fingerprint["attention_sites"] == 2 and plan.model_error <= 0.5
    applied = plan.applied("attention")
    assert len(applied) == 2 and all(0 < e.params["density"] < 1 and e.expected_speedup > 1 for e in applied)
    assert any("attention site(s) on the first call, 2 sparse" in n for g in report.graphs for n in g.notes)
    rel = float((sparse.double() - plain.double()).norm() / plain.double().norm())
    assert rel == pytest.approx(plan.model_error, rel=1e-2, abs=1e-4)  # the gate measured what runs

    again, report = _compile(model, ids, {"plan": str(tmp_path / "loose.json")})
    assert torch.equal(again, sparse) and len(_sparse_kernels(report)) == 2
    with pytest.raises(Exception, match="2 attention site"):  # a 3-layer model has 3 sites
        _compile(tiny_llama(layers=3), ids, {"plan": str(tmp_path / "loose.json")})


def test_module_api_calibrates_attention_sites_in_call_order(cpu_strict: list[Any]) -> None:
    model = tiny_llama()
    calibration, holdout = [_ids(3), _ids(4)], [_ids(5)]
    plan = sparsify(model, calibration, budget=0.5, methods=(),
                    attention={"methods": ["sinks_window"], "block": 16}, holdout=holdout)
    assert plan.fingerprint["attention_sites"] == 2 and len(plan.of_kind("attention")) == 2
    assert plan.applied("attention") and 0 <= plan.meta["holdout_error"] <= 1.0
    assert plan.meta["holdout_error"] == pytest.approx(evaluate_plan(model, plan, holdout))
    sites = {int(e.site.split(":")[1]): (e.method, e.params) for e in plan.applied("attention")}
    out, report = _compile(model, holdout[0], {"plan": plan})  # eager call order = the compiled graph's sites
    assert len(_sparse_kernels(report)) == len(sites)
    torch.testing.assert_close(out.double(), _judge(model, holdout[0], sites), atol=2e-4, rtol=2e-4)


def test_attention_options_are_validated() -> None:
    assert parse_attention(None) is None and parse_attention(False) is None
    assert parse_attention(True).methods == ("sinks_window", "xattention", "minference")
    assert parse_attention(["xattention"]).methods == ("xattention",)
    with pytest.raises(ValueError, match="unknown options"):
        parse_attention({"threshold": 0.9})
    with pytest.raises(ValueError, match="choose one or more"):
        parse_attention({"methods": ["bigbird"]})
    with pytest.raises(ValueError, match="takes"):
        parse_attention({"candidates": {"xattention": [{"window": 2}]}})


def test_gate_measures_lazily_and_backs_off() -> None:
    """A fake model whose error is c_i times site i's attention-output error (sites add): the safest
    setting first, then the fastest setting predicted and measured within the budget; a hopeless
    site costs one run; the global back-off brings the sum within the budget."""
    from tilewright.sparsity.attention.calibrate import relative_error
    from tilewright.sparsity.attention.evaluate import (
        AttentionCall,
        AttentionEvaluator,
        dense_forward,
        sparse_forward,
    )
    from tilewright.sparsity.attention.gate import AttentionOptions, run_attention_gate

    g = torch.Generator().manual_seed(0)
    grid = [{"sinks": 1, "window": w} for w in (1, 2, 3, 4, 6)]
    calls = [AttentionCall(*(torch.randn(1, 2, 512, 16, generator=g) for _ in range(3)), None, True, 0)
             for _ in range(3)]

    def local(i: int, window: int) -> float:
        call = calls[i]
        params = {"block": 16, "sinks": 1, "window": window}
        return relative_error(sparse_forward(call, "sinks_window", params), dense_forward(call)[0])

    class Fake(AttentionEvaluator):
        def __init__(self, costs: list[float]) -> None:
            self.sites, self.costs = calls, costs
            self.reference = [torch.zeros(())]
            self.runs: list[dict[int, Any]] = []

        def run(self, choice: Any) -> list[Any]:
            self.runs.append(dict(choice))
            return [torch.tensor(sum(self.costs[i] * local(i, p["window"]) for i, (_, p) in choice.items()))]

    def gate(costs: list[float], budget: float) -> tuple[Any, float, dict[str, Any], Fake]:
        fake = Fake(costs)
        options = AttentionOptions(("sinks_window",), 16, {"sinks_window": grid})
        return (*run_attention_gate(fake, options, budget, lambda ref, out: float(out[0])), fake)

    e = {w: local(0, w) for w in (1, 2, 3, 4, 6)}
    assert e[1] > e[2] > e[3] > e[4] > e[6]
    budget = 0.1
    c0 = budget / e[3] * 0.99  # window 3 is the fastest setting of site 0 within the budget
    entries, error, meta, fake = gate([c0, 0.0, budget / local(2, 6) * 1.5], budget)
    assert [en.method for en in entries] == ["sinks_window", "sinks_window", "exact"]
    assert entries[0].params["window"] == 3 and entries[1].params["window"] == 1  # site 1 costs nothing
    assert "least lossy" in entries[2].note and entries[2].error > budget
    site_runs = [next(iter(r)) for r in fake.runs if len(r) == 1]
    assert site_runs.count(0) == 2 and site_runs.count(2) == 1  # safest + chosen; the hopeless site once
    assert error <= budget and meta["attention_backoffs"] == 0
    assert 0 < entries[0].params["density"] < 1 and entries[0].expected_speedup > 1

    entries, error, meta, _ = gate([c0, budget / local(1, 3) * 0.99, 0.0], budget)  # each alone fits, not both
    assert meta["attention_backoffs"] >= 1 and error <= budget
    applied = [en for en in entries if not en.is_exact]
    assert applied and all(en.error <= budget for en in applied)
