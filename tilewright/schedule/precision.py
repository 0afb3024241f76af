"""Which arithmetic float32 matmuls may use, following torch's own precision flags.

torch states the float32 matmul precision it allows in two APIs: the legacy one
(``torch.backends.cuda.matmul.allow_tf32``, ``torch.set_float32_matmul_precision``) and, from
torch 2.9, ``torch.backends.cuda.matmul.fp32_precision`` (``"ieee"``, ``"tf32"`` or ``"none"``:
inherit ``torch.backends.fp32_precision``). Mixing the two makes the legacy getters raise, so
:func:`fp32_matmul_policy` reads the new attribute first and the legacy flags only where it is
missing or undecided.

The policy decides the ``tl.dot`` input precisions a float32 matmul kernel may choose from
(:func:`precision_choices`), which becomes the ``PRECISION`` schedule parameter:

* ``"tf32"`` (torch allows TF32, so cuBLAS uses it too): ``tf32`` only (tensor-core peak);
* ``"ieee"`` (torch's default, ``"highest"``): ``ieee`` (plain FMA: full float32, the FMA peak)
  and ``tf32x3`` (three TF32 products per step: float32-level error, about 1e-6 relative, at
  roughly a third of the TF32 peak), unless ``TILEWRIGHT_TF32X3=0`` forbids the latter.

The policy is written into the kernel's source and problem, so a flag change gives other kernel
fingerprints and tuning keys: nothing chosen or compiled under one precision is reused under
the other.
"""
from __future__ import annotations

import os

import torch

#: ``tl.dot`` input precisions a float32 kernel may use, per policy
_CHOICES = {"tf32": ["tf32"], "ieee": ["ieee", "tf32x3"]}


def _legacy_policy() -> str:
    try:
        if torch.backends.cuda.matmul.allow_tf32:
            return "tf32"
        return "tf32" if torch.get_float32_matmul_precision() != "highest" else "ieee"
    except RuntimeError:  # torch refuses to answer when both APIs were used: the safe choice
        return "ieee"


def fp32_matmul_policy() -> str:
    """``"tf32"`` when torch lets float32 matmuls use TF32, else ``"ieee"`` (read at call time)."""
    for owner in (torch.backends.cuda.matmul, torch.backends):
        value = str(getattr(owner, "fp32_precision", "none") or "none").lower()
        if value in ("tf32", "ieee"):
            return value
    return _legacy_policy()


def tf32x3_allowed() -> bool:
    """Whether ``tf32x3`` may stand in for IEEE float32 dots (``TILEWRIGHT_TF32X3``, default on)."""
    return os.environ.get("TILEWRIGHT_TF32X3", "1").strip().lower() not in ("0", "false", "no", "off")


def precision_choices(policy: str | None = None) -> list[str]:
    """The ``tl.dot`` input precisions a float32 matmul may use under ``policy`` (default: torch's
    flags now), the first being the default."""
    policy = policy or fp32_matmul_policy()
    if policy not in _CHOICES:
        raise ValueError(f"unknown float32 matmul policy {policy!r}; expected one of {sorted(_CHOICES)}")
    choices = list(_CHOICES[policy])
    return choices if tf32x3_allowed() else [c for c in choices if c != "tf32x3"]


def uses_tensor_cores(precision: str) -> bool:
    """Whether a float32 ``tl.dot`` of this input precision runs on tensor cores."""
    return precision in ("tf32", "tf32x3")
