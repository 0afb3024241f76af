"""Convolution gradients: Triton kernels where they pay off, extern ATen otherwise.

- ``grad_weight``: an implicit-GEMM Triton kernel (``tw_conv_wgrad``) per group:
  ``M`` = output channels, ``N`` = ``(c, kd, kh, kw)``, ``K`` = batch x output pixels; the
  input tile is gathered from ``x`` on the fly.
- ``grad_input``: for stride 1 it *is* a forward convolution of ``grad_out`` with the
  flipped, group-transposed weight and padding ``dil*(k-1) - pad``, run by
  :func:`tilewright.targets.triton.conv.forward.conv_forward`. Strided convolutions (or padding beyond
  ``dil*(k-1)``) use the ``tw_conv_dgrad`` kernel, an implicit GEMM over input pixels that
  masks taps off the stride lattice (``strided="triton"``, default); ``"zero_insert"`` runs
  the forward kernel over a zero-inserted ``grad_out`` and ``"aten"`` an extern call.
- ``grad_bias``: a sum over all but the channel dim (ATen).

:func:`conv_backward` has the signature and results of ``aten.convolution_backward``.

Input-gradient kernel arguments: ``dy_ptr, w_ptr, dx_ptr``, the same sizes, then strides of
``dy``, ``w``, ``dx``. Weight-gradient kernel arguments, in order: ``dy_ptr, x_ptr, gw_ptr``; sizes
``N, C, D, H, W, K_OUT, OD, OH, OW, KD, KH, KW, CG, KG, stride_*, pad_*, dil_*``; strides of
``dy``, ``x``, ``gw`` (5 each, N/C/D/H/W order); constexprs ``BLOCK_M, BLOCK_N, BLOCK_K``.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch

from ....schedule.space import ConfigValue, ScheduleSpace, next_pow2
from ..spaces import product_of, register_budget, tile_within
from .forward import SPACE_VERSION, ConvProblem, as_5d, conv_forward, launch_args, supports
from .space import with_default
from .templates import dot_precision, kernel_signature, module_source, unravel
from ..jit import cdiv
from ..loader import load_kernel

log = logging.getLogger(__name__)

KERNEL_WGRAD = "tw_conv_wgrad"


def _wgrad_body(precision: str) -> str:
    """Body of ``tw_conv_wgrad``; ``precision`` is the ``tl.dot`` keyword."""
    return f'''
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    # -- output channels (rows) and flattened (c, kd, kh, kw) (columns) of this tile
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < KG
    co = g * KG + offs_m
    K_TOT = CG * KD * KH * KW
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < K_TOT
{unravel("offs_n", "t_n", ("kw_n", "kh_n", "kd_n"), ("KW", "KH", "KD"))}
    c_n = g * CG + t_n // KD
    P = N * OD * OH * OW
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    # -- reduction over batch x output pixels
    for p0 in range(0, P, BLOCK_K):
        pp = p0 + offs_k
        m_p = pp < P
{unravel("pp", "t_p", ("ow", "oh", "od"), ("OW", "OH", "OD"), 8)}
        n = (t_p // OD).to(tl.int64)
        dy_off = n * stride_dn + od * stride_dd + oh * stride_dh + ow * stride_dw
        a = tl.load(dy_ptr + co[:, None].to(tl.int64) * stride_dc + dy_off[None, :],
                    mask=mask_m[:, None] & m_p[None, :], other=0.0)
        id_ = (od * stride_d - pad_d)[:, None] + (kd_n * dil_d)[None, :]
        ih = (oh * stride_h - pad_h)[:, None] + (kh_n * dil_h)[None, :]
        iw = (ow * stride_w - pad_w)[:, None] + (kw_n * dil_w)[None, :]
        m_b = (m_p[:, None] & mask_n[None, :] & (id_ >= 0) & (id_ < D) & (ih >= 0) & (ih < H)
               & (iw >= 0) & (iw < W))
        x_off = (n * stride_xn)[:, None] + (c_n.to(tl.int64) * stride_xc)[None, :]
        b = tl.load(x_ptr + x_off + id_ * stride_xd + ih * stride_xh + iw * stride_xw,
                    mask=m_b, other=0.0)
        acc += tl.dot(a, b{precision})
    # -- store grad_weight[co, c, kd, kh, kw]
    gw_off = ((t_n // KD) * stride_gc + kd_n * stride_gd + kh_n * stride_gh + kw_n * stride_gw)
    gw_tile = gw_ptr + co[:, None].to(tl.int64) * stride_gk + gw_off[None, :]
    tl.store(gw_tile, acc.to(gw_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
'''


def wgrad_source(allow_tf32: bool = False) -> str:
    """Source of the weight-gradient kernel ``tw_conv_wgrad``."""
    head = kernel_signature(KERNEL_WGRAD, ["dy_ptr", "x_ptr", "gw_ptr"], ["dn", "xn", "gk"],
                            ["BLOCK_M", "BLOCK_N", "BLOCK_K"])
    return module_source(head, _wgrad_body(dot_precision(allow_tf32)))


def _gradient_gemm_space(kind: str, m: int, n: int) -> ScheduleSpace:
    """Schedule space of a gradient GEMM whose output is ``m`` x ``n`` (tiles capped by its size)."""
    cap_m, cap_n = max(16, next_pow2(m)), max(16, next_pow2(n))
    out_of_range = "accumulator per thread out of range"
    space = ScheduleSpace(kind=kind, params={
        "BLOCK_M": [16, 32, 64, 128], "BLOCK_N": [16, 32, 64, 128], "BLOCK_K": [16, 32, 64],
        "num_warps": [2, 4, 8], "num_stages": [2, 3, 4]},
        constraints=[tile_within({"BLOCK_M": cap_m, "BLOCK_N": cap_n}),
                     register_budget(product_of("BLOCK_M", "BLOCK_N"), 128, out_of_range,
                                     least=4, too_few=out_of_range)],
        version=SPACE_VERSION)
    return with_default(space, {"BLOCK_M": min(64, cap_m), "BLOCK_N": min(64, cap_n), "BLOCK_K": 32,
                                "num_warps": 4, "num_stages": 3})


def wgrad_schedule_space(problem: ConvProblem) -> ScheduleSpace:
    """Schedule space of the weight-gradient GEMM (M=KG, N=CG*taps, K=pixels)."""
    _, n_gemm, k_gemm = problem.gemm
    return _gradient_gemm_space("conv_wgrad", n_gemm, k_gemm)


def conv_weight_grad(grad_out: torch.Tensor, x: torch.Tensor, w_shape: Sequence[int],
                     stride: Any, padding: Any, dilation: Any, groups: int,
                     config: Mapping[str, ConfigValue] | None = None) -> torch.Tensor:
    """``grad_weight`` of a forward convolution, by the Triton weight-gradient kernel."""
    problem = ConvProblem.from_shapes(tuple(x.shape), tuple(w_shape), False, stride, padding,
                                      dilation, groups, str(x.dtype).removeprefix("torch."))
    space = wgrad_schedule_space(problem)
    cfg = space.validate(config) if config is not None else space.default_config()
    gw = torch.empty(list(w_shape), dtype=x.dtype, device=x.device)
    tf32 = x.dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    kernel = load_kernel(wgrad_source(tf32), KERNEL_WGRAD)
    grid = (cdiv(problem.kg, int(cfg["BLOCK_M"])), cdiv(problem.gemm[2], int(cfg["BLOCK_N"])),
            groups)
    kernel[grid](*launch_args(problem, as_5d(grad_out), as_5d(x), as_5d(gw)), **_launch_keywords(cfg))
    return gw


def _launch_keywords(cfg: Mapping[str, ConfigValue]) -> dict[str, int]:
    """A gradient kernel's constexprs and launch options: every key of its (validated) config."""
    return {k: int(v) for k, v in cfg.items()}


KERNEL_DGRAD = "tw_conv_dgrad"


def _dgrad_body(precision: str) -> str:
    """Body of ``tw_conv_dgrad``; ``precision`` is the ``tl.dot`` keyword."""
    return f"""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    # -- input pixels (rows): m = ((n*D + id)*H + ih)*W + iw
    M = N * D * H * W
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
{unravel("offs_m", "t_m", ("iw", "ih", "id_"), ("W", "H", "D"))}
    n = (t_m // D).to(tl.int64)
    # -- input channels of group g (columns)
    offs_c = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_c = offs_c < CG
    c_glob = g * CG + offs_c
    K_TOT = KG * KD * KH * KW
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    # -- reduction over (output channel, tap): dx[i] += dy[(i + pad - r*dil) / s] * w[r]
    for k0 in range(0, K_TOT, BLOCK_K):
        kk = k0 + offs_k
        m_k = kk < K_TOT
{unravel("kk", "t_k", ("kw_k", "kh_k", "kd_k"), ("KW", "KH", "KD"), 8)}
        co = g * KG + t_k // KD
        td = (id_ + pad_d)[:, None] - (kd_k * dil_d)[None, :]
        th = (ih + pad_h)[:, None] - (kh_k * dil_h)[None, :]
        tw = (iw + pad_w)[:, None] - (kw_k * dil_w)[None, :]
        # NOTE: clamp before // and % so floor (interpreter) and C (GPU) semantics agree
        td0 = tl.where(td >= 0, td, 0)
        th0 = tl.where(th >= 0, th, 0)
        tw0 = tl.where(tw >= 0, tw, 0)
        od = td0 // stride_d
        oh = th0 // stride_h
        ow = tw0 // stride_w
        valid = ((td >= 0) & (th >= 0) & (tw >= 0) & (td0 % stride_d == 0) & (th0 % stride_h == 0)
                 & (tw0 % stride_w == 0) & (od < OD) & (oh < OH) & (ow < OW))
        m_a = mask_m[:, None] & m_k[None, :] & valid
        dy_off = (n * stride_dn)[:, None] + (co.to(tl.int64) * stride_dc)[None, :]
        a = tl.load(dy_ptr + dy_off + od * stride_dd + oh * stride_dh + ow * stride_dw,
                    mask=m_a, other=0.0)
        w_off = (co.to(tl.int64) * stride_wk + kd_k * stride_wd + kh_k * stride_wh
                 + kw_k * stride_ww)
        b = tl.load(w_ptr + w_off[:, None] + (offs_c * stride_wc)[None, :],
                    mask=m_k[:, None] & mask_c[None, :], other=0.0)
        acc += tl.dot(a, b{precision})
    # -- store grad_input[n, c, id, ih, iw]
    dx_off = n * stride_xn + id_ * stride_xd + ih * stride_xh + iw * stride_xw
    dx_tile = dx_ptr + dx_off[:, None] + (c_glob.to(tl.int64) * stride_xc)[None, :]
    tl.store(dx_tile, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])
"""


def dgrad_source(allow_tf32: bool = False) -> str:
    """Source of the input-gradient kernel ``tw_conv_dgrad`` (any stride, no zero insertion).

    GEMM per group: ``M`` = input pixels, ``N`` = input channels of the group,
    ``K`` = output channels of the group x taps; taps that do not land on the stride lattice
    are masked out.
    """
    head = kernel_signature(KERNEL_DGRAD, ["dy_ptr", "w_ptr", "dx_ptr"], ["dn", "wk", "xn"],
                            ["BLOCK_M", "BLOCK_N", "BLOCK_K"])
    return module_source(head, _dgrad_body(dot_precision(allow_tf32)))


def dgrad_schedule_space(problem: ConvProblem) -> ScheduleSpace:
    """Schedule space of the input-gradient GEMM (M=input pixels, N=CG, K=KG*taps)."""
    pixels = problem.n * problem.in_size[0] * problem.in_size[1] * problem.in_size[2]
    return _gradient_gemm_space("conv_dgrad", pixels, problem.cg)


def conv_input_grad_direct(grad_out: torch.Tensor, x_shape: Sequence[int], w: torch.Tensor,
                           stride: Any, padding: Any, dilation: Any, groups: int,
                           config: Mapping[str, ConfigValue] | None = None) -> torch.Tensor:
    """``grad_input`` by the ``tw_conv_dgrad`` kernel (any stride, padding, dilation)."""
    problem = ConvProblem.from_shapes(tuple(x_shape), tuple(w.shape), False, stride, padding,
                                      dilation, groups, str(w.dtype).removeprefix("torch."))
    space = dgrad_schedule_space(problem)
    cfg = space.validate(config) if config is not None else space.default_config()
    if grad_out.stride(1) == 1 and grad_out.shape[1] > 1 and not grad_out.is_contiguous():
        perm = [0] + list(range(2, len(x_shape))) + [1]  # channels-last like grad_out
        dx = torch.empty([x_shape[i] for i in perm], dtype=w.dtype, device=w.device).permute(
            [0, len(x_shape) - 1] + list(range(1, len(x_shape) - 1)))
    else:
        dx = torch.empty(list(x_shape), dtype=w.dtype, device=w.device)
    tf32 = w.dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    kernel = load_kernel(dgrad_source(tf32), KERNEL_DGRAD)
    d_, h_, w_ = problem.in_size
    grid = (cdiv(problem.n * d_ * h_ * w_, int(cfg["BLOCK_M"])), cdiv(problem.cg, int(cfg["BLOCK_N"])),
            groups)
    kernel[grid](*launch_args(problem, as_5d(grad_out), as_5d(w), as_5d(dx)), **_launch_keywords(cfg))
    return dx


def _transposed_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """[K, CG, *k] -> [C, KG, *k], spatially flipped: the weight of the input gradient."""
    k_out, cg, *ks = w.shape
    wt = w.reshape(groups, k_out // groups, cg, *ks).transpose(1, 2).reshape(groups * cg,
                                                                             k_out // groups, *ks)
    return wt.flip(list(range(2, w.dim()))).contiguous()


def conv_input_grad(grad_out: torch.Tensor, x_shape: Sequence[int], w: torch.Tensor,
                    stride: Any, padding: Any, dilation: Any, groups: int,
                    strided: str = "triton") -> torch.Tensor:
    """``grad_input`` of a forward convolution (see the module docstring for the policy).

    Args:
        strided: for stride > 1 (or padding > dil*(k-1)): ``"triton"`` (the ``tw_conv_dgrad``
            kernel), ``"zero_insert"`` (forward kernel over a zero-inserted ``grad_out``;
            stride 1 only otherwise) or ``"aten"`` (extern call).
    """
    problem = ConvProblem.from_shapes(tuple(x_shape), tuple(w.shape), False, stride, padding,
                                      dilation, groups)
    keep = slice(3 - problem.dims, 3)
    dil, pad, ks = problem.dilation[keep], problem.padding[keep], problem.kernel[keep]
    strides = problem.stride[keep]
    new_pad = [d * (k - 1) - p for d, k, p in zip(dil, ks, pad)]
    simple = min(new_pad) >= 0 and max(strides) == 1
    if not simple and strided == "triton":
        return conv_input_grad_direct(grad_out, x_shape, w, stride, padding, dilation, groups)
    if min(new_pad) < 0 or (not simple and strided != "zero_insert"):
        return _aten_grads(grad_out, x_shape, w, stride, padding, dilation, groups,
                           (True, False, False))[0]
    dy = grad_out
    if max(strides) > 1:
        # place grad_out on a stride-s lattice; trailing rows/cols the forward never read stay 0
        ins = problem.in_size[keep]
        full = [i + 2 * p - d * (k - 1) for i, p, d, k in zip(ins, pad, dil, ks)]
        dy = grad_out.new_zeros([grad_out.shape[0], grad_out.shape[1], *full])
        dy[(slice(None), slice(None), *(slice(0, None, s) for s in strides))] = grad_out
    return conv_forward(dy, _transposed_weight(w, groups), None, 1, new_pad, list(dil), groups)


def _aten_grads(grad_out: torch.Tensor, x_shape: Sequence[int], w: torch.Tensor, stride: Any,
                padding: Any, dilation: Any, groups: int,
                mask: tuple[bool, bool, bool]) -> tuple[Any, Any, Any]:
    dims = len(x_shape) - 2
    assert not mask[1], "the weight gradient through ATen needs the real input"
    # NOTE: only the input's shape matters for grad_input; a stride-0 tensor costs one element
    x_meta = torch.empty_strided(list(x_shape), [0] * len(x_shape), dtype=w.dtype, device=w.device)
    return torch.ops.aten.convolution_backward(
        grad_out, x_meta, w, None, _listify(stride, dims), _listify(padding, dims),
        _listify(dilation, dims), False, [0] * dims, groups, list(mask))


def _listify(v: Any, dims: int) -> list[int]:
    return [int(v)] * dims if isinstance(v, int) else [int(e) for e in v]


def conv_backward(grad_out: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                  bias_sizes: Sequence[int] | None, stride: Sequence[int],
                  padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                  output_padding: Sequence[int], groups: int,
                  output_mask: Sequence[bool]) -> tuple[Any, Any, Any]:
    """Drop-in for ``aten.convolution_backward``: (grad_input, grad_weight, grad_bias).

    Unsupported cases (transposed, float64, ...) run the ATen op itself.
    """
    reason = supports(tuple(x.shape), tuple(w.shape), stride, padding, dilation, transposed,
                      output_padding, groups, x.dtype)
    if reason or grad_out.dtype != x.dtype:
        log.debug("convolution_backward via ATen: %s", reason or "dtype mismatch")
        return torch.ops.aten.convolution_backward(grad_out, x, w, bias_sizes, stride, padding,
                                                   dilation, transposed, output_padding,
                                                   groups, list(output_mask))
    gi = gw = gb = None
    if output_mask[0]:
        gi = conv_input_grad(grad_out, tuple(x.shape), w, stride, padding, dilation, groups)
    if output_mask[1]:
        gw = conv_weight_grad(grad_out, x, tuple(w.shape), stride, padding, dilation, groups)
    if output_mask[2]:
        gb = grad_out.sum(dim=[d for d in range(grad_out.dim()) if d != 1])
    return gi, gw, gb
