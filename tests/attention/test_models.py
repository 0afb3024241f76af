"""Whole-model checks: tiny Hugging Face models, eager vs compiled, judged against float64.

Each model is compiled with the attention rewrite + AOTAutograd; the forward graph must hold
one ``tilewright::flash_attention`` per attention layer and the backward graph one backward
node per layer; outputs and parameter gradients must be as close to a float64 run as eager
float32 is (within a small factor).
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

from attn_helpers import BWD, FWD, make_backend  # noqa: E402

LAYERS = 2


def _gpt2(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    cfg = transformers.GPT2Config(n_layer=LAYERS, n_embd=32, n_head=2, vocab_size=97, n_positions=64,
                                  attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, use_cache=False)
    cfg._attn_implementation = impl
    ids = torch.randint(0, 97, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 8:] = 0
    return transformers.GPT2Model(cfg), {"input_ids": ids, "attention_mask": mask}


def _bert(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    cfg = transformers.BertConfig(num_hidden_layers=LAYERS, hidden_size=32, num_attention_heads=2,
                                  intermediate_size=48, vocab_size=97, max_position_embeddings=64,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = impl
    ids = torch.randint(0, 97, (2, 13))
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[0, 9:] = 0
    return transformers.BertModel(cfg, add_pooling_layer=False), {"input_ids": ids, "attention_mask": mask}


def _llama(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    cfg = transformers.LlamaConfig(num_hidden_layers=LAYERS, hidden_size=64, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64, vocab_size=97,
                                   max_position_embeddings=64, use_cache=False)
    cfg._attn_implementation = impl
    ids = torch.randint(0, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 7:] = 0
    return transformers.LlamaModel(cfg), {"input_ids": ids, "attention_mask": mask}


def _vit(impl: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    cfg = transformers.ViTConfig(num_hidden_layers=LAYERS, hidden_size=32, num_attention_heads=2,
                                 intermediate_size=48, image_size=16, patch_size=4, num_channels=3,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = impl
    return transformers.ViTModel(cfg, add_pooling_layer=False), {"pixel_values": torch.randn(2, 3, 16, 16)}


MODELS: dict[str, Callable[[str], tuple[torch.nn.Module, dict[str, Any]]]] = {
    "gpt2": _gpt2, "bert": _bert, "llama": _llama, "vit": _vit}


def _run(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**inputs).last_hidden_state
    (out.float() * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).sum().backward()
    grads = [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]
    return out.detach(), grads


def _close(got: torch.Tensor, eager: torch.Tensor, ref64: torch.Tensor) -> None:
    err = (got.double() - ref64).abs().max().item()
    base = (eager.double() - ref64).abs().max().item()
    scale = ref64.abs().max().item() + 1e-6
    assert err <= 4 * base + 1e-5 * scale, f"error {err:.3e} vs eager's {base:.3e} (scale {scale:.2e})"


def _tilewright_backend_available() -> bool:
    try:
        from tilewright.frontend.backend import tilewright_backend  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_matches_eager_with_tilewright_backend(name: str, impl: str = "eager") -> None:
    """backend="tilewright": outputs and grads vs eager (float64-judged); attention_fused == layers."""
    if not _tilewright_backend_available():
        pytest.skip("tilewright backend not importable")
    from tilewright.report import collect

    torch.manual_seed(0)
    model, inputs = MODELS[name](impl)
    model.train()
    model64 = copy.deepcopy(model).double()
    inputs64 = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}
    ref_out, ref_grads = _run(model64, inputs64)
    eager_out, eager_grads = _run(model, inputs)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report:
        got_out, got_grads = _run(compiled, inputs)
    torch._dynamo.reset()

    assert report.attention_fused == LAYERS, report.to_dict().get("attention_blocks")
    blocks = report.to_dict()["attention_blocks"]
    _close(got_out, eager_out, ref_out)
    assert len(got_grads) == len(eager_grads)
    for g, e, r in zip(got_grads, eager_grads, ref_grads):
        _close(g, e, r)
    if name == "llama":
        assert all(b["gqa_ratio"] == 2 for b in blocks)
    if name in ("gpt2", "llama"):
        assert all(b["causal"] for b in blocks), blocks


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_graphs_hold_one_fused_op_per_layer(name: str, impl: str) -> None:
    """Rewrite + AOTAutograd: one forward and one backward attention node per layer; outputs and
    grads vs eager, float64-judged."""
    torch.manual_seed(0)
    model, inputs = MODELS[name](impl)
    model.train()
    model64 = copy.deepcopy(model).double()
    inputs64 = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}
    ref_out, ref_grads = _run(model64, inputs64)
    eager_out, eager_grads = _run(model, inputs)
    torch._dynamo.reset()
    backend, cap = make_backend()
    got_out, got_grads = _run(torch.compile(model, backend=backend), inputs)
    torch._dynamo.reset()
    assert len(cap.infos) == LAYERS, cap.infos  # attention_fused == number of attention layers
    assert cap.count(FWD, "fw") == LAYERS
    assert cap.count(BWD, "bw") == LAYERS
    _close(got_out, eager_out, ref_out)
    assert len(got_grads) == len(eager_grads)
    for g, e, r in zip(got_grads, eager_grads, ref_grads):
        _close(g, e, r)
    if name == "llama":
        assert all(info["gqa_ratio"] == 2 for info in cap.infos)
    if name in ("gpt2", "llama"):
        assert all(info["causal"] for info in cap.infos), cap.infos
