"""Block-sparse attention on the CPU target: the C++ kernels and the ``block_sparse_attention`` template.

:func:`cpu_block_sparse_forward` runs attention over the key blocks a
:class:`~tilewright.sparsity.attention.BlockIndex` keeps and :func:`cpu_xattention_scores`
XAttention's fused block scoring (C++ in :mod:`.sparse_attention_source`, one library per head
dim and dtype, holding the dense kernels too). :func:`sparse_attention_template` lowers a
``tilewright::block_sparse_attention`` node: the index is built from the node's method and
parameters at run time (dynamic methods estimate it from that call's q and k), then the sparse
kernel runs; its reference is the op's own torch implementation.
"""
from __future__ import annotations

import ctypes
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from ...errors import BuildError
from ...ir.graph import Node, Value
from ...ir.registry import packet_name
from ..base import TemplateLowering
from .attention import _DTYPES, check_call

if TYPE_CHECKING:
    from ...sparsity.attention.index import BlockIndex

log = logging.getLogger(__name__)

_SPARSE = "tilewright.block_sparse_attention"
_libraries: dict[tuple[int, str], ctypes.CDLL] = {}
_lock = threading.Lock()


def sparse_library(head_dim: int, dtype: str) -> ctypes.CDLL:
    """The loaded block-sparse library for one head dim and dtype (built once; cached on disk)."""
    key = (int(head_dim), dtype)
    with _lock:
        lib = _libraries.get(key)
        if lib is not None:
            return lib
    from .build import build_library, load_library
    from .scalar_ops import PRELUDE
    from .sparse_attention_source import sparse_attention_source

    tag = f"bsattn_d{head_dim}_{'bf16' if dtype == 'bfloat16' else 'f32'}"
    try:
        lib = load_library(build_library(PRELUDE + "\n" + sparse_attention_source(head_dim, dtype), tag))
    except BuildError:
        raise
    except Exception as exc:  # a compiler error or a library that does not load
        raise BuildError(f"CPU block-sparse attention kernels for {tag} do not build: {exc}") from exc
    ptr = ctypes.c_void_p
    lib.tw_bsattn_fwd.restype = None
    lib.tw_bsattn_fwd.argtypes = [ptr] * 9 + [ctypes.c_double]
    lib.tw_xattn_scores.restype = None
    lib.tw_xattn_scores.argtypes = [ptr] * 5 + [ctypes.c_double]
    i64 = ctypes.c_int64
    lib.tw_select_blocks.restype = i64
    lib.tw_select_blocks.argtypes = [ptr, i64, i64, i64, ctypes.c_double, ptr, ptr, ptr, i64, ptr, ptr]
    lib.tw_minference_stats.restype = None
    lib.tw_minference_stats.argtypes = [ptr] * 4
    lib.tw_vertical_slash_csr.restype = i64
    lib.tw_vertical_slash_csr.argtypes = [ptr] * 5
    with _lock:
        _libraries[key] = lib
    return lib


def _threads(threads: int | None) -> int:
    if threads:
        return int(threads)
    from .toolchain import cpu_description

    return int(cpu_description().get("cores") or 1)


def _int64s(values: Sequence[int]) -> Any:
    return (ctypes.c_int64 * len(values))(*[int(x) for x in values])


def cpu_block_sparse_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, index: BlockIndex,
                             scale: float | None = None, causal: bool = False, causal_offset: int = 0,
                             threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the kept blocks: ``out`` [B, Hq, M, D] (q's dtype) and ``lse`` [B, Hq, M] float32."""
    check_call(q, k, v, None, None, 0.0)
    B, H, M, D = (int(x) for x in q.shape)
    HKV, N = int(k.shape[1]), int(k.shape[2])
    if (index.batch, index.heads, index.m, index.n) != (B, H, M, N):
        raise ValueError(f"block index for [batch {index.batch}, heads {index.heads}, {index.m} x {index.n}] "
                         f"does not fit q {list(q.shape)}, k {list(k.shape)}")
    scale = float(D ** -0.5 if scale is None else scale)
    lib = sparse_library(D, _DTYPES[q.dtype])
    out = torch.empty((B, H, M, D), dtype=q.dtype)
    lse = torch.empty((B, H, M), dtype=torch.float32)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    rowptr = index.rowptr.to(torch.int64).contiguous()
    cols = index.cols.to(torch.int32).contiguous()
    dims = _int64s([B, H, HKV, M, N, causal_offset, index.block, _threads(threads), int(bool(causal))])
    strides = _int64s([*q.stride(), *k.stride(), *v.stride(), *out.stride()])
    lib.tw_bsattn_fwd(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), lse.data_ptr(), rowptr.data_ptr(),
                      cols.data_ptr(), dims, strides, scale)
    return out, lse


def cpu_xattention_scores(q: torch.Tensor, k: torch.Tensor, block: int, stride: int, scale: float | None = None,
                          causal: bool = False, causal_offset: int = 0, threads: int | None = None
                          ) -> torch.Tensor:
    """XAttention's block scores [B, H, nmb, nkb] float32 from the fused C++ estimator."""
    check_call(q, k, k, None, None, 0.0)
    B, H, M, D = (int(x) for x in q.shape)
    HKV, N = int(k.shape[1]), int(k.shape[2])
    scale = float(D ** -0.5 if scale is None else scale)
    nmb, nkb = -(-M // block), -(-N // block)
    scores = torch.empty((B, H, nmb, nkb), dtype=torch.float32)
    if scores.numel() == 0:
        return scores
    lib = sparse_library(D, _DTYPES[q.dtype])
    dims = _int64s([B, H, HKV, M, N, causal_offset, block, stride, _threads(threads), int(bool(causal))])
    strides = _int64s([*q.stride(), *k.stride()])
    lib.tw_xattn_scores(q.data_ptr(), k.data_ptr(), scores.data_ptr(), dims, strides, scale)
    return scores


def cpu_select_blocks(scores: torch.Tensor, threshold: float, m: int, n: int, block: int, head_dim: int,
                      causal: bool = False, causal_offset: int = 0, threads: int | None = None) -> BlockIndex:
    """XAttention's threshold selection of ``scores`` [B, H, nmb, nkb] straight into a CSR index (C++).

    Same result as :func:`tilewright.sparsity.attention.estimate.select_blocks` (``head_dim`` only
    picks the library, which is already built for the attention that follows).
    """
    from ...sparsity.attention.index import BlockIndex

    B, H, nmb, nkb = (int(x) for x in scores.shape)
    i0 = torch.arange(nmb, dtype=torch.int64) * block
    iend = torch.clamp(i0 + block, max=m) - 1
    if causal:
        vis_end = torch.clamp(torch.div(iend + causal_offset, block, rounding_mode="floor") + 1, 0, nkb)
        vis_end = torch.where(iend + causal_offset < 0, torch.zeros_like(vis_end), vis_end)
    else:
        vis_end = torch.full((nmb,), nkb, dtype=torch.int64)
    flo = torch.div((i0 + causal_offset).clamp(0, n - 1), block, rounding_mode="floor")
    fhi = torch.div((iend + causal_offset).clamp(0, n - 1), block, rounding_mode="floor")
    rows = B * H * nmb
    s = scores.float().contiguous()
    rowptr = torch.empty(rows + 1, dtype=torch.int64)
    cols = torch.empty(max(1, rows * nkb), dtype=torch.int32)
    lib = sparse_library(head_dim, "float32")
    nnz = lib.tw_select_blocks(s.data_ptr(), rows, nmb, nkb, float(threshold), vis_end.data_ptr(), flo.data_ptr(),
                               fhi.data_ptr(), _threads(threads), rowptr.data_ptr(), cols.data_ptr())
    return BlockIndex(B, H, m, n, block, rowptr, cols[:nnz].clone(), bool(causal), int(causal_offset))


def cpu_minference_stats(q: torch.Tensor, k: torch.Tensor, last: int, block: int, scale: float | None = None,
                         causal: bool = True, causal_offset: int = 0, threads: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """MInference's attention sums of the last ``last`` queries: per key block [B, H, nkb], per slash
    band [B, H, nbands] (band ``lo + index``), and ``lo`` (scores by one GEMM, softmax and sums in C++)."""
    check_call(q, k, k, None, None, 0.0)
    B, H, M, D = (int(x) for x in q.shape)
    HKV, N = int(k.shape[1]), int(k.shape[2])
    scale = float(D ** -0.5 if scale is None else scale)
    nkb = -(-N // block)
    lo = (M - last + causal_offset - (N - 1)) // block
    nbands = (M - 1 + causal_offset) // block - lo + 1
    group = H // HKV
    ql = q[:, :, M - last:].float().reshape(B, HKV, group * last, D)  # grouped heads share their K
    scores = (torch.matmul(ql, k.float().transpose(-1, -2)) * scale).reshape(B, H, last, N).contiguous()
    vert = torch.empty((B, H, nkb), dtype=torch.float32)
    slash = torch.empty((B, H, nbands), dtype=torch.float32)
    lib = sparse_library(D, _DTYPES[q.dtype])
    dims = _int64s([B * H, M, N, causal_offset, block, last, _threads(threads), int(bool(causal)), lo, nbands])
    lib.tw_minference_stats(scores.data_ptr(), vert.data_ptr(), slash.data_ptr(), dims)
    return vert, slash, lo


def cpu_vertical_slash(batch: int, heads: int, m: int, n: int, block: int, vertical: torch.Tensor,
                       slash: torch.Tensor, causal: bool = True, causal_offset: int = 0,
                       threads: int | None = None) -> BlockIndex:
    """The CSR of a per-head vertical-slash pattern (int64 [B, H, nv] / [B, H, ns]) built in C++."""
    from ...sparsity.attention.index import BlockIndex

    vert = vertical.to(torch.int64).contiguous()
    sl = slash.to(torch.int64).contiguous()
    nmb, nkb = -(-m // block), -(-n // block)
    rows = batch * heads * nmb
    rowptr = torch.empty(rows + 1, dtype=torch.int64)
    cols = torch.empty(max(1, rows * nkb), dtype=torch.int32)
    lib = sparse_library(16, "float32")
    dims = _int64s([batch, heads, m, n, block, causal_offset, int(bool(causal)), vert.shape[-1], sl.shape[-1],
                    _threads(threads)])
    nnz = lib.tw_vertical_slash_csr(vert.data_ptr(), sl.data_ptr(), dims, rowptr.data_ptr(), cols.data_ptr())
    return BlockIndex(batch, heads, m, n, block, rowptr, cols[:nnz].clone(), bool(causal), int(causal_offset))


# ----------------------------------------------------------------------------- template lowering


_NAMES = ("q", "k", "v", "scale", "causal", "causal_offset", "method", "params")


def bind_sparse_args(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
    """The op's eight arguments from a call's positional and keyword arguments."""
    values = list(args) + [kwargs[name] for name in _NAMES[len(args):]]
    return values[:len(_NAMES)]


@dataclass(frozen=True)
class CpuSparseAttentionCall:
    """How the runtime runs a ``block_sparse_attention`` node on the CPU target (a ``TemplateRunner``)."""

    attention: str | None = None
    config: Mapping[str, Any] | None = None

    def with_config(self, config: Mapping[str, Any] | None) -> CpuSparseAttentionCall:
        """This call with ``config`` (the kernels take only ``threads``)."""
        return replace(self, config=None if config is None else dict(config))

    def run_kernel(self, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """Estimate the index (dynamic methods) and run the sparse kernel (raises when it fails)."""
        from ...sparsity.attention.op import build_index

        q, k, v, scale, causal, offset, method, params = bind_sparse_args(args, kwargs)
        index = build_index(method, json.loads(params), q, k, float(scale), bool(causal), int(offset),
                            backend="cpu")
        threads = None if not self.config else self.config.get("threads")
        out, lse = cpu_block_sparse_forward(q, k, v, index, float(scale), bool(causal), int(offset), threads)
        return out, lse

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        """The op's torch implementation (same arguments, same results)."""
        from ...sparsity.attention.op import block_sparse_attention_reference_op

        return block_sparse_attention_reference_op(*bind_sparse_args(args, kwargs))

    def on_kernel_failure(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Nothing to carry over to later calls."""


def is_sparse_attention_node(node: Node) -> bool:
    """Whether ``node`` is a ``tilewright::block_sparse_attention`` node."""
    return packet_name(node.target) == _SPARSE


def sparse_attention_template(node: Node) -> TemplateLowering | None:
    """The CPU lowering of a block-sparse attention node (None for other nodes)."""
    if not is_sparse_attention_node(node):
        return None
    from .attention import unsupported_reason

    call = CpuSparseAttentionCall()
    q, k, v = node.args[:3]
    if not all(isinstance(x, Value) for x in (q, k, v)):
        return TemplateLowering(call, None, "non-tensor q, k or v")
    reason = unsupported_reason(q.type.dtype, k.type.dtype, v.type.dtype, int(q.type.shape[-1]), None, None, 0.0,
                                q.type.rank)
    return TemplateLowering(call, None, reason)
