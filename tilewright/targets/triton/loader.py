"""Load generated Triton source as a launchable kernel.

Generated source is written to a content-addressed file under the cache directory (Triton
needs real source files to read), imported, and wrapped by :func:`tilewright.targets.triton.jit.wrap_kernel`.
When ``TILEWRIGHT_DEBUG_DIR`` is set, every kernel's source is also dumped there.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ...config import cache_subdir, write_debug_file
from .jit import interpret_mode, wrap_kernel

log = logging.getLogger(__name__)

_loaded: dict[tuple[str, str, bool], Any] = {}


def _source_dir() -> Path:
    return cache_subdir("kernels")


def dump_debug_source(name: str, source: str) -> None:
    """Write ``source`` to ``$TILEWRIGHT_DEBUG_DIR/<name>.py`` when a debug dir is set."""
    write_debug_file(f"{name}.py", source)


def load_kernel(source: str, fn_name: str, interpret: bool | None = None) -> Any:
    """Import ``source`` and return its function ``fn_name`` wrapped as a Triton kernel.

    Identical source is loaded once per process and mode.
    """
    if interpret is None:
        interpret = interpret_mode()
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    key = (digest, fn_name, interpret)
    if key in _loaded:
        return _loaded[key]
    dump_debug_source(f"{fn_name}_{digest[:8]}", source)
    path = _source_dir() / f"tw_{digest}.py"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    module_name = f"tilewright_generated_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    kernel = wrap_kernel(getattr(module, fn_name), interpret=interpret)
    _loaded[key] = kernel
    return kernel
