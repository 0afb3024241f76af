"""Fused attention on the CPU target: the ``tilewright::flash_attention`` template nodes as C++ kernels.

The attention rewrite turns attention blocks into ``tilewright::flash_attention`` nodes (and
AOTAutograd adds ``flash_attention_backward`` nodes); :func:`attention_template` gives the CPU
target's lowering of them: a :class:`CpuAttentionCall` running the kernels of
:mod:`.attention_source` (one cached library per :class:`AttentionVariant`), the op's torch
reference as the fallback, and a :class:`CpuAttentionKernel` the tuner searches
(``BLOCK_M``, ``BLOCK_N``, ``threads``; defaults from the L1/L2 sizes and core count).

Dropout draws its keep-mask from a hash of (seed, score index) in both the forward and the
backward kernels: the same distribution as the reference, not the same draws, so once a dropout
kernel fails every later dropout call runs the reference (forward and backward must agree).
Not handled (the node stays the op's reference, reported as such): dtypes other than
float32/bfloat16, q/k/v of different dtypes, head dims above 256.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ...errors import BuildError
from ...ir.graph import Node, Value
from ...ir.registry import packet_name
from ...schedule.problem import KernelProblem
from ...schedule.space import Config, ScheduleSpace
from ..base import TemplateLowering
from .attention_source import AttentionVariant, attention_source, padded_head_dim

log = logging.getLogger(__name__)

_FORWARD = "tilewright.flash_attention"
_BACKWARD = "tilewright.flash_attention_backward"
#: version of the CPU attention schedule spaces (part of tuning keys)
SPACE_VERSION = "1"
#: the largest head dim the kernels take
MAX_HEAD_DIM = 256
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}

_libraries: dict[AttentionVariant, ctypes.CDLL] = {}
#: set once a dropout attention kernel failed: later dropout calls run the reference
_dropout_on_reference = False
_lock = threading.Lock()


def attention_library(variant: AttentionVariant) -> ctypes.CDLL:
    """The loaded library of ``variant`` (built once; cached on disk by source)."""
    with _lock:
        lib = _libraries.get(variant)
        if lib is not None:
            return lib
    from .build import build_library, load_library
    from .scalar_ops import PRELUDE

    try:
        lib = load_library(build_library(PRELUDE + "\n" + attention_source(variant), variant.tag))
    except BuildError:
        raise
    except Exception as exc:  # a compiler error or a library that does not load
        raise BuildError(f"CPU attention kernels for {variant.tag} do not build: {exc}") from exc
    ptr = ctypes.c_void_p
    lib.tw_attn_fwd.restype = None
    lib.tw_attn_fwd.argtypes = [ptr] * 7 + [ptr, ptr, ctypes.c_double, ctypes.c_double]
    lib.tw_attn_bwd.restype = None
    lib.tw_attn_bwd.argtypes = [ptr] * 12 + [ptr, ptr, ctypes.c_double, ctypes.c_double]
    with _lock:
        _libraries[variant] = lib
    return lib


# ----------------------------------------------------------------------------- schedule


def _cores() -> int:
    from .toolchain import cpu_description

    return int(cpu_description().get("cores") or 1)


def _cache(name: str, fallback: int) -> int:
    from .toolchain import cpu_description

    return int(cpu_description().get(name) or fallback)


def _tile_bytes(cfg: Mapping[str, Any], head_dim: int, backward: bool) -> int:
    """float32 bytes one thread's tiles take (Q, O or dO, scores; dK/dV in the backward)."""
    bm, bn, dp = int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"]), padded_head_dim(head_dim)
    if backward:
        return 4 * (2 * bm * dp + 2 * bm * bn + 2 * bn * dp + 2 * bn * dp)
    return 4 * (2 * bm * dp + bm * bn + 2 * bn * dp)


def _fits_l2(head_dim: int, backward: bool) -> Callable[[Mapping[str, Any]], str | None]:
    limit = _cache("l2_bytes", 1 << 20)

    def check(cfg: Mapping[str, Any]) -> str | None:
        need = _tile_bytes(cfg, head_dim, backward)
        return None if need <= limit else f"tiles need {need} bytes per thread (> L2 {limit})"
    return check


def attention_space(head_dim: int, backward: bool = False, units: int | None = None) -> ScheduleSpace:
    """Schedule space of the forward (or backward) kernels for one head dim on this machine.

    The default key block is the largest (up to 128) whose packed K and V tiles take at most
    1/16 of the L2 cache, with 64 query rows, on every core. The backward's ``FUSED_DQ`` (dQ
    accumulated in the dK/dV pass, which then runs in parallel over (batch, kv head) only)
    is the default when those ``units`` give every core work; else dQ is a second pass.
    """
    cores = _cores()
    threads = sorted({1, cores, max(1, cores // 2)} | {t for t in (2, 4, 8, 16, 32, 64) if t < cores})
    params: dict[str, list[Any]] = {"BLOCK_M": [16, 32, 64, 128], "BLOCK_N": [16, 32, 64, 128, 256],
                                    "threads": threads}
    if backward:
        params["FUSED_DQ"] = [1, 0]
    space = ScheduleSpace(kind="attention_bwd_cpu" if backward else "attention_fwd_cpu", params=params,
                          constraints=[_fits_l2(head_dim, backward)], version=SPACE_VERSION)
    l2 = _cache("l2_bytes", 1 << 20)
    dp = padded_head_dim(head_dim)
    block_n = 32
    for bn in (64, 128):
        if 2 * bn * dp * 4 <= l2 // 16:
            block_n = bn
    default: Config = {"BLOCK_M": 64, "BLOCK_N": block_n, "threads": cores}
    if backward:
        default["FUSED_DQ"] = int(units is None or units >= cores)
    space.default = default if space.is_feasible(default) else space.default_config()
    return space


def _config(config: Mapping[str, Any] | None, head_dim: int, backward: bool, units: int | None = None
            ) -> dict[str, int]:
    cfg = dict(config) if config else attention_space(head_dim, backward, units).default_config()
    out = {key: int(cfg[key]) for key in ("BLOCK_M", "BLOCK_N", "threads")}
    if backward:
        out["FUSED_DQ"] = int(cfg.get("FUSED_DQ", 1))
    return out


# ----------------------------------------------------------------------------- launch helpers


def strides4(t: torch.Tensor | None, shape: Sequence[int]) -> list[int]:
    """Strides of ``t`` broadcast to ``shape`` (0 on broadcast dims); zeros when ``t`` is None."""
    if t is None:
        return [0, 0, 0, 0]
    return [int(s) for s in torch.broadcast_to(t, tuple(shape)).stride()]


def unsupported_reason(q_dtype: torch.dtype, k_dtype: torch.dtype, v_dtype: torch.dtype, head_dim: int,
                       bias_dtype: torch.dtype | None, mask_dtype: torch.dtype | None, dropout_p: float,
                       q_rank: int = 4) -> str | None:
    """Why the CPU attention kernels cannot run a call with these properties (None when they can)."""
    if not 0.0 <= dropout_p < 1.0:
        return f"dropout probability {dropout_p}"
    if q_rank != 4:
        return f"q of rank {q_rank} (needs [batch, heads, length, head_dim])"
    if q_dtype not in _DTYPES:
        return f"dtype {q_dtype} (float32 and bfloat16 only)"
    if k_dtype != q_dtype or v_dtype != q_dtype:
        return f"q, k, v of different dtypes ({q_dtype}, {k_dtype}, {v_dtype})"
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        return f"head dim {head_dim} (1..{MAX_HEAD_DIM})"
    if bias_dtype is not None and not bias_dtype.is_floating_point:
        return f"additive bias of dtype {bias_dtype}"
    if mask_dtype is not None and mask_dtype != torch.bool:
        return f"mask of dtype {mask_dtype} (boolean only)"
    return None


def variant_of(q: torch.Tensor, bias: torch.Tensor | None) -> AttentionVariant:
    """The library variant a call needs."""
    bias_kind = "bfloat16" if bias is not None and bias.dtype == torch.bfloat16 else "float32"
    return AttentionVariant(int(q.shape[-1]), _DTYPES[q.dtype], bias_kind)


def flags(causal: bool, bias: torch.Tensor | None, mask: torch.Tensor | None) -> int:
    """The kernels' runtime flags: 1 causal, 2 additive bias, 4 boolean mask."""
    return int(bool(causal)) | (2 if bias is not None else 0) | (4 if mask is not None else 0)


def check_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
               mask: torch.Tensor | None, dropout_p: float) -> None:
    """Raise ValueError when the kernels cannot run these tensors."""
    reason = unsupported_reason(q.dtype, k.dtype, v.dtype, int(q.shape[-1]), None if bias is None else bias.dtype,
                                None if mask is None else mask.dtype, dropout_p, q.dim())
    if reason is None and (k.dim() != 4 or v.shape != k.shape or q.shape[0] != k.shape[0]
                           or q.shape[-1] != k.shape[-1] or q.shape[1] % k.shape[1]):
        reason = f"shapes q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}"
    if reason is None and any(t.device.type != "cpu" for t in (q, k, v)):
        reason = "tensors not on the CPU"
    if reason is not None:
        raise ValueError(f"CPU attention kernels cannot run this call: {reason}")


def prepared_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """The bias as the kernels read it (float32 or bfloat16)."""
    if bias is None or bias.dtype in (torch.float32, torch.bfloat16):
        return bias
    return bias.float()


def dropout_seed(dropout_p: float, seed: torch.Tensor | None) -> int:
    """The kernels' dropout seed (0 without dropout); raises ValueError when dropout has no seed."""
    if not dropout_p:
        return 0
    if seed is None:
        raise ValueError("dropout needs a seed tensor")
    return int(seed.reshape(-1)[0].item()) & 0x7FFFFFFFFFFFFFFF


def _int64s(values: Sequence[int]) -> Any:
    return (ctypes.c_int64 * len(values))(*[int(x) for x in values])


# ----------------------------------------------------------------------------- forward


def cpu_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None,
                          mask: torch.Tensor | None = None, scale: float | None = None, causal: bool = False,
                          causal_offset: int = 0, config: Mapping[str, Any] | None = None,
                          dropout_p: float = 0.0, seed: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused forward: ``out`` [B, Hq, M, D] (q's dtype, contiguous) and ``lse`` [B, Hq, M] float32."""
    check_call(q, k, v, bias, mask, dropout_p)
    seed_value = dropout_seed(dropout_p, seed)
    bias = prepared_bias(bias)
    B, H, M, D = (int(x) for x in q.shape)
    HKV, N = int(k.shape[1]), int(k.shape[2])
    cfg = _config(config, D, False)
    scale = float(D ** -0.5 if scale is None else scale)
    lib = attention_library(variant_of(q, bias))
    out = torch.empty((B, H, M, D), dtype=q.dtype)
    lse = torch.empty((B, H, M), dtype=torch.float32)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    full = (B, H, M, N)
    mask_arg = mask.view(torch.uint8) if mask is not None else None
    dims = _int64s([B, H, HKV, M, N, causal_offset, cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["threads"], 0, seed_value,
                    flags(causal, bias, mask)])
    strides = _int64s([*q.stride(), *k.stride(), *v.stride(), *strides4(bias, full), *strides4(mask, full),
                       *out.stride()])
    lib.tw_attn_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), 0 if bias is None else bias.data_ptr(),
                    0 if mask_arg is None else mask_arg.data_ptr(), out.data_ptr(), lse.data_ptr(),
                    dims, strides, scale, float(dropout_p))
    return out, lse


# ----------------------------------------------------------------------------- template lowering


@dataclass(frozen=True)
class CpuAttentionCall:
    """How the runtime runs one attention template node on the CPU target (a ``TemplateRunner``)."""

    #: "forward" or "backward"
    attention: str
    #: the schedule the kernels launch with; None: the space default
    config: Mapping[str, Any] | None = None

    def with_config(self, config: Mapping[str, Any] | None) -> CpuAttentionCall:
        """This call with its kernels launched under ``config``."""
        return replace(self, config=None if config is None else dict(config))

    def run_kernel(self, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """Launch the kernels (raises when they fail)."""
        from ...ops.attention import backward_outputs

        if self.attention == "forward":
            q, k, v, bias, mask, seed, scale, causal, causal_offset, dropout_p = _bind(args, kwargs, 10)
            _check_dropout(float(dropout_p))
            return cpu_attention_forward(q, k, v, bias, mask, scale, causal, causal_offset, self.config,
                                         float(dropout_p), seed)
        from .attention_backward import cpu_attention_backward

        dout, q, k, v, bias, mask, seed, out, lse, scale, causal, offset, dropout_p, bias_grad = _bind(args, kwargs, 14)
        _check_dropout(float(dropout_p))
        dq, dk, dv, db = cpu_attention_backward(dout, q, k, v, out, lse, bias, mask, scale, causal, offset,
                                                bool(bias_grad) and bias is not None, self.config,
                                                float(dropout_p), seed)
        return backward_outputs(q, dq, dk, dv, db)

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        """The op's torch reference (same arguments, same results)."""
        return _reference(self.attention, args, kwargs)

    def on_kernel_failure(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """A failed dropout kernel sends every later dropout call to the reference (its keep-masks differ)."""
        global _dropout_on_reference
        values = _bind(args, kwargs, 10 if self.attention == "forward" else 14)
        if float(values[9 if self.attention == "forward" else 12] or 0.0) > 0.0:
            _dropout_on_reference = True


def _check_dropout(dropout_p: float) -> None:
    if dropout_p > 0.0 and _dropout_on_reference:
        raise RuntimeError("dropout attention runs its reference (an earlier dropout kernel fell back)")


_NAMES = {10: ("q", "k", "v", "bias", "mask", "seed", "scale", "causal", "causal_offset", "dropout_p"),
          14: ("dout", "q", "k", "v", "bias", "mask", "seed", "out", "lse", "scale", "causal", "causal_offset",
               "dropout_p", "bias_grad")}


def _bind(args: Sequence[Any], kwargs: dict[str, Any], count: int) -> list[Any]:
    values = list(args) + [kwargs[name] for name in _NAMES[count][len(args):]]
    return values[:count]


def _reference(which: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    from ...ops.attention import (
        _reference_backward,
        attention_reference,
        backward_outputs,
    )

    if which == "forward":
        q, k, v, bias, mask, seed, scale, causal, offset, dropout_p = _bind(args, kwargs, 10)
        out, lse = attention_reference(q, k, v, bias, mask, scale, causal, offset, dropout_p, seed)
        return out.contiguous(), lse.contiguous()
    dout, q, k, v, bias, mask, seed, _out, _lse, scale, causal, offset, dropout_p, bias_grad = _bind(args, kwargs, 14)
    grads = _reference_backward(dout, q, k, v, bias, mask, seed, scale, causal, offset, dropout_p,
                                bool(bias_grad) and bias is not None)
    return backward_outputs(q, *grads)


def _value_dtype(x: Any) -> torch.dtype | None:
    return x.type.dtype if isinstance(x, Value) else None


def is_attention_node(node: Node) -> bool:
    """Whether ``node`` is a fused-attention template node (forward or backward)."""
    return packet_name(node.target) in (_FORWARD, _BACKWARD)


def attention_template(node: Node) -> TemplateLowering | None:
    """The CPU lowering of an attention template node (None for other templates)."""
    name = packet_name(node.target)
    if name not in (_FORWARD, _BACKWARD):
        return None
    which = "backward" if name == _BACKWARD else "forward"
    offset = 1 if which == "backward" else 0
    q, k, v = node.args[offset:offset + 3]
    bias, mask = node.args[offset + 3], node.args[offset + 4]
    dropout = node.args[offset + (12 if which == "backward" else 9)]
    call = CpuAttentionCall(which)
    if not all(isinstance(x, Value) for x in (q, k, v)):
        return TemplateLowering(call, None, "non-tensor q, k or v")
    reason = unsupported_reason(q.type.dtype, k.type.dtype, v.type.dtype, int(q.type.shape[-1]), _value_dtype(bias),
                                _value_dtype(mask), float(dropout or 0.0), q.type.rank)
    if reason is not None:
        return TemplateLowering(call, None, reason)
    causal = bool(node.args[offset + (10 if which == "backward" else 7)])
    batch, heads, m, head_dim = (int(x) for x in q.type.shape)
    kernel = CpuAttentionKernel(which, batch, heads, int(k.type.shape[1]), m, int(k.type.shape[2]), head_dim,
                                _DTYPES[q.type.dtype], causal)
    return TemplateLowering(call, kernel, None)


# ----------------------------------------------------------------------------- tunable kernel


@dataclass
class CpuAttentionKernel:
    """A :class:`~tilewright.schedule.problem.TunableKernel` for one attention shape on the CPU target."""

    which: str  # "forward" or "backward"
    batch: int
    heads: int
    kv_heads: int
    m: int
    n: int
    head_dim: int
    dtype: str = "float32"
    causal: bool = False
    name: str = field(init=False)
    problem: KernelProblem = field(init=False)
    space: ScheduleSpace = field(init=False)

    def __post_init__(self) -> None:
        backward = self.which == "backward"
        self.name = f"attention_{'bwd' if backward else 'fwd'}_cpu"
        self.space = attention_space(self.head_dim, backward, self.batch * self.kv_heads)
        flops = 4.0 * self.batch * self.heads * self.m * self.n * self.head_dim * (0.5 if self.causal else 1.0)
        flops *= 2.5 if backward else 1.0
        elem = 2 if self.dtype == "bfloat16" else 4
        io = elem * self.batch * self.head_dim * (2 * self.heads * self.m + 2 * self.kv_heads * self.n)
        self.problem = KernelProblem(
            kind="attention", fingerprint=f"cpu_flash_{self.which}{'_causal' if self.causal else ''}_v{SPACE_VERSION}",
            dims={"B": self.batch, "H": self.heads, "HKV": self.kv_heads, "M": self.m, "N": self.n,
                  "D": self.head_dim}, dtype=self.dtype, flops=flops, bytes=float(io),
            meta={"causal": self.causal, "gqa_ratio": self.heads // max(1, self.kv_heads), "target": "cpu"})

    def make_inputs(self, device: str) -> Sequence[Any]:
        """Random q, k, v (and out, lse, dout for the backward) on the CPU."""
        dt = getattr(torch, self.dtype)
        q = torch.randn(self.batch, self.heads, self.m, self.head_dim, dtype=dt)
        k = torch.randn(self.batch, self.kv_heads, self.n, self.head_dim, dtype=dt)
        v = torch.randn_like(k)
        if self.which != "backward":
            return [q, k, v]
        out, lse = cpu_attention_forward(q, k, v, causal=self.causal)
        return [q, k, v, out, lse, torch.randn_like(out)]

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        """Launcher for ``config`` (validated against the space first)."""
        cfg = self.space.validate(config)
        causal = self.causal
        if self.which == "backward":
            from .attention_backward import cpu_attention_backward

            def run_bwd(inputs: Sequence[Any]) -> None:
                q, k, v, out, lse, dout = inputs
                cpu_attention_backward(dout, q, k, v, out, lse, causal=causal, config=cfg)
            return run_bwd

        def run_fwd(inputs: Sequence[Any]) -> None:
            q, k, v = inputs
            cpu_attention_forward(q, k, v, causal=causal, config=cfg)
        return run_fwd
