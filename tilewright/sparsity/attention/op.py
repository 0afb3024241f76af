"""The ``tilewright::block_sparse_attention`` custom op, its index builder and the kernel dispatch.

Op semantics (forward inference only; q [B, Hq, M, D], k, v [B, Hkv, N, D])::

    index    = build_index(method, params, q, k, scale, causal, causal_offset)
    out, lse = attention(q, k, v) with every score outside the index's kept blocks = -inf
               (and the causal limit j <= i + causal_offset when causal)

``method`` / ``params`` (JSON text in the op's schema)::

    sinks_window    {"block", "sinks", "window"}           static Λ shape
    vertical_slash  {"block", "vertical": [...], "slash": [...]}   static
    xattention      {"block", "stride", "threshold"}       dynamic: antidiagonal scoring
    minference      {"block", "last_q", "vertical", "slash"}       dynamic: last-queries estimate

The op's own implementation is a torch reference (the index from torch estimators, dense
attention with the dropped blocks masked); targets lower the node to their kernels.
"""
from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .estimate import minference_estimate, xattention_select
from .index import BlockIndex, check_block, sinks_window, vertical_slash

log = logging.getLogger(__name__)

#: the methods the op takes ("exact" is a plan entry that leaves the site alone)
METHODS = ("sinks_window", "vertical_slash", "xattention", "minference")
#: each method's parameters and defaults
DEFAULTS: dict[str, dict[str, Any]] = {
    "sinks_window": {"block": 64, "sinks": 1, "window": 4},
    "vertical_slash": {"block": 64, "vertical": [0], "slash": [0, 1]},
    "xattention": {"block": 64, "stride": 8, "threshold": 0.9},
    "minference": {"block": 64, "last_q": 64, "vertical": 4, "slash": 4},
}


def method_params(method: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` completed with the method's defaults; ValueError for an unknown method or key."""
    if method not in DEFAULTS:
        raise ValueError(f"unknown sparse attention method {method!r}; use one of {METHODS} (or 'exact')")
    out = dict(DEFAULTS[method])
    unknown = set(params or {}) - set(out) - {"density"}
    if unknown:
        raise ValueError(f"sparse attention method {method!r} takes {sorted(out)}, not {sorted(unknown)}")
    out.update({key: value for key, value in (params or {}).items() if key != "density"})
    check_block(int(out["block"]))
    return out


def build_index(method: str, params: Mapping[str, Any], q: Tensor, k: Tensor, scale: float | None = None,
                causal: bool = False, causal_offset: int = 0, backend: str = "auto") -> BlockIndex:
    """The block index ``method`` keeps for this call (dynamic methods estimate it from q and k).

    ``backend`` picks XAttention's scorer: ``cpu`` (fused C++), ``triton``, ``torch`` or ``auto``.
    """
    p = method_params(method, params)
    B, H, M = (int(x) for x in q.shape[:3])
    N = int(k.shape[2])
    block = int(p["block"])
    if method in ("sinks_window", "vertical_slash"):  # static: built once per shape and parameters
        return _static_index(method, json.dumps(p, sort_keys=True), B, H, M, N, bool(causal), int(causal_offset))
    if method == "xattention":
        return xattention_select(q, k, float(p["threshold"]), block, int(p["stride"]), scale, causal, causal_offset,
                                 backend)
    return minference_estimate(q, k, int(p["last_q"]), int(p["vertical"]), int(p["slash"]), block, scale, causal,
                               causal_offset, backend if backend in ("cpu", "auto") else "torch")


@functools.lru_cache(maxsize=128)
def _static_index(method: str, params: str, B: int, H: int, M: int, N: int, causal: bool,
                  causal_offset: int) -> BlockIndex:
    """A static pattern's index (cached: its tensors are never written)."""
    p = json.loads(params)
    block = int(p["block"])
    if method == "sinks_window":
        return sinks_window(B, H, M, N, block, int(p["sinks"]), int(p["window"]), causal, causal_offset)
    return vertical_slash(B, H, M, N, block, list(p["vertical"]), list(p["slash"]), causal, causal_offset)


def block_sparse_reference(q: Tensor, k: Tensor, v: Tensor, index: BlockIndex, scale: float | None = None,
                           causal: bool = False, causal_offset: int = 0) -> tuple[Tensor, Tensor]:
    """Dense attention with the dropped blocks masked to -inf (float32 math): (out, lse)."""
    from ...ops.attention import attention_reference

    mask = index.token_mask().to(q.device)
    return attention_reference(q, k, v, None, mask, scale, causal, causal_offset)


def block_sparse_attention(q: Tensor, k: Tensor, v: Tensor, index: BlockIndex, scale: float | None = None,
                           causal: bool = False, causal_offset: int = 0, backend: str = "auto",
                           threads: int | None = None) -> tuple[Tensor, Tensor]:
    """Attention over the kept blocks of ``index``: (out [B, Hq, M, D], lse [B, Hq, M] float32).

    ``backend``: ``cpu`` (C++ kernel), ``triton`` (Triton kernel; CUDA, or the interpreter on CPU),
    ``reference`` (torch), or ``auto`` (C++ for CPU tensors, Triton for CUDA ones).
    """
    if backend == "auto":
        backend = "triton" if q.device.type == "cuda" else "cpu"
    if backend == "cpu":
        from ...targets.cpu.sparse_attention import cpu_block_sparse_forward

        return cpu_block_sparse_forward(q, k, v, index, scale, causal, causal_offset, threads)
    if backend == "triton":
        from ...targets.triton.attention.sparse import triton_block_sparse_forward

        return triton_block_sparse_forward(q, k, v, index, scale, causal, causal_offset)
    if backend == "reference":
        return block_sparse_reference(q, k, v, index, scale, causal, causal_offset)
    raise ValueError(f"unknown backend {backend!r}; use auto, cpu, triton or reference")


def block_sparse_attention_reference_op(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool,
                                        causal_offset: int, method: str, params: str) -> tuple[Tensor, Tensor]:
    """The op's reference: the index from torch estimators, then :func:`block_sparse_reference`."""
    index = build_index(method, json.loads(params), q, k, scale, causal, causal_offset, backend="torch")
    out, lse = block_sparse_reference(q, k, v, index, scale, causal, causal_offset)
    return out.contiguous(), lse.contiguous()


@torch.library.custom_op("tilewright::block_sparse_attention", mutates_args=())
def block_sparse_attention_op(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, causal_offset: int,
                              method: str, params: str) -> tuple[Tensor, Tensor]:
    """Block-sparse attention forward (see the module doc); returns (out, lse float32)."""
    return block_sparse_attention_reference_op(q, k, v, scale, causal, causal_offset, method, params)


@block_sparse_attention_op.register_fake
def _block_sparse_attention_fake(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, causal_offset: int,
                                 method: str, params: str) -> tuple[Tensor, Tensor]:
    B, H, M, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, M), dtype=torch.float32)


def params_text(method: str, params: Mapping[str, Any] | None) -> str:
    """The op's ``params`` argument: the completed parameters as canonical JSON."""
    return json.dumps(method_params(method, params), sort_keys=True)
