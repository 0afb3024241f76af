"""The CPU target's fused attention kernels against a float64 reference, and in compiled models.

Kernel cases use odd sizes (Lq=37, Lk=53, head dims 40 and 64), strided operands, causal limits
(top-left and bottom-right), a sliding-window boolean mask with fully masked rows, a broadcast
additive bias (and its gradient), grouped-query attention and bfloat16. Model cases compile tiny
Hugging Face LLaMA (grouped-query) and Mistral (sliding window) for the CPU target in strict mode.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from tilewright.ops.attention import _reference_backward, attention_reference
from tilewright.report import collect
from tilewright.targets.cpu.attention import attention_space, cpu_attention_forward
from tilewright.targets.cpu.attention_backward import cpu_attention_backward

from ..models.model_zoo import main_output

CONFIGS = [None, {"BLOCK_M": 16, "BLOCK_N": 16, "threads": 1, "FUSED_DQ": 0},
           {"BLOCK_M": 64, "BLOCK_N": 128, "threads": 2, "FUSED_DQ": 1}, {"BLOCK_M": 32, "BLOCK_N": 32, "threads": 2}]


def _inputs(B: int, H: int, HKV: int, M: int, N: int, D: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """float64 q [B, H, M, D] (a transposed view, as models make it), k, v [B, HKV, N, D], dout."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, M, H, D, generator=g, dtype=torch.float64).transpose(1, 2)
    k = torch.randn(B, HKV, N, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, HKV, N, D, generator=g, dtype=torch.float64)
    return q, k, v, torch.randn(B, H, M, D, generator=g, dtype=torch.float64)


def _window_mask(M: int, N: int, window: int) -> torch.Tensor:
    """Keep key j for query i when i - window < j <= i (bottom-right aligned); two rows keep nothing."""
    i = torch.arange(M)[:, None] + (N - M)
    j = torch.arange(N)[None, :]
    mask = (j <= i) & (j > i - window)
    mask[3] = False
    mask[M - 2] = False
    return mask


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor, dtype: torch.dtype,
           atol: float, bias: torch.Tensor | None = None, mask: torch.Tensor | None = None, causal: bool = False,
           offset: int = 0, configs: list[Any] | None = None) -> None:
    """Forward and backward under each config against the float64 reference of the same (rounded) inputs."""
    q, k, v, dout = (t.to(dtype) for t in (q, k, v, dout))
    b = None if bias is None else bias.to(dtype)
    scale = q.shape[-1] ** -0.5
    d64 = [t.double() for t in (q, k, v, dout)]
    b64 = None if b is None else b.double()
    ref_out, ref_lse = attention_reference(*d64[:3], b64, mask, scale, causal, offset)
    ref_grads = _reference_backward(d64[3], *d64[:3], b64, mask, None, scale, causal, offset, 0.0, b is not None)
    results = []
    for config in configs or [None]:
        out, lse = cpu_attention_forward(q, k, v, b, mask, scale, causal, offset, config)
        assert out.dtype == dtype and out.shape == q.shape
        assert (out.double() - ref_out).abs().max().item() <= atol
        assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse))
        finite = torch.isfinite(ref_lse)
        assert (lse.double() - ref_lse)[finite].abs().max().item() <= atol
        grads = cpu_attention_backward(dout, q, k, v, out, lse, b, mask, scale, causal, offset, b is not None, config)
        for got, want in zip(grads, ref_grads):
            if want is None:
                assert got is None
                continue
            assert got.shape == want.shape
            assert (got.double() - want).abs().max().item() <= atol * (1.0 + want.abs().max().item())
        results.append((out, *grads[:3]))
    for other in results[1:]:  # the schedule changes the summation order only
        for x, y in zip(results[0], other):
            assert (x.double() - y.double()).abs().max().item() <= atol


def test_plain_gqa_odd_sizes_several_configs() -> None:
    q, k, v, dout = _inputs(2, 4, 2, 37, 53, 40)
    _check(q, k, v, dout, torch.float32, 2e-5, configs=CONFIGS)


@pytest.mark.parametrize("offset", [0, 53 - 37, -5])
def test_causal_lq_ne_lk(offset: int) -> None:
    q, k, v, dout = _inputs(1, 3, 3, 37, 53, 64, seed=offset + 7)
    _check(q, k, v, dout, torch.float32, 2e-5, causal=True, offset=offset, configs=CONFIGS[1:3])


def test_sliding_window_mask_with_empty_rows_and_gqa() -> None:
    q, k, v, dout = _inputs(1, 4, 1, 37, 53, 64, seed=3)
    _check(q, k, v, dout, torch.float32, 2e-5, mask=_window_mask(37, 53, 7), causal=True, offset=53 - 37,
           configs=CONFIGS)


def test_broadcast_bias_and_its_gradient() -> None:
    q, k, v, dout = _inputs(2, 3, 3, 37, 53, 40, seed=5)
    bias = torch.randn(53, 2, 1, 37, dtype=torch.float64).permute(1, 2, 3, 0)  # [B, 1, M, N], strided
    _check(q, k, v, dout, torch.float32, 2e-5, bias=bias, configs=CONFIGS[1:3])


def test_bfloat16_causal_gqa() -> None:
    q, k, v, dout = _inputs(1, 4, 2, 37, 53, 64, seed=11)
    _check(q, k, v, dout, torch.bfloat16, 3e-2, causal=True, offset=53 - 37)


def test_dropout_forward_and_backward_share_one_keep_mask() -> None:
    """With V = I (N = D) the output is the dropped probability matrix itself, so the kernel's
    keep-mask can be read off it; the backward must use the same mask (float64 autograd with it)."""
    B, H, HKV, M, N, p = 2, 4, 2, 37, 40, 0.3
    q, k, _, dout = _inputs(B, H, HKV, M, N, N, seed=13)
    v = torch.eye(N, dtype=torch.float64).expand(B, HKV, N, N)
    seed = torch.tensor([1234], dtype=torch.int64)
    q32, k32, v32, dout32 = (t.float() for t in (q, k, v, dout))
    out, lse = cpu_attention_forward(q32, k32, v32, config=CONFIGS[2], dropout_p=p, seed=seed)
    again, _ = cpu_attention_forward(q32, k32, v32, config=CONFIGS[1], dropout_p=p, seed=seed)
    other, _ = cpu_attention_forward(q32, k32, v32, dropout_p=p, seed=seed + 1)
    keep = out != 0
    assert torch.equal(keep, again != 0) and (out - again).abs().max().item() < 1e-6  # same draws
    assert not torch.equal(keep, other != 0)
    assert abs(keep.double().mean().item() - (1 - p)) < 0.03
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    probs = torch.softmax(qr @ kr.repeat_interleave(2, 1).transpose(-1, -2) * N ** -0.5, -1)
    ref = (probs * keep / (1 - p)) @ vr.repeat_interleave(2, 1)
    assert (out.double() - ref).abs().max().item() < 1e-5
    assert (lse.double() - torch.logsumexp(qr @ kr.repeat_interleave(2, 1).transpose(-1, -2) * N ** -0.5, -1)
            ).abs().max().item() < 1e-5
    want = torch.autograd.grad(ref, (qr, kr, vr), dout)
    for config in CONFIGS[1:3]:
        got = cpu_attention_backward(dout32, q32, k32, v32, out, lse, config=config, dropout_p=p, seed=seed)
        for g, w in zip(got[:3], want):
            assert (g.double() - w).abs().max().item() <= 2e-5 * (1.0 + w.abs().max().item())


def test_schedule_space_defaults_are_feasible() -> None:
    for head_dim in (40, 64, 80, 128):
        for backward in (False, True):
            space = attention_space(head_dim, backward)
            assert space.is_feasible(space.default_config())
            assert space.check({**space.default_config(), "extra": 1}) is not None
    assert attention_space(64, True, units=1).default_config()["FUSED_DQ"] == int(attention_space(64).default_config()["threads"] <= 1)


def test_bad_input_is_a_clear_error() -> None:
    q = torch.randn(1, 3, 5, 8)
    k = torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="shapes"):
        cpu_attention_forward(q, k, k)
    with pytest.raises(ValueError, match="dtype"):
        cpu_attention_forward(q.half(), q.half(), q.half())


# ----------------------------------------------------------------------------- models


def _attention_kernels(report: Any) -> list[dict[str, Any]]:
    return [k for k in report.kernels if k.get("attention") is not None]


def _train_step(model: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
    """One compiled training step judged against float64: loss, every gradient, attention ran fused."""
    ref = copy.deepcopy(model).double()
    compiled = torch.compile(model, backend="tilewright")
    with collect() as report:
        loss = main_output(compiled(*inputs)).float().pow(2).mean()
        loss.backward()
    torch._dynamo.reset()
    ref_loss = main_output(ref(*inputs)).pow(2).mean()
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) <= 1e-4 * abs(ref_loss.item()) + 1e-6
    worst = max((p.grad.double() - r.grad).abs().max().item() / (r.grad.abs().max().item() + 1e-12)
                for p, r in zip(model.parameters(), ref.parameters()) if r.grad is not None)
    assert worst < 1e-3, worst
    kinds = {(k["attention"], k["status"]) for k in _attention_kernels(report)}
    assert kinds == {("forward", "ran"), ("backward", "ran")}, str(report)
    assert all(g.mode == "cpu" for g in report.graphs)


def _inference(model: torch.nn.Module, inputs: tuple[Any, ...], layers: int) -> None:
    model.eval()
    with torch.no_grad(), collect() as report:
        got = main_output(torch.compile(model, backend="tilewright")(*inputs)).double()
    torch._dynamo.reset()
    with torch.no_grad():
        want = main_output(copy.deepcopy(model).double()(*inputs))
        eager_err = (main_output(model(*inputs)).double() - want).abs().max().item()
    assert (got - want).abs().max().item() <= 10 * eager_err + 1e-5
    assert report.attention_fused == layers, str(report)
    assert all(k["status"] == "ran" for k in _attention_kernels(report))


def _llama() -> tuple[torch.nn.Module, tuple[Any, ...]]:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=101, max_position_embeddings=32,
                                   attn_implementation="sdpa")
    return transformers.LlamaForCausalLM(cfg), (torch.randint(0, 101, (2, 9)),)


def _mistral() -> tuple[torch.nn.Module, tuple[Any, ...]]:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.MistralConfig(vocab_size=99, hidden_size=32, intermediate_size=40, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                                     max_position_embeddings=32, attn_implementation="sdpa")
    return transformers.MistralModel(cfg), (torch.randint(0, 99, (2, 11)),)


@pytest.mark.usefixtures("cpu_target")
@pytest.mark.parametrize("make", [_llama, _mistral], ids=["llama_gqa", "mistral_sliding_window"])
def test_model_inference_and_training_step(make: Any) -> None:
    torch.manual_seed(0)
    model, inputs = make()
    _inference(model, inputs, 1)
    model.train()
    _train_step(model, inputs)
