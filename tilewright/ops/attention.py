"""The ``tilewright::flash_attention`` custom op (and its backward) with registered autograd.

The attention rewrite replaces every matched attention block with a call to
``torch.ops.tilewright.flash_attention``; AOTAutograd then puts one forward node per block in
the forward graph and one ``torch.ops.tilewright.flash_attention_backward`` node in the backward
graph. Here both ops compute their function with a torch reference (math), so a graph that holds
them always runs; a target registers its kernels for the devices it runs on
(:mod:`tilewright.targets.triton.attention.ops`), and compiled graphs call the kernels directly.

Semantics (shapes: q [B, Hq, M, D]; k, v [B, Hkv, N, D] with Hq % Hkv == 0)::

    s   = scale * q @ k^T + bias                      (bias broadcastable to [B, Hq, M, N])
    s   = -inf where not mask, or (causal and j > i + causal_offset)
    p   = softmax(s, -1)   (a row with every key excluded gives p = 0, like SDPA's safe softmax)
    out = dropout(p, dropout_p; seeded by ``seed``) @ v,   lse = logsumexp(s, -1)

``causal_offset`` 0 is SDPA's ``is_causal`` (top-left); N - M aligns bottom-right.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import Tensor


log = logging.getLogger(__name__)

__all__ = ["flash_attention", "flash_attention_backward", "attention_reference", "new_seed", "describe_call"]


def _dropout_keep(seed: Tensor, shape: tuple[int, ...], p: float, device: torch.device) -> Tensor:
    """Reference-path dropout keep-mask, a pure function of ``seed`` (same in fwd and bwd)."""
    gen = torch.Generator().manual_seed(int(seed.reshape(-1)[0].item()))
    return (torch.rand(shape, generator=gen) >= p).to(device)


def _masked_scores(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                   scale: float, causal: bool, causal_offset: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """float32 K and V expanded to the query heads, the masked scaled scores and their log-sum-exp."""
    M, N = q.shape[2], k.shape[2]
    group = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1) if group > 1 else k.float()
    vf = v.float().repeat_interleave(group, dim=1) if group > 1 else v.float()
    s = torch.matmul(q.float(), kf.transpose(-1, -2)) * scale
    if bias is not None:
        s = s + bias.float()
    valid = torch.ones((M, N), dtype=torch.bool, device=q.device)
    if causal:
        valid = torch.arange(N, device=q.device)[None, :] <= torch.arange(M, device=q.device)[:, None] + causal_offset
    if mask is not None:
        valid = valid & mask
    s = s.masked_fill(~valid, float("-inf"))
    return kf, vf, s, torch.logsumexp(s, dim=-1)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None,
                        mask: Optional[Tensor] = None, scale: Optional[float] = None,
                        causal: bool = False, causal_offset: int = 0, dropout_p: float = 0.0,
                        seed: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Math reference of the op (float32 compute): returns (out in q's dtype, lse float32)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    kf, vf, s, lse = _masked_scores(q, k, v, bias, mask, scale, causal, causal_offset)
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    p = torch.where(torch.isinf(lse)[..., None], torch.zeros_like(p), p)
    if dropout_p > 0.0:
        if seed is None:
            raise ValueError("dropout needs a seed tensor")
        keep = _dropout_keep(seed, tuple(p.shape), dropout_p, p.device)
        p = torch.where(keep, p / (1.0 - dropout_p), torch.zeros_like(p))
    out = torch.matmul(p, vf)
    return out.to(q.dtype), lse


def _reference_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                        mask: Optional[Tensor], seed: Optional[Tensor], scale: float, causal: bool,
                        causal_offset: int, dropout_p: float, bias_grad: bool
                        ) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Analytic math backward (autograd is off inside a custom op's implementation)."""
    B, H, M, D = q.shape
    HKV, N = k.shape[1], k.shape[2]
    group = H // HKV
    kf, vf, s, lse = _masked_scores(q, k, v, bias, mask, scale, causal, causal_offset)
    empty = torch.isinf(lse)[..., None]
    p = torch.where(empty, torch.zeros_like(s), torch.exp(s - torch.where(empty, 0.0, lse[..., None])))
    do = dout.float()
    dp = torch.matmul(do, vf.transpose(-1, -2))
    pd = p
    if dropout_p > 0.0:
        assert seed is not None
        keep = _dropout_keep(seed, tuple(p.shape), dropout_p, p.device)
        pd = torch.where(keep, p / (1.0 - dropout_p), torch.zeros_like(p))
        dp = torch.where(keep, dp / (1.0 - dropout_p), torch.zeros_like(dp))
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = (torch.matmul(ds.transpose(-1, -2), q.float()) * scale).reshape(B, HKV, group, N, D).sum(2)
    dv = torch.matmul(pd.transpose(-1, -2), do).reshape(B, HKV, group, N, D).sum(2)
    db = reduce_to_shape(ds, bias.shape).to(bias.dtype) if (bias_grad and bias is not None) else None
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), db


def reduce_to_shape(grad: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Sum ``grad`` over the dims where a tensor of ``shape`` was broadcast to ``grad.shape``."""
    lead = grad.dim() - len(shape)
    if lead:
        grad = grad.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    if dims:
        grad = grad.sum(dim=dims, keepdim=True)
    return grad.reshape(tuple(shape))


@torch.library.custom_op("tilewright::flash_attention", mutates_args=())
def flash_attention(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                    seed: Optional[Tensor], scale: float, causal: bool, causal_offset: int,
                    dropout_p: float) -> tuple[Tensor, Tensor]:
    """Fused attention forward; returns (out [B, Hq, M, D] contiguous, lse [B, Hq, M] float32)."""
    out, lse = attention_reference(q, k, v, bias, mask, scale, causal, causal_offset, dropout_p, seed)
    return out.contiguous(), lse.contiguous()


@flash_attention.register_fake
def _flash_attention_fake(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                          seed: Optional[Tensor], scale: float, causal: bool, causal_offset: int,
                          dropout_p: float) -> tuple[Tensor, Tensor]:
    B, H, M, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, M), dtype=torch.float32)


@torch.library.custom_op("tilewright::flash_attention_backward", mutates_args=())
def flash_attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                             mask: Optional[Tensor], seed: Optional[Tensor], out: Tensor, lse: Tensor,
                             scale: float, causal: bool, causal_offset: int, dropout_p: float,
                             bias_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dq, dk, dv, dbias); dbias is an empty tensor unless ``bias_grad``."""
    dq, dk, dv, db = _reference_backward(dout, q, k, v, bias, mask, seed, scale, causal, causal_offset,
                                         dropout_p, bias_grad and bias is not None)
    return backward_outputs(q, dq, dk, dv, db)


def backward_outputs(q: Tensor, dq: Tensor, dk: Tensor, dv: Tensor, db: Optional[Tensor]) -> tuple[Tensor, ...]:
    """The backward op's results: contiguous gradients, an empty dbias when there is none."""
    if db is None:
        db = q.new_empty((0,))
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), db.contiguous()


@flash_attention_backward.register_fake
def _flash_attention_backward_fake(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor],
                                   mask: Optional[Tensor], seed: Optional[Tensor], out: Tensor, lse: Tensor,
                                   scale: float, causal: bool, causal_offset: int, dropout_p: float,
                                   bias_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    db = bias.new_empty(bias.shape) if (bias_grad and bias is not None) else q.new_empty((0,))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), db


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    q, k, v, bias, mask, seed, scale, causal, causal_offset, dropout_p = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bias, mask, seed, out, lse)
    ctx.attrs = (scale, causal, causal_offset, dropout_p)


def _backward(ctx, dout: Tensor, dlse: Optional[Tensor]):  # type: ignore[no-untyped-def]
    q, k, v, bias, mask, seed, out, lse = ctx.saved_tensors
    scale, causal, causal_offset, dropout_p = ctx.attrs
    bias_grad = bool(bias is not None and ctx.needs_input_grad[3])
    dq, dk, dv, db = torch.ops.tilewright.flash_attention_backward(
        dout, q, k, v, bias, mask, seed, out, lse, scale, causal, causal_offset, dropout_p, bias_grad)
    return dq, dk, dv, (db if bias_grad else None), None, None, None, None, None, None


flash_attention.register_autograd(_backward, setup_context=_setup_context)


def new_seed(device: torch.device | str) -> Tensor:
    """A fresh dropout seed (int64 tensor of one element) drawn from torch's generator."""
    return torch.randint(0, 2**31 - 1, (1,), dtype=torch.int64, device=device)


def describe_call(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], mask: Optional[Tensor],
                  seed: Optional[Tensor], scale: float, causal: bool, causal_offset: int,
                  dropout_p: float) -> dict[str, object]:
    """What one ``flash_attention`` call handles, from its arguments (real, fake or meta tensors).

    For the explain report's kernel list: mask/bias/causal form, GQA ratio, dropout, shapes.
    """
    B, H, M, D = (int(x) for x in q.shape)
    HKV, N = int(k.shape[1]), int(k.shape[2])
    handles = []
    if causal:
        align = "top-left" if causal_offset == 0 else ("bottom-right" if causal_offset == N - M
                                                        else f"offset {causal_offset}")
        handles.append(f"causal ({align})")
    if mask is not None:
        handles.append(f"boolean mask {list(mask.shape)}")
    if bias is not None:
        handles.append(f"additive bias {list(bias.shape)}")
    if H != HKV:
        handles.append(f"grouped-query ratio {H // HKV}")
    if dropout_p:
        handles.append(f"dropout p={dropout_p}")
    return {"B": B, "H": H, "HKV": HKV, "M": M, "N": N, "D": D, "scale": float(scale), "causal": bool(causal),
            "causal_offset": int(causal_offset), "mask": None if mask is None else list(mask.shape),
            "bias": None if bias is None else list(bias.shape), "dropout_p": float(dropout_p),
            "decode_path": M <= 16 and N >= 256 and not dropout_p,
            "handles": "; ".join(handles) or "plain"}
