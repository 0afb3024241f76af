"""Block-sparse attention (opt-in, accuracy-gated): block indices, estimators, kernels, the op, the rewrite.

See docs/sparsity_attention.md. Nothing here runs unless a sparsity plan asks for it.
"""
from __future__ import annotations

from .estimate import (
    minference_estimate,
    select_blocks,
    xattention_scores,
    xattention_scores_reference,
    xattention_select,
)
from .index import (
    BLOCK_SIZES,
    BlockIndex,
    dense_index,
    sinks_window,
    vertical_slash,
    visible_blocks,
)
from .op import (
    DEFAULTS,
    METHODS,
    block_sparse_attention,
    block_sparse_attention_op,
    block_sparse_reference,
    build_index,
    method_params,
    params_text,
)

__all__ = [
    "BLOCK_SIZES",
    "DEFAULTS",
    "METHODS",
    "BlockIndex",
    "block_sparse_attention",
    "block_sparse_attention_op",
    "block_sparse_reference",
    "build_index",
    "dense_index",
    "method_params",
    "minference_estimate",
    "params_text",
    "select_blocks",
    "sinks_window",
    "vertical_slash",
    "visible_blocks",
    "xattention_scores",
    "xattention_scores_reference",
    "xattention_select",
]
