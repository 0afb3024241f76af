"""Opt-in, accuracy-gated approximate rewrites: block-sparse / 2:4 / low-rank weights, sparse attention.

Nothing here runs unless asked for (``options={"sparsity": {...}}`` or ``tilewright sparsify``).
See docs/sparsity.md.
"""
from __future__ import annotations

from tilewright.sparsity.plan import (
    PLAN_VERSION,
    PlanEntry,
    PlanError,
    PlanMismatchError,
    SparsityPlan,
    attention_site,
    check_fingerprint,
    model_fingerprint,
)

__all__ = [
    "PLAN_VERSION",
    "PlanEntry",
    "PlanError",
    "PlanMismatchError",
    "SparsityPlan",
    "attention_site",
    "check_fingerprint",
    "model_fingerprint",
]
