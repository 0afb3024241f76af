"""Triton block-sparse attention forward and the ``block_sparse_attention`` template on the Triton target.

The kernel is the dense flash forward's structure (:mod:`.kernels`: one program per (query block,
batch * head), online softmax in the log2 domain, float32 accumulator, grouped-query heads read
their kv head without copies) with the key loop replaced by a loop over the kept key blocks of
the query block's CSR row (``rowptr``/``cols`` of a
:class:`~tilewright.sparsity.attention.BlockIndex`; BLOCK_M and BLOCK_N divide the index's block). The
causal limit and the end of the keys are applied inside a kept block exactly as in the dense
kernel. XAttention scores its blocks with the Triton kernel of :mod:`.sparse_estimate`; the
selection and MInference's estimate use torch ops.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
import triton.language as tl

from ....ir.graph import Node, Value
from ....ir.registry import packet_name
from ...base import TemplateLowering
from ..jit import triton_jit
from . import kernels as K
from . import launch
from .launch import _dot_precision, _upcast, head_block

if TYPE_CHECKING:
    from ....sparsity.attention.index import BlockIndex

log = logging.getLogger(__name__)

_SPARSE = "tilewright.block_sparse_attention"


@triton_jit
def bsattn_fwd_kernel(
    Q, K_, V, OUT, LSE, ROWPTR, COLS,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
    H, M, N, D, GROUP, NMB, scale, causal_offset,
    IS_CAUSAL: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Block-sparse flash forward: one program per (BLOCK_M rows of a query block, batch*head);
    each kept key block of the row is read BLOCK_N keys at a time (one flat loop, so it
    pipelines); writes out and lse."""
    pid_m, pid_bh, b, h, offs_m, offs_d, d_ok = K._block_prologue(H, D, BLOCK_M, BLOCK_D)
    hk = h // GROUP
    offs_n0 = tl.arange(0, BLOCK_N)
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < M) & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    K_base = K_ + b * skb + hk * skh
    V_base = V + b * svb + hk * svh
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, tl.float32)
    row = pid_bh * NMB + (pid_m * BLOCK_M) // BLOCK
    NS: tl.constexpr = BLOCK // BLOCK_N
    start = tl.load(ROWPTR + row)
    end = tl.load(ROWPTR + row + 1)
    for it in range(start * NS, end * NS):
        kb = tl.load(COLS + it // NS)
        offs_n = kb * BLOCK + (it % NS) * BLOCK_N + offs_n0
        k_t = tl.load(K_base + offs_n[None, :] * skn + offs_d[:, None] * skd,
                      mask=(offs_n[None, :] < N) & d_ok[:, None], other=0.0)
        if UPCAST:
            k_t = k_t.to(tl.float32)
        s = tl.dot(q, k_t, input_precision=DOT_PREC) * qk_scale
        valid = (offs_n[None, :] < N) & (offs_m[:, None] >= 0)
        if IS_CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
        s = tl.where(valid, s, float("-inf"))
        p_tile, alpha, m_new, l_i = K._softmax_step(s, m_i, l_i)
        v = tl.load(V_base + offs_n[:, None] * svn + offs_d[None, :] * svd,
                    mask=(offs_n[:, None] < N) & d_ok[None, :], other=0.0)
        if UPCAST:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p_tile.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    out, lse = K._softmax_finish(acc, m_i, l_i)
    tl.store(OUT + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, out.to(OUT.dtype.element_ty),
             mask=(offs_m[:, None] < M) & d_ok[None, :])
    tl.store(LSE + pid_bh * M + offs_m, lse, mask=offs_m < M)


def sparse_tile(block: int, head_dim: int, dtype: torch.dtype, smem_bytes: int) -> dict[str, int]:
    """The block-sparse forward's tile for an index of ``block``-sized blocks: the dense
    forward's default for this head dim, dtype and device (measured spill-free on sm_90; see
    :func:`.launch.forward_space`) cut to the block (BLOCK_M and BLOCK_N divide it), its warps
    cut in proportion (the same registers per thread, at least 2). Before, one BLOCK x BLOCK tile on 4
    warps spilled on sm_90 (bf16 D=128, block 128: 4100 B; float32 D=40, block 64: 1140 B)."""
    name = str(dtype).replace("torch.", "")
    cfg = launch.forward_space(head_dim, name, smem_bytes).default_config()
    bm, bn = min(int(cfg["BLOCK_M"]), block), min(int(cfg["BLOCK_N"]), block)
    warps = max(2, int(cfg["num_warps"]) * bm * bn // (int(cfg["BLOCK_M"]) * int(cfg["BLOCK_N"])))
    return {"BLOCK_M": bm, "BLOCK_N": bn, "num_warps": warps, "num_stages": int(cfg["num_stages"])}


def triton_block_sparse_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: BlockIndex,
                                scale: float | None = None, causal: bool = False, causal_offset: int = 0
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the kept blocks: ``out`` [B, Hq, M, D] (q's dtype) and ``lse`` [B, Hq, M] float32."""
    B, H, M, D = (int(x) for x in q.shape)
    HKV, N = int(k.shape[1]), int(k.shape[2])
    if H % HKV or k.shape != v.shape or k.shape[0] != B or k.shape[-1] != D:
        raise ValueError(f"shapes q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)} do not form attention")
    if (index.batch, index.heads, index.m, index.n) != (B, H, M, N):
        raise ValueError(f"block index for [batch {index.batch}, heads {index.heads}, {index.m} x {index.n}] "
                         f"does not fit q {list(q.shape)}, k {list(k.shape)}")
    scale = float(D ** -0.5 if scale is None else scale)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, M), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    rowptr = index.rowptr.to(device=q.device, dtype=torch.int32)
    cols = index.cols.to(device=q.device, dtype=torch.int32)
    tile = sparse_tile(index.block, D, q.dtype, launch.device_smem(q.device))
    grid = (index.nmb * (index.block // tile["BLOCK_M"]), B * H)
    bsattn_fwd_kernel[grid](
        q, k, v, out, lse, rowptr, cols, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        H, M, N, D, H // HKV, index.nmb, scale, int(causal_offset),
        IS_CAUSAL=bool(causal), UPCAST=_upcast(q), DOT_PREC=_dot_precision(q), BLOCK=index.block,
        BLOCK_M=tile["BLOCK_M"], BLOCK_N=tile["BLOCK_N"], BLOCK_D=head_block(D), **launch._launch_opts(tile))
    return out, lse


_NAMES = ("q", "k", "v", "scale", "causal", "causal_offset", "method", "params")


def _bind(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
    values = list(args) + [kwargs[name] for name in _NAMES[len(args):]]
    return values[:len(_NAMES)]


@dataclass(frozen=True)
class TritonSparseAttentionCall:
    """How the runtime runs a ``block_sparse_attention`` node on the Triton target."""

    attention: str | None = None
    config: Mapping[str, Any] | None = None

    def with_config(self, config: Mapping[str, Any] | None) -> TritonSparseAttentionCall:
        """This call with ``config`` (unused: the block comes from the index)."""
        return replace(self, config=None if config is None else dict(config))

    def run_kernel(self, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """Build the index and run the Triton kernel (raises when it fails)."""
        from ....sparsity.attention.op import build_index

        q, k, v, scale, causal, offset, method, params = _bind(args, kwargs)
        index = build_index(method, json.loads(params), q, k, float(scale), bool(causal), int(offset),
                            backend="triton")
        out, lse = triton_block_sparse_forward(q, k, v, index, float(scale), bool(causal), int(offset))
        return out.contiguous(), lse.contiguous()

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        """The op's torch implementation."""
        from ....sparsity.attention.op import block_sparse_attention_reference_op

        return block_sparse_attention_reference_op(*_bind(args, kwargs))

    def precompile_launch(self, node: Node) -> Any:
        """What a compile worker launches (or records) to compile the estimator and the sparse
        kernel before the first call (:class:`~.precompile.TemplateLaunch`)."""
        from .precompile import precompile_launch

        return precompile_launch(self, node)

    def on_kernel_failure(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Nothing to carry over to later calls."""


def sparse_template(node: Node) -> TemplateLowering | None:
    """The Triton lowering of a block-sparse attention node (None for other nodes)."""
    if packet_name(node.target) != _SPARSE:
        return None
    call = TritonSparseAttentionCall()
    q, k, v = node.args[:3]
    if not all(isinstance(x, Value) for x in (q, k, v)):
        return TemplateLowering(call, None, "non-tensor q, k or v")
    if q.type.rank != 4 or int(q.type.shape[-1]) > 256:
        return TemplateLowering(call, None, f"q of shape {list(q.type.shape)} (rank 4, head dim <= 256)")
    return TemplateLowering(call, None, None)
