"""Loading ``module:factory`` specs (and ``.mlir`` paths) for the CLI commands."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable


class FactoryError(ValueError):
    """The spec could not be loaded; the message says what to fix."""


def load_factory(spec: str, input_shapes: str | None = None) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """Return ``(model_or_fn, example_inputs)`` from ``module:factory`` or a ``.mlir`` file."""
    if spec.endswith(".mlir"):
        from ..frontend.mlir import load_mlir_model

        model, inputs = load_mlir_model(spec, input_shapes=input_shapes)
        return model, tuple(inputs)
    if ":" not in spec:
        raise FactoryError(f"expected MODULE:FACTORY (or a .mlir file), got {spec!r}; e.g. mypkg.models:make_gpt2")
    module_name, attr = spec.rsplit(":", 1)
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.exists():
                raise FactoryError(f"no such file {path}")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert mod_spec and mod_spec.loader
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[path.stem] = module
            mod_spec.loader.exec_module(module)
        else:
            sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FactoryError(f"cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise FactoryError(f"{module_name!r} has no callable {attr!r}")
    result = factory()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise FactoryError(f"{spec} must return (model, example_inputs), got {type(result).__name__}")
    model, inputs = result
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    return model, tuple(inputs)
