"""Loading ``module:factory`` specs (and ``.mlir`` paths) for the CLI commands."""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from ._common import one_line


#: positional example inputs, or keyword ones (a factory that returned a dict)
ExampleInputs = tuple[Any, ...] | dict[str, Any]


class FactoryError(ValueError):
    """The spec could not be loaded; the message (one line) says what to fix."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def load_factory(spec: str, input_shapes: str | None = None) -> tuple[Callable[..., Any], ExampleInputs]:
    """Return ``(model_or_fn, example_inputs)`` from ``module:factory`` or a ``.mlir`` file.

    ``example_inputs`` is a tuple of positional arguments, or a dict of keyword arguments when
    the factory returned a mapping (Hugging Face style: ``model(**inputs)``); see
    :func:`split_inputs`.

    Raises:
        FactoryError: for anything wrong with the spec: a missing file, a file that is not
            MLIR, a module that does not import, no such factory, a factory that raises or
            returns something else than ``(model, example_inputs)``.
    """
    if spec.endswith(".mlir"):
        if not Path(spec).is_file():
            raise FactoryError(f"no such MLIR file: {spec}")
        from ..frontend.mlir import load_mlir_model

        try:
            model, inputs = load_mlir_model(spec, input_shapes=input_shapes)
        except Exception as exc:  # parse errors, unsupported ops, unsized dynamic dims
            raise FactoryError(f"cannot load {spec}: {exc}") from exc
        return model, tuple(inputs)
    if ":" not in spec:
        hint = " (no such file)" if spec.endswith((".py", ".mlir")) and not Path(spec).exists() else ""
        raise FactoryError(f"expected MODULE:FACTORY (or a .mlir file), got {spec!r}{hint}; "
                           "e.g. mypkg.models:make_gpt2")
    module_name, attr = spec.rsplit(":", 1)
    try:
        if module_name.endswith(".py") or "/" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise FactoryError(f"no such file {path}")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert mod_spec and mod_spec.loader
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[path.stem] = module
            mod_spec.loader.exec_module(module)
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except FactoryError:
        raise
    except Exception as exc:  # ImportError, or whatever the module raises while importing
        raise FactoryError(f"cannot import {module_name!r}: {_describe(exc)}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise FactoryError(f"{module_name!r} has no callable {attr!r}")
    try:
        result = factory()
    except Exception as exc:
        raise FactoryError(f"{spec} raised {_describe(exc)}") from exc
    if not (isinstance(result, tuple) and len(result) == 2):
        raise FactoryError(f"{spec} must return (model, example_inputs), got {type(result).__name__}")
    model, inputs = result
    if isinstance(inputs, Mapping):
        bad = [k for k in inputs if not isinstance(k, str)]
        if bad:
            raise FactoryError(f"{spec} returned keyword inputs with non-string keys {bad[:3]}")
        return model, dict(inputs)
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    return model, tuple(inputs)


def split_inputs(inputs: ExampleInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` for calling the model with what :func:`load_factory` returned."""
    return ((), dict(inputs)) if isinstance(inputs, dict) else (tuple(inputs), {})
