"""Triton source generators for convolution: an implicit-GEMM template and a direct kernel.

Every convolution is generated as a 3-D convolution over 5-D ``[N, C, D, H, W]`` views;
1-D and 2-D problems are mapped onto it with unit ``D`` (and ``H``) dimensions, which leaves
the output-pixel order unchanged.

Kernel-argument convention (both kernels, in this order):

1. pointers: ``x_ptr, w_ptr``
2. sizes: ``N, C, D, H, W, K_OUT, OD, OH, OW, KD, KH, KW, CG, KG`` (``CG``/``KG`` = input /
   output channels per group), then ``stride_d, stride_h, stride_w, pad_d, pad_h, pad_w,
   dil_d, dil_h, dil_w``
3. strides: ``stride_xn, stride_xc, stride_xd, stride_xh, stride_xw`` and
   ``stride_wk, stride_wc, stride_wd, stride_wh, stride_ww``
4. the epilogue's parameters (:attr:`Epilogue.params`, in order)
5. UPPER_CASE constexpr tile parameters, named exactly as the schedule-space keys
   (``BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M`` for the GEMM, ``BLOCK_M, BLOCK_N`` for the direct
   kernel). ``K_ORDER`` is a schedule key that selects the template text; ``num_warps`` and
   ``num_stages`` are launch options.

Names an epilogue may read (all computed before it runs):

- ``acc``: ``[BLOCK_M, BLOCK_N]`` float32 accumulator (the raw convolution, no bias)
- ``offs_m``, ``mask_m``: ``[BLOCK_M]`` output-pixel index ``((n*OD+od)*OH+oh)*OW+ow`` and mask
- ``offs_n``, ``mask_n``: ``[BLOCK_N]`` global output-channel index and mask
- ``n_idx, od_idx, oh_idx, ow_idx``: ``[BLOCK_M]`` decomposition of ``offs_m``
- 2-D aliases, as in the matmul template: ``rm``/``rmask`` (``[BLOCK_M, 1]``), ``rn``/``rnmask``
  (``[1, BLOCK_N]``), ``n_i, od_i, oh_i, ow_i`` (``[BLOCK_M, 1]``); an output element
  ``y[n, c, (d,) (h,) w]`` of the tile is at index ``(n_i, rn, (od_i,) (oh_i,) ow_i)``

The epilogue must store its results itself (see :func:`default_epilogue`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..source import KERNEL_HEADER

KERNEL_IGEMM = "tw_conv_igemm"
KERNEL_DIRECT = "tw_conv_direct"

_SIZE_ARGS = ("N, C, D, H, W, K_OUT, OD, OH, OW, KD, KH, KW, CG, KG,\n"
              "    stride_d, stride_h, stride_w, pad_d, pad_h, pad_w, dil_d, dil_h, dil_w,")


@dataclass
class Epilogue:
    """Code run on the finished accumulator; it stores the results itself.

    Attributes:
        params: extra kernel parameters (pointer / stride / scalar names) appended to the
            signature after the tensor strides.
        lines: kernel code (no indentation needed) using the names listed in the module
            docstring.
        fused: human-readable names of what the epilogue fused ("bias", "relu", "add", ...),
            shown by explain.
    """

    params: list[str]
    lines: list[str]
    fused: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Hash of the epilogue's text (part of a kernel's fingerprint)."""
        text = "\n".join(self.params) + "\x00" + "\n".join(self.lines)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def tensor_params(prefix: str) -> list[str]:
    """Kernel parameter names for a 5-D tensor ``prefix``: pointer, then N/C/D/H/W strides."""
    return [f"{prefix}_ptr"] + [f"stride_{prefix}{d}" for d in "ncdhw"]


def pixel_offset(prefix: str) -> str:
    """Expression of the ``[BLOCK_M]`` pixel offset into tensor ``prefix`` (int64)."""
    return (f"(n_idx.to(tl.int64) * stride_{prefix}n + od_idx * stride_{prefix}d"
            f" + oh_idx * stride_{prefix}h + ow_idx * stride_{prefix}w)")


def tile_offset(prefix: str) -> str:
    """Expression of the ``[BLOCK_M, BLOCK_N]`` offset into an output-shaped tensor ``prefix``."""
    return f"({pixel_offset(prefix)}[:, None] + offs_n[None, :] * stride_{prefix}c)"


def default_epilogue(has_bias: bool) -> Epilogue:
    """Add the bias (when given) and store ``acc`` into ``out`` through its strides.

    Parameters: ``out_ptr, stride_on, stride_oc, stride_od, stride_oh, stride_ow`` then
    ``bias_ptr`` when ``has_bias``. Works for any output layout (NCHW, channels-last).
    """
    params = tensor_params("o") + (["bias_ptr"] if has_bias else [])
    params[0] = "out_ptr"
    lines: list[str] = []
    if has_bias:
        lines += ["bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)",
                  "acc = acc + bias[None, :]"]
    lines += store_lines("out_ptr", "o", "acc")
    return Epilogue(params=params, lines=lines, fused=["bias"] if has_bias else [])


def store_lines(ptr: str, prefix: str, value: str) -> list[str]:
    """Lines storing ``value`` ([BLOCK_M, BLOCK_N]) into ``ptr`` with strides ``stride_<prefix>*``."""
    return [f"{ptr}_tile = {ptr} + {tile_offset(prefix)}",
            f"tl.store({ptr}_tile, {value}.to({ptr}.dtype.element_ty),"
            " mask=mask_m[:, None] & mask_n[None, :])"]


def _indent(lines: list[str], n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line for line in lines)


def kernel_signature(name: str, pointers: list[str], strided: list[str], constexprs: list[str],
                     extra: str | None = None) -> str:
    """``def name(...):`` in the argument order of the convention above.

    Args:
        pointers: the tensor pointers (``["x_ptr", "w_ptr"]``).
        strided: one entry per tensor whose 5 strides follow the sizes: its stride prefix and
            leading dim, e.g. ``"xn"`` (``stride_xn, stride_xc, ..., stride_xw``) or ``"wk"``.
        constexprs: the constexpr tile parameters.
        extra: a line of further parameters (the epilogue's) before the constexprs.
    """
    strides = [", ".join(f"stride_{t[0]}{d}" for d in t[1] + "cdhw") + "," for t in strided]
    lines = [", ".join(pointers) + ",", _SIZE_ARGS, *strides, *([extra] if extra is not None else []),
             ", ".join(f"{c}: tl.constexpr" for c in constexprs) + ","]
    return f"def {name}(\n" + "".join(f"    {line}\n" for line in lines) + "):"


def module_source(head: str, body: str) -> str:
    """The source of a kernel module: Triton's imports, the kernel's signature and its body."""
    return f"{KERNEL_HEADER}{head}{body}"


def dot_precision(allow_tf32: bool) -> str:
    """The ``tl.dot`` keyword for float32 inputs: IEEE unless TF32 is allowed."""
    return "" if allow_tf32 else ', input_precision="ieee"'


def unravel(index: str, rest: str, digits: tuple[str, str, str], sizes: tuple[str, str, str],
            indent: int = 4) -> str:
    """Lines splitting the flat ``index`` into its three fastest-varying digits.

    ``digits[i]`` gets the digit of size ``sizes[i]`` (fastest first); ``rest // sizes[2]`` is
    what remains (the slowest part, e.g. the batch index), for the caller's next line.
    """
    (d0, d1, d2), (s0, s1, s2) = digits, sizes
    return _indent([f"{d0} = {index} % {s0}", f"{rest} = {index} // {s0}", f"{d1} = {rest} % {s1}",
                    f"{rest} = {rest} // {s1}", f"{d2} = {rest} % {s2}"], indent)


def _tap_loops(indent: int, row_mask: str = "") -> str:
    """Headers of the loops over the kernel taps (kd, kh, kw) around an input pixel.

    Inside the innermost loop (``indent + 12``), ``id_, ih, iw`` is the tap's input pixel and
    ``m_pix`` whether it lies inside the input (and satisfies ``row_mask``, e.g. ``"mask_m & "``).
    """
    return _indent(["for kd in range(KD):",
                    "    id_ = id0 + kd * dil_d",
                    f"    m_d = {row_mask}(id_ >= 0) & (id_ < D)",
                    "    for kh in range(KH):",
                    "        ih = ih0 + kh * dil_h",
                    "        m_h = m_d & (ih >= 0) & (ih < H)",
                    "        for kw in range(KW):",
                    "            iw = iw0 + kw * dil_w",
                    "            m_pix = m_h & (iw >= 0) & (iw < W)"], indent)


def _signature(name: str, epilogue: Epilogue, constexprs: list[str]) -> str:
    return kernel_signature(name, ["x_ptr", "w_ptr"], ["xn", "wk"], constexprs,
                            extra="".join(f"{p}, " for p in epilogue.params))


_PIXELS = f"""
    # -- output pixels of this tile: m = ((n*OD + od)*OH + oh)*OW + ow
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
{unravel("offs_m", "t_m", ("ow_idx", "oh_idx", "od_idx"), ("OW", "OH", "OD"))}
    n_idx = t_m // OD
    id0 = od_idx * stride_d - pad_d
    ih0 = oh_idx * stride_h - pad_h
    iw0 = ow_idx * stride_w - pad_w
"""


_ALIASES = """
    # -- 2-D aliases for registry-emitted epilogues (the matmul template's names)
    rm = offs_m[:, None]
    rn = offs_n[None, :]
    rmask = mask_m[:, None]
    rnmask = mask_n[None, :]
    n_i = n_idx[:, None]
    od_i = od_idx[:, None]
    oh_i = oh_idx[:, None]
    ow_i = ow_idx[:, None]
"""


def _epilogue_block(epilogue: Epilogue) -> str:
    """The 2-D aliases, then the epilogue's lines, closing a kernel body."""
    return f"{_ALIASES}    # -- epilogue\n{_indent(epilogue.lines, 4)}\n"


def _tap_order_loop(precision: str) -> str:
    """``k_order="tap"``: one loop over (tap, channel block) pairs, taps outer.

    NOTE: a single flat loop (not kd/kh/kw loops around a channel loop of 1-2 iterations) is
    what Triton's software pipeliner stages: with nested loops only the innermost is pipelined,
    and a loop of one or two iterations never fills the pipeline. The sum runs in the same order
    as the nested form (kd, kh, kw, then channel blocks).
    """
    return f"""
    NCB = (CG + BLOCK_K - 1) // BLOCK_K
    for t in range(0, KD * KH * KW * NCB):
        tap = t // NCB
        cc = (t - tap * NCB) * BLOCK_K + offs_k
        kw = tap % KW
        kh = (tap // KW) % KH
        kd = tap // (KW * KH)
        id_ = id0 + kd * dil_d
        ih = ih0 + kh * dil_h
        iw = iw0 + kw * dil_w
        m_pix = mask_m & (id_ >= 0) & (id_ < D) & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_pix = x_base + id_ * stride_xd + ih * stride_xh + iw * stride_xw
        w_tap = w_base + kd * stride_wd + kh * stride_wh + kw * stride_ww
        m_c = cc < CG
        a = tl.load(x_pix[:, None] + cc[None, :] * stride_xc,
                    mask=m_pix[:, None] & m_c[None, :], other=0.0)
        b = tl.load(w_tap[None, :] + cc[:, None] * stride_wc,
                    mask=m_c[:, None] & mask_n[None, :], other=0.0)
        acc += tl.dot(a, b{precision})
"""


def _flat_order_loop(precision: str) -> str:
    """``k_order="flat"``: one loop over the flattened ``(c, kd, kh, kw)`` index."""
    return f"""
    K_TOT = CG * KD * KH * KW
    for k0 in range(0, K_TOT, BLOCK_K):
        kk = k0 + offs_k
        m_k = kk < K_TOT
        # k = ((c*KD + kd)*KH + kh)*KW + kw, the weight's own (c, kd, kh, kw) order
{unravel("kk", "t_k", ("kw_k", "kh_k", "kd_k"), ("KW", "KH", "KD"), 8)}
        c_k = t_k // KD
        id_ = id0[:, None] + (kd_k * dil_d)[None, :]
        ih = ih0[:, None] + (kh_k * dil_h)[None, :]
        iw = iw0[:, None] + (kw_k * dil_w)[None, :]
        m_a = (mask_m[:, None] & m_k[None, :] & (id_ >= 0) & (id_ < D) & (ih >= 0) & (ih < H)
               & (iw >= 0) & (iw < W))
        a = tl.load(x_base[:, None] + (c_k * stride_xc)[None, :] + id_ * stride_xd
                    + ih * stride_xh + iw * stride_xw, mask=m_a, other=0.0)
        w_off = c_k * stride_wc + kd_k * stride_wd + kh_k * stride_wh + kw_k * stride_ww
        b = tl.load(w_base[None, :] + w_off[:, None], mask=m_k[:, None] & mask_n[None, :], other=0.0)
        acc += tl.dot(a, b{precision})
"""


_K_LOOPS = {"tap": _tap_order_loop, "flat": _flat_order_loop}

_SWIZZLED_PROGRAM = """
    # -- program ids: swizzled (pid_m, pid_n) on axis 0, group on axis 1
    M = N * OD * OH * OW
    pid = tl.program_id(0)
    g = tl.program_id(1)
    num_pid_m = (M + BLOCK_M - 1) // BLOCK_M
    num_pid_n = (KG + BLOCK_N - 1) // BLOCK_N
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m
"""


def igemm_source(epilogue: Epilogue, k_order: str = "tap", allow_tf32: bool = False) -> str:
    """Source of the implicit-GEMM convolution kernel ``tw_conv_igemm``.

    GEMM view per group ``g``: ``M = N*OD*OH*OW`` pixels, ``N = KG`` output channels,
    ``K = CG*KD*KH*KW``. Grid: ``(cdiv(M, BLOCK_M) * cdiv(KG, BLOCK_N), groups)``, with
    ``GROUP_M`` swizzling of the tile order. The input tile is gathered on the fly from ``x``
    (no im2col buffer).

    Args:
        epilogue: code run on the finished accumulator.
        k_order: ``"tap"`` runs one loop over (kernel tap, channel block) pairs (wide channels);
            ``"flat"`` runs one loop over the flattened ``(c, kd, kh, kw)`` index (few channels,
            e.g. a 3-channel stem).
        allow_tf32: let float32 ``tl.dot`` use TF32 on the GPU.
    """
    if k_order not in _K_LOOPS:
        raise ValueError(f"unknown k_order {k_order!r}")
    loop = _K_LOOPS[k_order](dot_precision(allow_tf32))
    head = _signature(KERNEL_IGEMM, epilogue, ["BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"])
    body = f"""{_SWIZZLED_PROGRAM}{_PIXELS}
    # -- output channels of this tile (global index) and base pointers
    offs_nl = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_nl < KG
    offs_n = g * KG + offs_nl
    offs_k = tl.arange(0, BLOCK_K)
    x_base = x_ptr + n_idx.to(tl.int64) * stride_xn + (g * CG).to(tl.int64) * stride_xc
    w_base = w_ptr + offs_n.to(tl.int64) * stride_wk
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    # -- reduction over K, gathering the input tile on the fly{loop}
{_epilogue_block(epilogue)}"""
    return module_source(head, body)


def direct_source(epilogue: Epilogue) -> str:
    """Source of the direct convolution kernel ``tw_conv_direct`` (depthwise, few channels).

    Each program owns a ``[BLOCK_M pixels, BLOCK_N output channels]`` tile over *all* output
    channels (each channel reads its own group's inputs) and accumulates ``CG * taps``
    broadcast multiply-adds in float32, with no tensor-core padding waste.
    Grid: ``(cdiv(M, BLOCK_M), cdiv(K_OUT, BLOCK_N))``.
    """
    head = _signature(KERNEL_DIRECT, epilogue, ["BLOCK_M", "BLOCK_N"])
    body = f"""
    M = N * OD * OH * OW
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
{_PIXELS}
    # -- output channels and the first input channel of each one's group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < K_OUT
    c_first = (offs_n // KG) * CG
    x_base = x_ptr + n_idx.to(tl.int64) * stride_xn
    w_base = w_ptr + offs_n.to(tl.int64) * stride_wk
    m_tile = mask_m[:, None] & mask_n[None, :]
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for c in range(CG):
        x_c = x_base[:, None] + ((c_first + c).to(tl.int64) * stride_xc)[None, :]
        w_c = w_base + c * stride_wc
{_tap_loops(8)}
                    pix = id_ * stride_xd + ih * stride_xh + iw * stride_xw
                    xv = tl.load(x_c + pix[:, None], mask=m_tile & m_pix[:, None], other=0.0)
                    wv = tl.load(w_c + kd * stride_wd + kh * stride_wh + kw * stride_ww,
                                 mask=mask_n, other=0.0)
                    acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
{_epilogue_block(epilogue)}"""
    return module_source(head, body)
