"""``tilewright sparsify``: help, and a tiny end-to-end run on a tiny LLaMA with --json and -o."""
from __future__ import annotations

import json

import pytest
import torch

from tilewright.cli import main
from tilewright.sparsity import SparsityPlan


def tiny_llama() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Factory for the CLI: the model zoo's 2-layer LLaMA and a batch of token ids."""
    from tests.models.model_zoo import llama

    torch.manual_seed(0)
    model, inputs, _ = llama()
    return model.eval(), inputs


def tiny_llama_sdpa() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Factory for the CLI: a 2-layer LLaMA whose attention runs through SDPA (the sites the attention
    gate captures), and 64 token ids."""
    from tests.sparsity.test_attention_wiring import tiny_llama as llama_sdpa

    return llama_sdpa(), (torch.randint(0, 101, (1, 64), generator=torch.Generator().manual_seed(2)),)


def calibration() -> list[tuple[torch.Tensor, ...]]:
    """Two calibration batches of token ids."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 101, (2, 11), generator=g),) for _ in range(2)]


def test_sparsify_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["sparsify", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--budget", "--metric", "--methods", "--calibration", "--holdout", "--json", "--out"):
        assert flag in out


def test_sparsify_tiny_llama_json(capsys, tmp_path) -> None:
    out_path = tmp_path / "plan.json"
    code = main(["sparsify", "tests.sparsity.test_weight_cli:tiny_llama", "--budget", "0.05", "--metric", "kl",
                 "--calibration", "tests.sparsity.test_weight_cli:calibration",
                 "--holdout", "tests.sparsity.test_weight_cli:calibration", "--json", "-o", str(out_path)])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    plan = SparsityPlan.load(out_path)
    assert printed == plan.to_dict()
    model, _ = tiny_llama()
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {e.site for e in plan.entries} == linears and plan.metric == "kl" and plan.budget == 0.05
    assert plan.model_error is not None and plan.model_error <= 0.05
    assert plan.meta["calibration_batches"] == 2 and "holdout_error" in plan.meta
    for e in plan.entries:
        assert e.method in ("exact", "block_sparse", "low_rank")
        assert e.method == "exact" or e.error <= 0.05
    plan.check_model(model)


def test_sparsify_bad_spec_is_one_line_error(capsys) -> None:
    assert main(["sparsify", "no_such_module_xyz:factory"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_such_module_xyz" in err and err.count("\n") == 1


def test_sparsify_attention_only(capsys, tmp_path) -> None:
    """``--methods none --attention M``: the plan holds one attention entry per SDPA call, each exact or
    within the budget, and no weight rewrite."""
    out_path = tmp_path / "plan.json"
    code = main(["sparsify", "tests.sparsity.test_weight_cli:tiny_llama_sdpa", "--budget", "0.05", "--methods",
                 "none", "--attention", "sinks_window", "-o", str(out_path)])
    assert code == 0, capsys.readouterr().err
    assert "attention" in capsys.readouterr().out
    plan = SparsityPlan.load(out_path)
    attention = [e for e in plan.entries if e.kind == "attention"]
    assert len(attention) == 2  # the tiny LLaMA's two layers
    assert all(e.kind == "attention" or e.method == "exact" for e in plan.entries)
    for e in attention:
        assert e.method in ("exact", "sinks_window")
        assert e.method == "exact" or e.error <= 0.05


def test_sparsify_nothing_to_do_and_bad_attention_method(capsys) -> None:
    assert main(["sparsify", "tests.sparsity.test_weight_cli:tiny_llama", "--methods", "none"]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert main(["sparsify", "tests.sparsity.test_weight_cli:tiny_llama", "--attention", "bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
