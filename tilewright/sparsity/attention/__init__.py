"""Block-sparse attention (opt-in, accuracy-gated): block indices, estimators, kernels, the op, the rewrite.

See docs/sparsity_attention.md. Nothing here runs unless a sparsity plan asks for it.
"""
from __future__ import annotations

from .calibrate import (
    GRIDS,
    calibrate_attention,
    capture_attention_inputs,
    relative_error,
    sparsest_within,
)
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
from .rewrite import (
    attention_sites,
    attention_sparsity_pass,
    rewrite_attention_sites,
    site_ordinal,
    unsupported_site,
)

__all__ = [
    "BLOCK_SIZES",
    "DEFAULTS",
    "GRIDS",
    "METHODS",
    "BlockIndex",
    "attention_sites",
    "attention_sparsity_pass",
    "block_sparse_attention",
    "block_sparse_attention_op",
    "block_sparse_reference",
    "build_index",
    "calibrate_attention",
    "capture_attention_inputs",
    "dense_index",
    "method_params",
    "minference_estimate",
    "params_text",
    "relative_error",
    "rewrite_attention_sites",
    "select_blocks",
    "sinks_window",
    "site_ordinal",
    "sparsest_within",
    "unsupported_site",
    "vertical_slash",
    "visible_blocks",
    "xattention_scores",
    "xattention_scores_reference",
    "xattention_select",
]
