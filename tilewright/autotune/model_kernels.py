"""The tunable kernels of a ``module:factory`` target (what ``tilewright autotune`` tunes).

Worker processes rebuild kernels from the same target when the kernels cannot be pickled.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ..frontend.api import tunable_kernels


def load_target(target: str) -> Any:
    """Import ``module:factory`` (the current directory is importable) and call it."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected module:factory, got {target!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj()


def kernels_of(made: Any) -> list[Any]:
    """The tunable kernels of what a factory returned."""
    if isinstance(made, (list, tuple)) and made and all(hasattr(k, "space") and hasattr(k, "problem")
                                                       for k in made):
        return list(made)
    if isinstance(made, tuple) and len(made) == 2:
        model, inputs = made
        return list(tunable_kernels(model, inputs))
    raise TypeError("the factory must return (model, example_inputs) or a list of TunableKernel")
