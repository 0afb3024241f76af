"""Flash-attention launchers, schedule spaces and tunable-kernel wrappers.

The kernels live in :mod:`tilewright.targets.triton.attention.kernels`; this module checks inputs,
computes broadcast strides (stride 0 for broadcast dims: masks and biases are never expanded
into memory), picks a config (a plain dict whose keys are the kernels' constexpr names plus
``num_warps``/``num_stages``) and launches. Public entry points:

* :func:`flash_attention_forward` -> (out, lse); uses the split-K decode path for short queries.
* :func:`flash_attention_backward` -> (dq, dk, dv, dbias-or-None).
* :func:`forward_space` / :func:`backward_space` / :func:`decode_space` schedule spaces with
  shared-memory and register constraints, and :class:`AttentionKernel` (a ``TunableKernel``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ....schedule.precision import fp32_matmul_policy
from ....schedule.problem import KernelProblem
from ....ops.attention import reduce_to_shape
from ....schedule.space import Config, ConfigValue, Constraint, ScheduleSpace, next_pow2
from ..spaces import register_budget, shared_memory_budget
from . import kernels as K
from ..jit import cdiv, interpret_mode

log = logging.getLogger(__name__)

#: Version of the attention schedule spaces (part of tuning keys).
SPACE_VERSION = "3"  # 3: register estimate with Q/dO tiles and dtype; sm_90 spill-free defaults
#: Shared memory assumed when the device is unknown (bytes; an A100/H100 opt-in block is larger).
DEFAULT_SMEM_BYTES = 99 * 1024
#: Query lengths up to this use the split-K decode path (when there is no dropout).
DECODE_MAX_M = 16
#: Keys needed before splitting the key sequence pays off.
DECODE_MIN_N = 256


def head_block(head_dim: int) -> int:
    """Padded head dimension (power of two, at least 16) used as BLOCK_D."""
    return max(16, next_pow2(head_dim))


def _elem_size(dtype: str) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 4)


def _smem_fwd(cfg: Mapping[str, Any], block_d: int, elem: int) -> int:
    """Upper estimate of the forward tile's shared memory (bytes): Q plus, per pipeline stage, a
    K and a V tile (the staged loops are software-pipelined: every stage buffers both).

    NOTE: fitted to Triton 3.9's reported ``shared`` for sm_90 builds with launch-like
    specialisation (bf16, 128x64, D=64, 3 stages: 64 KiB; with a boolean mask: 68 KiB), +5% + 4 KiB.
    """
    stages = max(1, int(cfg["num_stages"]))
    per_stage = 2 * int(cfg["BLOCK_N"]) * block_d
    return int(1.05 * elem * (int(cfg["BLOCK_M"]) * block_d + stages * per_stage)) + 4096


def _smem_bwd(cfg: Mapping[str, Any], block_d: int, elem: int) -> int:
    """Upper estimate of the backward kernels' shared memory (bytes).

    K, V resident; Q and dO staged; one [BLOCK_M, BLOCK_N] tile transposed through smem.
    NOTE: within 15% + 4 KiB of Triton's reported ``shared`` for sm_90 builds, from above.
    """
    stages = max(1, int(cfg["num_stages"]))
    raw = elem * (2 * int(cfg["BLOCK_N"]) * block_d + 2 * stages * int(cfg["BLOCK_M"]) * block_d
                  + int(cfg["BLOCK_M"]) * int(cfg["BLOCK_N"]))
    return int(1.15 * raw) + 4096


#: Estimated 32-bit registers per thread above which a config is rejected (ptxas has 255; the
#: estimate leaves room for addresses, row statistics and the mask/bias/dropout variants).
REGISTER_BUDGET = 160


def _fwd_registers(block_d: int, elem: int) -> Constraint:
    """Forward and decode, per thread: the float32 [BLOCK_M, BLOCK_D] accumulator, the score
    tile in float32 and again as the P operand (input dtype), and the resident Q tile.

    NOTE: calibrated on sm_90 builds (Triton 3.9, ptxas -v): bf16 D=64 128x64 at 8 warps
    estimates 96 (114 registers), 128x128 at 8 warps 144 (224), D=128 128x64 at 8 warps 144
    (184); 128x64 at 4 warps estimates 192 and sits at 255.
    """
    def values(c: Mapping[str, Any]) -> float:
        m, n = int(c["BLOCK_M"]), int(c["BLOCK_N"])
        return m * block_d + m * n * (1 + elem / 4) + m * block_d * elem / 4
    return register_budget(values, REGISTER_BUDGET,
                           "~{per_thread:.0f} registers per thread for accumulator, scores and Q (> %d)"
                           % REGISTER_BUDGET)


def _bwd_registers(block_d: int, elem: int) -> Constraint:
    """dK/dV, per thread: the float32 dK and dV accumulators ([BLOCK_N, BLOCK_D] each), three
    float32 [BLOCK_M, BLOCK_N] tiles (P, dP, dS) and the Q and dO tiles; K and V are dot
    operands read from shared memory. The dQ kernel (swapped tile, one accumulator) needs less.

    NOTE: calibrated on sm_90 builds (Triton 3.9): bf16 D=64 32x128 at 4 warps estimates 240
    and spills 40 B, at 8 warps 120 (213 registers); 64x128 at 8 warps estimates 176 and spills
    16 B; D=128 32x64 at 8 warps 104 (170 registers).
    """
    def values(c: Mapping[str, Any]) -> float:
        m, n = int(c["BLOCK_M"]), int(c["BLOCK_N"])
        return 2 * n * block_d + 3 * m * n + 2 * m * block_d * elem / 4
    return register_budget(values, REGISTER_BUDGET,
                           "~{per_thread:.0f} registers per thread for dK/dV, P/dP/dS and Q/dO (> %d)"
                           % REGISTER_BUDGET)


def _attention_space(kind: str, params: dict[str, list[ConfigValue]], smem: Callable[[Mapping[str, Any]], int],
                     smem_bytes: int, registers: Constraint, default: Config) -> ScheduleSpace:
    """A space with the shared-memory and register constraints; ``default`` unless it is infeasible,
    then the first feasible config."""
    space = ScheduleSpace(kind=kind, params=params,
                          constraints=[shared_memory_budget(smem, smem_bytes), registers], version=SPACE_VERSION)
    space.default = default if space.is_feasible(default) else nearest_feasible(space, default)
    return space


def nearest_feasible(space: ScheduleSpace, default: Config) -> Config:
    """The feasible config closest to ``default`` (tile sizes in log2 steps, then stages, then
    warps), so a device with less shared memory gets smaller tiles or fewer stages, not the
    space's first (smallest, one-stage) config."""
    import math

    def distance(c: Config) -> tuple[float, int]:
        d = sum(abs(math.log2(int(c[k])) - math.log2(int(default[k]))) for k in default
                if k.startswith("BLOCK_") and k in c)
        d += 0.5 * abs(int(c.get("num_stages", 1)) - int(default.get("num_stages", 1)))
        d += 0.25 * abs(math.log2(int(c.get("num_warps", 4))) - math.log2(int(default.get("num_warps", 4))))
        size = math.prod(int(v) for k, v in c.items() if k.startswith("BLOCK_"))
        return d, -size  # ties: the larger tile
    feasible = [c for c in space.enumerate() if space.is_feasible(c)]
    return min(feasible, key=distance) if feasible else space.default_config()


def _fwd_default(block_d: int, elem: int) -> Config:
    """The forward's default on a Hopper-class device (227 KiB of shared memory per block)."""
    # NOTE: measured spill-free for sm_90 (ptxas -v, Triton 3.9), see docs/gpu.md. Half
    # precision: 128 query rows on 8 warps (two warpgroups of 64 rows; FA2 / Triton's tutorial
    # on Hopper). float32 (IEEE): Triton's FMA dot keeps each operand replicated along the
    # reduction axis in every thread, so only small tiles fit (64x32 at D=64: 96 registers,
    # 32x64 at D=128: 94; 128x64 at D=64 spills 137 KB).
    if elem == 4:
        return {"BLOCK_M": 64 if block_d <= 64 else 32, "BLOCK_N": 64 if block_d == 128 else 32,
                "num_warps": 8, "num_stages": 2}
    if block_d <= 128:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2}


def _bwd_default(block_d: int, elem: int) -> Config:
    """The backward's default (dK/dV on BLOCK_M query rows x BLOCK_N keys; dQ on the swapped tile)."""
    # NOTE: Triton's fused-attention tutorial tile (dK/dV: 32 query rows x 128 keys; dQ: 128 x
    # 32), on 8 warps: at 4 warps the D=64 dK/dV kernel spills on sm_90. D=128 halves the keys
    # (32x64: 170 registers). float32 (IEEE FMA dots): 16x32 (D=64 dK/dV: 245 registers).
    if elem == 4:
        return {"BLOCK_M": 16, "BLOCK_N": 32, "num_warps": 8, "num_stages": 2}
    if block_d <= 64:
        return {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3}
    return {"BLOCK_M": 32, "BLOCK_N": 64 if block_d <= 128 else 32, "num_warps": 8, "num_stages": 2}


def forward_space(head_dim: int, dtype: str = "float16", smem_bytes: int = DEFAULT_SMEM_BYTES) -> ScheduleSpace:
    """Schedule space of the forward kernel for one head dim and dtype."""
    block_d, elem = head_block(head_dim), _elem_size(dtype)
    return _attention_space(
        "attention_fwd", {"BLOCK_M": [16, 32, 64, 128], "BLOCK_N": [16, 32, 64, 128],
                          "num_warps": [2, 4, 8], "num_stages": [1, 2, 3, 4]},
        lambda c: _smem_fwd(c, block_d, elem), smem_bytes, _fwd_registers(block_d, elem),
        _fwd_default(block_d, elem))


def backward_space(head_dim: int, dtype: str = "float16", smem_bytes: int = DEFAULT_SMEM_BYTES) -> ScheduleSpace:
    """Schedule space of the two backward kernels: dK/dV runs BLOCK_N keys against BLOCK_M query
    rows per step; dQ runs the swapped tile (BLOCK_N query rows against BLOCK_M keys)."""
    block_d, elem = head_block(head_dim), _elem_size(dtype)
    return _attention_space(
        "attention_bwd", {"BLOCK_M": [16, 32, 64, 128], "BLOCK_N": [16, 32, 64, 128],
                          "num_warps": [2, 4, 8], "num_stages": [1, 2, 3, 4, 5]},
        lambda c: _smem_bwd(c, block_d, elem), smem_bytes, _bwd_registers(block_d, elem),
        _bwd_default(block_d, elem))


def decode_space(head_dim: int, dtype: str = "float16", smem_bytes: int = DEFAULT_SMEM_BYTES) -> ScheduleSpace:
    """Schedule space of the split-K decode kernel; NUM_SPLITS is a schedule parameter."""
    block_d, elem = head_block(head_dim), _elem_size(dtype)
    default = {"NUM_SPLITS": 16, "BLOCK_M": 16, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    return _attention_space(
        "attention_decode", {"NUM_SPLITS": [1, 2, 4, 8, 16, 32, 64, 128], "BLOCK_M": [16, 32, 64],
                             "BLOCK_N": [16, 32, 64, 128], "num_warps": [2, 4, 8], "num_stages": [1, 2, 3, 4]},
        lambda c: _smem_fwd(c, block_d, elem), smem_bytes, _fwd_registers(block_d, elem), default)


# ----------------------------------------------------------------------------- helpers


def _strides4(t: torch.Tensor | None, shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Strides of ``t`` broadcast to ``shape`` (0 on broadcast dims); zeros when ``t`` is None."""
    if t is None:
        return (0, 0, 0, 0)
    view = torch.broadcast_to(t, tuple(shape)) if t.dim() <= 4 else t
    return tuple(int(s) for s in view.stride())  # type: ignore[return-value]


def _mask_arg(mask: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return q  # never read (HAS_MASK is False)
    return mask.view(torch.uint8) if mask.dtype == torch.bool else mask


def _upcast(q: torch.Tensor) -> bool:
    return interpret_mode() and q.dtype == torch.bfloat16


def dot_precision(dtype: str | torch.dtype) -> str | None:
    """The ``tl.dot`` input precision of float32 attention, following torch's float32 matmul flags
    (:func:`~tilewright.schedule.precision.fp32_matmul_policy`): ``tf32`` where torch allows TF32
    (eager uses it too), else ``ieee`` (FMA). None (the dtype's own dot) for half precision.

    NOTE: ``tf32x3`` (the GEMMs' float32-level tensor-core candidate) is not used here: compiled
    for sm_90 its split operands need more registers and shared memory than IEEE at every
    attention tile tried (e.g. D=64 dK/dV 32x64, 8 warps: 200 B spilled, 112 KiB)."""
    if str(dtype).replace("torch.", "") != "float32":
        return None
    return "tf32" if fp32_matmul_policy() == "tf32" else "ieee"


def _dot_precision(q: torch.Tensor) -> str | None:
    return dot_precision(q.dtype)


def _launch_opts(cfg: Mapping[str, Any]) -> dict[str, Any]:
    if interpret_mode():
        return {}
    return {"num_warps": int(cfg["num_warps"]), "num_stages": int(cfg["num_stages"])}


def use_decode_path(m: int, n: int, dropout_p: float) -> bool:
    """Whether the split-K decode kernel handles this shape."""
    return m <= DECODE_MAX_M and n >= DECODE_MIN_N and dropout_p == 0.0


def default_num_splits(batch_heads_kv: int, n: int, block_n: int, device: torch.device) -> int:
    """Heuristic split count: enough programs for ~2 waves, at least one key block per split."""
    want = max(1, (2 * multiprocessors(device)) // max(1, batch_heads_kv))
    splits = 1
    while splits * 2 <= min(want, max(1, n // block_n), 128):
        splits *= 2
    return splits


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (8 off CUDA: the interpreter's stand-in)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 8


def device_smem(device: torch.device) -> int:
    """Opt-in shared memory per block of ``device`` (the default guess off CUDA)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(getattr(props, "shared_memory_per_block_optin", 0) or DEFAULT_SMEM_BYTES)
    return DEFAULT_SMEM_BYTES


def _pick(config: Mapping[str, Any] | None, space: Callable[[], ScheduleSpace]) -> dict[str, Any]:
    """``config`` when the caller passed one (a tuned or stored schedule), else the space default."""
    return dict(config) if config is not None else space().default_config()


# ----------------------------------------------------------------------------- forward


def flash_attention_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None, scale: float | None = None, causal: bool = False,
    causal_offset: int = 0, dropout_p: float = 0.0, seed: torch.Tensor | None = None,
    config: Mapping[str, Any] | None = None, decode: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the fused forward; returns ``out`` [B, Hq, M, D] and ``lse`` [B, Hq, M] (float32).

    Args:
        q, k, v: [B, Hq, M, D], [B, Hkv, N, D], [B, Hkv, N, D]; any strides; Hq % Hkv == 0.
        bias: additive float tensor broadcastable to [B, Hq, M, N].
        mask: boolean keep-mask (True = attend) broadcastable to [B, Hq, M, N].
        scale: multiplier of q.k (default 1/sqrt(D)).
        causal: keep key j for query i only when j <= i + causal_offset (0: top-left, SDPA).
        dropout_p: dropout on the probabilities (needs ``seed``, an int64 tensor of one element).
        config: schedule config (keys of :func:`forward_space` or :func:`decode_space`).
        decode: force (True) or forbid (False) the split-K decode path; None decides by shape.
    """
    B, H, M, D = q.shape
    HKV, N = k.shape[1], k.shape[2]
    if H % HKV:
        raise ValueError(f"query heads {H} not a multiple of key/value heads {HKV}")
    scale = float(D ** -0.5 if scale is None else scale)
    if decode is None:
        decode = use_decode_path(M, N, dropout_p)
    if decode and dropout_p == 0.0:
        return _decode_forward(q, k, v, bias, mask, scale, causal, causal_offset, config)
    cfg = _pick(config, lambda: forward_space(D, str(q.dtype).split(".")[-1], device_smem(q.device)))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, M), dtype=torch.float32, device=q.device)
    full = (B, H, M, N)
    grid = (cdiv(M, int(cfg["BLOCK_M"])), B * H)
    if dropout_p > 0.0 and seed is None:
        raise ValueError("dropout needs a seed tensor")
    K.attn_fwd_kernel[grid](
        q, k, v, bias if bias is not None else q, _mask_arg(mask, q),
        seed if seed is not None else lse, out, lse,
        *q.stride(), *k.stride(), *v.stride(), *_strides4(bias, full), *_strides4(mask, full),
        *out.stride(), H, M, N, D, H // HKV, scale, float(dropout_p), int(causal_offset),
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, IS_CAUSAL=bool(causal),
        HAS_DROPOUT=dropout_p > 0.0, UPCAST=_upcast(q), DOT_PREC=_dot_precision(q),
        BLOCK_M=int(cfg["BLOCK_M"]), BLOCK_N=int(cfg["BLOCK_N"]), BLOCK_D=head_block(D),
        EVEN_D=head_block(D) == D, **_launch_opts(cfg))
    return out, lse


def _decode_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
                    mask: torch.Tensor | None, scale: float, causal: bool, causal_offset: int,
                    config: Mapping[str, Any] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split-K decode (flash-decoding): partial softmaxes per key split, then a combine kernel."""
    B, H, M, D = q.shape
    HKV, N = k.shape[1], k.shape[2]
    group = H // HKV
    cfg = _pick(config, lambda: decode_space(D, str(q.dtype).split(".")[-1], device_smem(q.device)))
    if config is None:
        cfg["BLOCK_M"] = 16 if group * M <= 16 else (32 if group * M <= 32 else 64)
        cfg["NUM_SPLITS"] = default_num_splits(B * HKV, N, int(cfg["BLOCK_N"]), q.device)
    splits = int(cfg["NUM_SPLITS"])
    block_n = int(cfg["BLOCK_N"])
    chunk = cdiv(cdiv(N, splits), block_n) * block_n
    splits = cdiv(N, chunk)
    opart = torch.empty((B, H, M, splits, D), dtype=torch.float32, device=q.device)
    lpart = torch.empty((B, H, M, splits), dtype=torch.float32, device=q.device)
    full = (B, H, M, N)
    grid = (splits, B * HKV, cdiv(group * M, int(cfg["BLOCK_M"])))
    K.attn_decode_split_kernel[grid](
        q, k, v, bias if bias is not None else q, _mask_arg(mask, q), opart, lpart,
        *q.stride(), *k.stride(), *v.stride(), *_strides4(bias, full), *_strides4(mask, full),
        H, HKV, M, N, D, group, scale, int(causal_offset), chunk, splits,
        HAS_BIAS=bias is not None, HAS_MASK=mask is not None, IS_CAUSAL=bool(causal), UPCAST=_upcast(q),
        DOT_PREC=_dot_precision(q), BLOCK_M=int(cfg["BLOCK_M"]), BLOCK_N=block_n, BLOCK_D=head_block(D), **_launch_opts(cfg))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, M), dtype=torch.float32, device=q.device)
    K.attn_decode_combine_kernel[(B * H * M,)](
        opart, lpart, out, lse, *out.stride(), H, M, D, splits,
        BLOCK_S=max(2, next_pow2(splits)), BLOCK_D=head_block(D))
    return out, lse


# ----------------------------------------------------------------------------- backward


def flash_attention_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, *, bias: torch.Tensor | None = None, mask: torch.Tensor | None = None,
    scale: float | None = None, causal: bool = False, causal_offset: int = 0, dropout_p: float = 0.0,
    seed: torch.Tensor | None = None, bias_grad: bool = False, config: Mapping[str, Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Gradients (dq, dk, dv, dbias) of :func:`flash_attention_forward`.

    ``dbias`` (when ``bias_grad``) is dS summed over the dims where ``bias`` broadcasts; it
    needs a [B, Hq, M, N] float32 buffer, the only case where scores reach memory.
    """
    B, H, M, D = q.shape
    HKV, N = k.shape[1], k.shape[2]
    scale = float(D ** -0.5 if scale is None else scale)
    cfg = _pick(config, lambda: backward_space(D, str(q.dtype).split(".")[-1], device_smem(q.device)))
    block_m, block_n, block_d = int(cfg["BLOCK_M"]), int(cfg["BLOCK_N"]), head_block(D)
    delta = torch.empty((B, H, M), dtype=torch.float32, device=q.device)
    K.attn_bwd_preprocess_kernel[(cdiv(M, block_m), B * H)](
        out, dout, delta, *out.stride(), *dout.stride(), H, M, D, BLOCK_M=block_m, BLOCK_D=block_d)
    lse = lse.contiguous()
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    full = (B, H, M, N)
    common = dict(HAS_BIAS=bias is not None, HAS_MASK=mask is not None, IS_CAUSAL=bool(causal),
                  HAS_DROPOUT=dropout_p > 0.0, UPCAST=_upcast(q), DOT_PREC=_dot_precision(q),
                  BLOCK_D=block_d, EVEN_D=block_d == D, **_launch_opts(cfg))
    bias_arg = bias if bias is not None else q
    mask_arg = _mask_arg(mask, q)
    seed_arg = seed if seed is not None else lse
    strides = (*q.stride(), *k.stride(), *v.stride(), *_strides4(bias, full), *_strides4(mask, full),
               *dout.stride())
    K.attn_bwd_dkdv_kernel[(cdiv(N, block_n), B * HKV)](
        q, k, v, bias_arg, mask_arg, seed_arg, dout, lse, delta, dk, dv, *strides,
        *dk.stride(), *dv.stride(), H, HKV, M, N, D, H // HKV, scale, float(dropout_p),
        int(causal_offset), BLOCK_M=block_m, BLOCK_N=block_n, **common)
    ds = torch.zeros(full, dtype=torch.float32, device=q.device) if bias_grad else delta
    # dQ on the swapped tile: BLOCK_N query rows per program, BLOCK_M keys per step
    K.attn_bwd_dq_kernel[(cdiv(M, block_n), B * H)](
        q, k, v, bias_arg, mask_arg, seed_arg, dout, lse, delta, dq, ds, *strides,
        *dq.stride(), H, M, N, D, H // HKV, scale, float(dropout_p), int(causal_offset),
        STORE_DS=bool(bias_grad), BLOCK_M=block_n, BLOCK_N=block_m, **common)
    dbias = reduce_to_shape(ds, bias.shape).to(bias.dtype) if (bias_grad and bias is not None) else None
    return dq, dk, dv, dbias


# ----------------------------------------------------------------------------- tunable kernels


@dataclass
class AttentionKernel:
    """A :class:`~tilewright.schedule.problem.TunableKernel` for one attention shape.

    ``which`` is "fwd", "bwd" or "decode"; the problem's meta records causal/mask/bias/GQA.
    """

    which: str
    batch: int
    heads: int
    kv_heads: int
    m: int
    n: int
    head_dim: int
    dtype: str = "float16"
    causal: bool = False
    smem_bytes: int = DEFAULT_SMEM_BYTES
    name: str = field(init=False)
    problem: KernelProblem = field(init=False)
    space: ScheduleSpace = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"attention_{self.which}"
        builders: dict[str, Callable[..., ScheduleSpace]] = {
            "fwd": forward_space, "bwd": backward_space, "decode": decode_space}
        self.space = builders[self.which](self.head_dim, self.dtype, self.smem_bytes)
        flops = 4.0 * self.batch * self.heads * self.m * self.n * self.head_dim
        if self.causal:
            flops /= 2
        if self.which == "bwd":
            flops *= 2.5
        elem = _elem_size(self.dtype)
        io = elem * self.batch * self.head_dim * (2 * self.heads * self.m + 2 * self.kv_heads * self.n)
        self.problem = KernelProblem(
            kind="attention", fingerprint=f"flash_{self.which}_v{SPACE_VERSION}",
            dims={"B": self.batch, "H": self.heads, "HKV": self.kv_heads, "M": self.m, "N": self.n,
                  "D": self.head_dim},
            dtype=self.dtype, flops=flops, bytes=float(io),
            meta={"causal": self.causal, "gqa_ratio": self.heads // self.kv_heads})

    def make_inputs(self, device: str) -> Sequence[Any]:
        """Random q, k, v (and dout for the backward) on ``device``."""
        dt = getattr(torch, self.dtype)
        q = torch.randn(self.batch, self.heads, self.m, self.head_dim, device=device, dtype=dt)
        k = torch.randn(self.batch, self.kv_heads, self.n, self.head_dim, device=device, dtype=dt)
        v = torch.randn_like(k)
        if self.which != "bwd":
            return [q, k, v]
        out, lse = flash_attention_forward(q, k, v, causal=self.causal, decode=False)
        return [q, k, v, out, lse, torch.randn_like(out)]

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        """Launcher for ``config`` (validated against the space first)."""
        cfg = self.space.validate(config)
        causal = self.causal

        if self.which == "bwd":
            def run_bwd(inputs: Sequence[Any]) -> None:
                q, k, v, out, lse, dout = inputs
                flash_attention_backward(dout, q, k, v, out, lse, causal=causal, config=cfg)
            return run_bwd
        decode = self.which == "decode"

        def run_fwd(inputs: Sequence[Any]) -> None:
            q, k, v = inputs
            flash_attention_forward(q, k, v, causal=causal, config=cfg, decode=decode)
        return run_fwd
