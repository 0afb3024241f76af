"""Pattern tests: every attention form is fused (and stays exact); every near-miss is left alone.

Each positive case is a small function written the way models write attention; it is compiled
with the attention rewrite + AOTAutograd and must (1) fuse exactly one block with the expected
attributes and (2) match eager in outputs and gradients. Each negative case is one step away
from a pattern and must not be fused.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from attn_helpers import BWD, FWD, compile_and_run

B, H, M, N, D = 2, 2, 5, 7, 8
NEG = torch.finfo(torch.float32).min


def qkv(m: int = M, n: int = N, hq: int = H, hkv: int = H, d: int = D) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, hq, m, d, generator=g, requires_grad=True),
            torch.randn(B, hkv, n, d, generator=g, requires_grad=True),
            torch.randn(B, hkv, n, d, generator=g, requires_grad=True)]


def pad_mask(n: int = N) -> torch.Tensor:
    keep = torch.ones(B, n, dtype=torch.bool)
    keep[1, n - 2:] = False
    return keep


def repeat_kv(x: torch.Tensor, g: int) -> torch.Tensor:
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, g, s, d).reshape(b, h * g, s, d)


# ----------------------------------------------------------------------------- positive forms
# Each entry: name -> (fn, args factory, expected info subset)

def sdpa_plain(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def sdpa_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa_bool_mask(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=pad_mask()[:, None, None, :])


def sdpa_float_mask(q, k, v, bias):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)


def sdpa_gqa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def sdpa_repeat_kv(q, k, v):
    return F.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), is_causal=True)


def mul_scale(q, k, v):
    return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * D ** -0.5, dim=-1) @ v


def div_scale(q, k, v):
    return F.softmax((q @ k.transpose(2, 3)) / math.sqrt(D), dim=3) @ v


def scale_on_q(q, k, v):
    return torch.softmax((q * 0.3) @ k.transpose(-2, -1), -1) @ v


def scale_on_k(q, k, v):
    s = D ** -0.25
    return torch.softmax((q * s) @ (k.transpose(-2, -1) * s), -1) @ v


def full_tensor_scale(q, k, v):  # GPT-2 style: divide by a 0-d tensor made with torch.full
    s = q @ k.transpose(-1, -2)
    s = s / torch.full([], D ** 0.5, dtype=s.dtype, device=s.device)
    return s.softmax(-1) @ v


def additive_padding(q, k, v, am):  # BERT v4 style: (1 - mask) * -10000 added to the scores
    ext = (1.0 - am[:, None, None, :].float()) * -10000.0
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + ext, -1) @ v


def hf_where_mask(q, k, v):  # HF masking utils: where(keep, 0, finfo.min) added
    add = torch.where(pad_mask()[:, None, None, :], 0.0, NEG)
    return torch.softmax(q @ k.transpose(-1, -2) * 0.35 + add, -1) @ v


def bool_masked_fill(q, k, v):
    s = (q @ k.transpose(-1, -2)) * 0.35
    return torch.softmax(s.masked_fill(~pad_mask()[:, None, None, :], float("-inf")), -1) @ v


def where_keep(q, k, v):
    s = (q @ k.transpose(-1, -2)) * 0.35
    return torch.softmax(torch.where(pad_mask()[:, None, None, :], s, NEG), -1) @ v


def tril_causal(q, k, v):
    tri = torch.tril(torch.ones(M, N))
    s = (q @ k.transpose(-1, -2)) * 0.35
    return torch.softmax(s.masked_fill(tri == 0, float("-inf")), -1) @ v


def triu_bool_causal(q, k, v):
    excl = torch.triu(torch.ones(M, N, dtype=torch.bool), diagonal=1)
    return torch.softmax((q @ k.transpose(-1, -2)).masked_fill(excl, float("-inf")), -1) @ v


def arange_bottom_right(q, k, v):
    i = torch.arange(M)[:, None] + (N - M)
    j = torch.arange(N)[None, :]
    return torch.softmax(torch.where(j <= i, q @ k.transpose(-1, -2), NEG), -1) @ v


def additive_triu_causal(q, k, v):
    bias = torch.triu(torch.full((M, N), float("-inf")), diagonal=1)
    return torch.softmax(q @ k.transpose(-1, -2) * 0.35 + bias, -1) @ v


def causal_and_padding(q, k, v):  # HF create_causal_mask: causal & padding, as additive where
    causal = torch.arange(N)[None, None, None, :] <= torch.arange(M)[None, None, :, None]
    keep = causal & pad_mask()[:, None, None, :]
    add = torch.where(keep, 0.0, NEG)
    return torch.softmax(q @ k.transpose(-1, -2) * 0.35 + add, -1) @ v


class RelPosAttention(torch.nn.Module):
    """T5/Swin-style learned relative-position bias, added to the scores."""

    def __init__(self) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(M + N, H))

    def forward(self, q, k, v):
        rel = torch.arange(N)[None, :] - torch.arange(M)[:, None] + M
        bias = self.table[rel].permute(2, 0, 1)[None]  # [1, H, M, N]
        return torch.softmax(q @ k.transpose(-1, -2) * 0.35 + bias, -1) @ v


def alibi(q, k, v):
    slopes = torch.tensor([2.0 ** -1, 2.0 ** -2])[:, None, None]
    dist = (torch.arange(N)[None, :] - torch.arange(M)[:, None]).float()
    return torch.softmax(q @ k.transpose(-1, -2) * 0.35 + slopes * dist, -1) @ v


def explicit_gqa_expand(q, k, v):
    return torch.softmax(q @ repeat_kv(k, 2).transpose(2, 3) * 0.35, -1) @ repeat_kv(v, 2)


def explicit_gqa_interleave(q, k, v):
    kk, vv = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    return torch.softmax(q @ kk.transpose(2, 3) * 0.35, -1) @ vv


def fp32_softmax_casts(q, k, v):
    s = (q @ k.transpose(-1, -2)) * 0.35
    return F.softmax(s.float(), dim=-1, dtype=torch.float32).type_as(v) @ v


def pretransposed_k(q, k, v):  # K produced directly as [B, H, D, N] by a permute
    kt = k.permute(0, 1, 3, 2).contiguous()
    return torch.softmax(q @ kt * 0.35, -1) @ v


def dropout_p0_train(q, k, v):
    return F.dropout(torch.softmax(q @ k.transpose(-1, -2) * 0.35, -1), p=0.0, training=True) @ v


def bshd_layout(x, y, z):  # q/k/v as transposed views of [B, S, H, D]
    q, k, v = (t.transpose(1, 2) for t in (x, y, z))
    return torch.softmax(q @ k.transpose(-1, -2) * 0.35, -1) @ v


def bmm_3d(q, k, v):  # [B*H, S, D] with torch.bmm, scale as division
    q3, k3, v3 = (t.reshape(B * H, t.shape[2], D) for t in (q, k, v))
    p = torch.softmax(torch.bmm(q3, k3.transpose(1, 2)) / math.sqrt(D), dim=-1)
    return torch.bmm(p, v3).reshape(B, H, M, D)


def half_hf_casts(q, k, v):  # fp16 with an fp32 softmax and a cast back (HF eager style)
    q, k, v = q.half(), k.half(), v.half()
    s = (q @ k.transpose(-1, -2)) * 0.35
    p = F.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    return (p @ v).float()


def einsum_form(q, k, v):
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * 0.35
    return torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v)


def baddbmm_alibi(q, k, v):  # BLOOM: alibi.baddbmm(q, kT, beta=1, alpha=1/sqrt(d)) on [B*H, S, D]
    slopes = torch.tensor([0.5, 0.25]).repeat(B)[:, None, None]
    alibi = slopes * torch.arange(N, dtype=torch.float32)[None, None, :]  # [B*H, 1, N]
    q3, k3, v3 = (t.reshape(B * H, t.shape[2], D) for t in (q, k, v))
    s = alibi.baddbmm(q3, k3.transpose(1, 2), beta=1.0, alpha=D ** -0.5)
    return torch.bmm(torch.softmax(s, -1), v3).reshape(B, H, M, D)


def _bias_args() -> list[torch.Tensor]:
    return qkv() + [torch.randn(1, H, M, N, requires_grad=True)]


def _am_args() -> list[torch.Tensor]:
    return qkv() + [pad_mask().long()]


def _bshd_args() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(B, n, H, D, generator=g, requires_grad=True) for n in (M, N, N)]


POSITIVE: dict[str, tuple[Callable[..., Any], Callable[[], list[Any]], dict[str, Any]]] = {
    "sdpa_plain": (sdpa_plain, qkv, {"form": "sdpa", "causal": False}),
    "sdpa_causal": (sdpa_causal, qkv, {"causal": True, "causal_offset": 0}),
    "sdpa_bool_mask": (sdpa_bool_mask, qkv, {"mask_kind": "bool", "mask_shapes": [[B, 1, 1, N]]}),
    "sdpa_float_mask": (sdpa_float_mask, _bias_args, {"bias_kind": "additive", "scale": 0.3}),
    "sdpa_gqa": (sdpa_gqa, lambda: qkv(hq=4, hkv=2), {"gqa_ratio": 2}),
    "sdpa_repeat_kv": (sdpa_repeat_kv, lambda: qkv(hq=4, hkv=2),
                       {"gqa_ratio": 2, "gqa_form": "expand+reshape", "causal": True}),
    "mul_scale": (mul_scale, qkv, {"form": "explicit", "scale": D ** -0.5}),
    "div_scale": (div_scale, qkv, {"scale": 1 / math.sqrt(D)}),
    "scale_on_q": (scale_on_q, qkv, {"scale": 0.3}),
    "scale_on_k": (scale_on_k, qkv, {"scale": D ** -0.5}),
    "full_tensor_scale": (full_tensor_scale, qkv, {"scale": D ** -0.5}),
    "additive_padding": (additive_padding, _am_args, {"bias_kind": "additive", "mask_kind": "none"}),
    "hf_where_mask": (hf_where_mask, qkv, {"mask_kind": "bool", "bias_kind": "none"}),
    "bool_masked_fill": (bool_masked_fill, qkv, {"mask_kind": "bool"}),
    "where_keep": (where_keep, qkv, {"mask_kind": "bool"}),
    "tril_causal": (tril_causal, qkv, {"causal": True, "causal_offset": 0, "mask_kind": "none"}),
    "triu_bool_causal": (triu_bool_causal, qkv, {"causal": True, "causal_offset": 0, "mask_kind": "none"}),
    "arange_bottom_right": (arange_bottom_right, qkv,
                            {"causal": True, "causal_offset": N - M, "causal_alignment": "bottom-right"}),
    "additive_triu_causal": (additive_triu_causal, qkv, {"causal": True, "bias_kind": "none"}),
    "causal_and_padding": (causal_and_padding, qkv,
                           {"causal": True, "mask_kind": "bool", "mask_shapes": [[B, 1, 1, N]]}),
    "relative_position_bias": (RelPosAttention(), qkv, {"bias_kind": "additive", "bias_shapes": [[1, H, M, N]]}),
    "alibi": (alibi, qkv, {"bias_kind": "additive", "bias_shapes": [[H, M, N]]}),
    "explicit_gqa_expand": (explicit_gqa_expand, lambda: qkv(hq=4, hkv=2), {"gqa_ratio": 2}),
    "explicit_gqa_interleave": (explicit_gqa_interleave, lambda: qkv(hq=4, hkv=2),
                                {"gqa_ratio": 2, "gqa_form": "repeat_interleave"}),
    "fp32_softmax_casts": (fp32_softmax_casts, qkv, {"scale": 0.35}),
    "pretransposed_k": (pretransposed_k, qkv, {"scale": 0.35}),
    "dropout_p0_train": (dropout_p0_train, qkv, {"dropout_p": 0.0}),
    "bshd_layout": (bshd_layout, _bshd_args, {"layouts": {"q": "BSHD", "k": "BSHD", "v": "BSHD"}}),
    "bmm_3d": (bmm_3d, qkv, {"form": "explicit_bmm", "scale": 1 / math.sqrt(D)}),
    "einsum": (einsum_form, qkv, {"form": "explicit_einsum", "scale": 0.35}),
    "baddbmm_alibi": (baddbmm_alibi, qkv, {"form": "explicit_baddbmm_bmm", "scale": D ** -0.5,
                                           "bias_kind": "additive"}),
}


def _grads(out: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    w = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    return list(torch.autograd.grad((out * w).sum(), leaves))


@pytest.mark.parametrize("name", sorted(POSITIVE))
def test_form_is_fused_and_exact(name: str) -> None:
    fn, make_args, expect = POSITIVE[name]
    args = make_args()
    got, cap = compile_and_run(fn, *args)
    assert len(cap.infos) == 1, f"expected one fused block, got {cap.infos}"
    info = cap.infos[0]
    for key, value in expect.items():
        if isinstance(value, float):
            assert info[key] == pytest.approx(value), (key, info)
        else:
            assert info[key] == value, (key, info)
    assert cap.count(FWD) == 1
    want = fn(*args)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    if isinstance(fn, torch.nn.Module):
        leaves += list(fn.parameters())
    torch.testing.assert_close(_grads(got, leaves), _grads(want, leaves), rtol=1e-4, atol=1e-5)
    assert cap.count(BWD, "bw") == 1


def test_half_precision_with_fp32_softmax() -> None:
    args = qkv(d=16)
    got, cap = compile_and_run(half_hf_casts, *args)
    assert len(cap.infos) == 1
    torch.testing.assert_close(got, half_hf_casts(*args), rtol=2e-3, atol=2e-3)


def test_dropout_in_training_is_fused_with_seeded_dropout() -> None:
    def fn(q, k, v):
        return F.dropout(torch.softmax(q @ k.transpose(-1, -2) * 0.35, -1), p=0.25, training=True) @ v

    torch.manual_seed(0)
    q, k, v = qkv(m=16, n=16, d=16)
    out, cap = compile_and_run(fn, q, k, v)
    assert len(cap.infos) == 1 and cap.infos[0]["dropout_p"] == 0.25
    assert torch.isfinite(out).all()
    no_drop = torch.softmax(q @ k.transpose(-1, -2) * 0.35, -1) @ v
    assert not torch.allclose(out, no_drop)  # dropout applied
    grads = torch.autograd.grad(out.sum(), [q, k, v])
    assert all(torch.isfinite(g).all() for g in grads)
    assert cap.count(BWD, "bw") == 1


# ----------------------------------------------------------------------------- near misses


def nm_softmax_dim(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2), dim=-2) @ v


def nm_probs_returned(q, k, v):
    p = torch.softmax(q @ k.transpose(-1, -2), -1)
    return p @ v, p


def nm_scores_returned(q, k, v):
    s = q @ k.transpose(-1, -2) * 0.35
    return torch.softmax(s, -1) @ v, s


def nm_head_mask(q, k, v):
    hm = torch.tensor([1.0, 0.5])[None, :, None, None]
    return (torch.softmax(q @ k.transpose(-1, -2), -1) * hm) @ v


class NmLearnedScale(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, q, k, v):
        return torch.softmax(q @ k.transpose(-1, -2) * self.logit_scale, -1) @ v


def nm_small_fill(q, k, v):
    s = q @ k.transpose(-1, -2)
    return torch.softmax(s.masked_fill(~pad_mask()[:, None, None, :], -1.0), -1) @ v


def nm_where_zero_fill(q, k, v):
    s = q @ k.transpose(-1, -2)
    return torch.softmax(torch.where(pad_mask()[:, None, None, :], s, 0.0), -1) @ v


def nm_dropout_on_scores(q, k, v):
    return torch.softmax(F.dropout(q @ k.transpose(-1, -2), 0.2, training=True), -1) @ v


def nm_add_after_softmax(q, k, v):
    return (torch.softmax(q @ k.transpose(-1, -2), -1) + 1e-3) @ v


def nm_negative_scale(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) * -0.5, -1) @ v


def nm_downcast_scores(q, k, v):
    return torch.softmax((q @ k.transpose(-1, -2)).half(), -1).float() @ v


def nm_transposed_probs(q, k, v):
    p = torch.softmax(q @ k.transpose(-1, -2), -1)  # [B, H, M, N] with M == N below
    return p.transpose(-1, -2) @ v


def nm_mask_value_tensor(q, k, v, fill):
    s = q @ k.transpose(-1, -2)
    return torch.softmax(s.masked_fill(~pad_mask()[:, None, None, :], fill), -1) @ v


def nm_log_softmax(q, k, v):
    return torch.log_softmax(q @ k.transpose(-1, -2), -1) @ v


def nm_einsum_scores_transposed(q, k, v):  # scores laid out [.., key, query]: softmax over queries
    s = torch.einsum("bhqd,bhkd->bhkq", q, k)
    return torch.einsum("bhkq,bhkd->bhqd", s.softmax(-1), v)


def nm_mask_after_softmax(q, k, v):
    p = torch.softmax(q @ k.transpose(-1, -2), -1)
    return p.masked_fill(~pad_mask()[:, None, None, :], 0.0) @ v


NEGATIVE: dict[str, tuple[Callable[..., Any], Callable[[], list[Any]]]] = {
    "softmax_over_queries": (nm_softmax_dim, lambda: qkv(m=N)),
    "probabilities_returned": (nm_probs_returned, qkv),
    "scores_returned": (nm_scores_returned, qkv),
    "head_mask_on_probabilities": (nm_head_mask, qkv),
    "learned_scale": (NmLearnedScale(), qkv),
    "masked_fill_small_value": (nm_small_fill, qkv),
    "where_fill_zero": (nm_where_zero_fill, qkv),
    "dropout_on_scores": (nm_dropout_on_scores, qkv),
    "add_after_softmax": (nm_add_after_softmax, qkv),
    "negative_scale": (nm_negative_scale, qkv),
    "downcast_scores": (nm_downcast_scores, qkv),
    "transposed_probabilities": (nm_transposed_probs, lambda: qkv(m=N)),
    "mask_fill_value_tensor": (nm_mask_value_tensor, lambda: qkv() + [torch.tensor(-1e9)]),
    "log_softmax": (nm_log_softmax, qkv),
    "mask_after_softmax": (nm_mask_after_softmax, qkv),
    "einsum_scores_transposed": (nm_einsum_scores_transposed, lambda: qkv(m=N)),
}


@pytest.mark.parametrize("name", sorted(NEGATIVE))
def test_near_miss_is_not_rewritten(name: str) -> None:
    fn, make_args = NEGATIVE[name]
    args = make_args()
    got, cap = compile_and_run(fn, *args)
    assert cap.infos == [], cap.infos
    assert cap.count(FWD) == 0
    if name != "dropout_on_scores":  # random: compiled and eager draw different masks
        torch.testing.assert_close(got, fn(*args))


# ----------------------------------------------------------------------------- near misses of sub-forms


def nm_tiled_repeat(q, k, v):  # k.repeat tiles heads (h -> h % Hkv): not a GQA interleave
    return torch.softmax(q @ k.repeat(1, 2, 1, 1).transpose(2, 3), -1) @ v.repeat(1, 2, 1, 1)


def nm_tril_diagonal_1(q, k, v):  # tril(ones, 1) is causal shifted by one: offset 1, not top-left
    tri = torch.tril(torch.ones(M, N, dtype=torch.bool), diagonal=1)
    return torch.softmax((q @ k.transpose(-1, -2)).masked_fill(~tri, float("-inf")), -1) @ v


def nm_anti_causal(q, k, v):  # j >= i keeps the upper triangle: a mask, not causal
    keep = torch.arange(N)[None, :] >= torch.arange(M)[:, None]
    return torch.softmax(torch.where(keep, q @ k.transpose(-1, -2), NEG), -1) @ v


def nm_buffer_mask(q, k, v, tri):  # a causal-looking mask read from data: streamed, not assumed causal
    return torch.softmax(torch.where(tri, q @ k.transpose(-1, -2), NEG), -1) @ v


SUBFORM: dict[str, tuple[Callable[..., Any], Callable[[], list[Any]], dict[str, Any]]] = {
    "tiled_repeat_is_not_gqa": (nm_tiled_repeat, lambda: qkv(hq=4, hkv=2), {"gqa_ratio": 1}),
    "tril_diagonal_1": (nm_tril_diagonal_1, qkv, {"causal": True, "causal_offset": 1}),
    "anti_causal_is_a_mask": (nm_anti_causal, qkv, {"causal": False, "mask_kind": "bool"}),
    "buffer_mask_is_data": (nm_buffer_mask, lambda: qkv() + [torch.ones(M, N, dtype=torch.bool).tril()],
                            {"causal": False, "mask_kind": "bool"}),
}


@pytest.mark.parametrize("name", sorted(SUBFORM))
def test_sub_form_near_miss_keeps_general_path(name: str) -> None:
    fn, make_args, expect = SUBFORM[name]
    args = make_args()
    got, cap = compile_and_run(fn, *args)
    assert len(cap.infos) == 1
    for key, value in expect.items():
        assert cap.infos[0][key] == value, (key, cap.infos[0])
    torch.testing.assert_close(got, fn(*args), rtol=1e-5, atol=1e-5)


def nm_fill_scaled_down(q, k, v):  # masked with -2e4, then scaled by 0.1: fill -2e3 no longer excludes
    s = (q @ k.transpose(-1, -2)).masked_fill(~pad_mask()[:, None, None, :], -2.0e4)
    return torch.softmax(s * 0.1, -1) @ v


def test_fill_weakened_by_later_scale_is_not_rewritten() -> None:
    got, cap = compile_and_run(nm_fill_scaled_down, *qkv())
    assert cap.infos == []
    torch.testing.assert_close(got, nm_fill_scaled_down(*qkv()))


def test_decode_shape_in_inference_uses_split_kernel() -> None:
    """A 1-token query over 300 cached keys (GQA, no grad) runs through the fused op's decode path."""
    from tilewright.ops.attention import describe_call

    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 4, 1, 16, generator=g)
    k = torch.randn(1, 2, 300, 16, generator=g)
    v = torch.randn(1, 2, 300, 16, generator=g)
    with torch.no_grad():
        got, cap = compile_and_run(explicit_gqa_expand, q, k, v)
    assert len(cap.infos) == 1 and cap.infos[0]["gqa_ratio"] == 2
    node = next(n for gm in cap.fw_graphs for n in gm.graph.nodes if n.target is FWD)
    vals = [a.meta["val"] if isinstance(a, torch.fx.Node) else a for a in node.args]
    assert describe_call(*vals)["decode_path"]
    torch.testing.assert_close(got, explicit_gqa_expand(q, k, v), rtol=1e-5, atol=1e-5)


def test_dynamic_shapes_are_fused_for_every_length() -> None:
    """After a length change Dynamo recompiles with symbolic lengths; that graph is re-traced
    symbolically and fused too, and then serves every further length."""
    def fn(q, k, v):
        return torch.softmax(q @ repeat_kv(k, 2).transpose(-1, -2) * 0.35, -1) @ repeat_kv(v, 2)

    torch._dynamo.reset()
    from attn_helpers import make_backend

    backend, cap = make_backend()
    compiled = torch.compile(fn, backend=backend)  # automatic dynamic shapes
    for m, n in ((5, 7), (9, 13), (6, 17)):
        q, k, v = qkv(m=m, n=n, hq=4, hkv=2)
        torch.testing.assert_close(compiled(q, k, v), fn(q, k, v), rtol=1e-5, atol=1e-5)
    assert len(cap.infos) >= 2 and all(i["gqa_ratio"] == 2 for i in cap.infos)  # static, then symbolic
    assert isinstance(cap.infos[-1]["shape"]["M"], str)  # symbolic length
