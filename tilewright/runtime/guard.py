"""The input guard: does a call match the specialisation compiled for an earlier one?

:func:`make_guard` writes, once per specialisation, a Python function that checks every
argument inline (a tensor's shape, strides, dtype, device and storage offset; a scalar's type
and value) with constants bound at generation time: no signature tuple is built per call.
It is never looser than the frontend's signature: when it says yes, the signature is equal.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def make_guard(inputs: Sequence[Any]) -> Callable[[Sequence[Any]], bool] | None:
    """A function telling whether a call's arguments match ``inputs`` (None: no cheap check)."""
    ns: dict[str, Any] = {}
    checks = [f"len(x) == {len(inputs)}"]
    for i, a in enumerate(inputs):
        if isinstance(a, torch.Tensor):
            ns[f"S{i}"], ns[f"T{i}"] = a.shape, a.stride()
            ns[f"D{i}"], ns[f"V{i}"] = a.dtype, a.device
            checks.append(f"x[{i}].__class__ is K{i} and x[{i}].shape == S{i} and x[{i}].stride() == T{i} and "
                          f"x[{i}].dtype is D{i} and x[{i}].device == V{i} and "
                          f"x[{i}].storage_offset() == {int(a.storage_offset())}")
            ns[f"K{i}"] = a.__class__
        elif a is None or isinstance(a, (bool, int, float)):
            ns[f"A{i}"] = a
            checks.append(f"x[{i}].__class__ is {type(a).__name__} and x[{i}] == A{i}" if a is not None
                          else f"x[{i}] is None")
        else:  # anything else: the frontend's own signature decides
            return None
    source = "def guard(x):\n    return (" + "\n            and ".join(checks) + ")\n"
    exec(compile(source, "<tilewright input guard>", "exec"), ns)
    return ns["guard"]  # type: ignore[no-any-return]
