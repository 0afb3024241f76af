"""Global settings for tilewright, read from the environment once and changeable at run time.

Usage::

    import tilewright
    tilewright.config.verify = True        # check every kernel against its reference once
    tilewright.config.autotune = True      # tune database misses at compile time
    tilewright.config.strict = True        # any fallback raises StrictModeError
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path


def _env_flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _running_cli_without_gpu() -> bool:
    if os.path.basename(sys.argv[0] if sys.argv else "") != "tilewright" or "TILEWRIGHT_INTERPRET" in os.environ:
        return False
    import torch

    return not torch.cuda.is_available()


# NOTE: Triton decides at import time whether its own helper functions (tl.sum, tl.sigmoid...)
# are interpreted, and importing torch._dynamo imports triton; so the interpreter must be
# switched on here, before anything else, when it is requested (or when the `tilewright`
# command runs on a machine without a GPU).
#: True when the `tilewright` command switched the interpreter on itself (no GPU, nothing asked):
#: commands that compile a user's model then prefer the native CPU target (commands/_common.py)
CLI_DEFAULTED_INTERPRETER = _running_cli_without_gpu()
if CLI_DEFAULTED_INTERPRETER:
    os.environ["TILEWRIGHT_INTERPRET"] = "1"
if _env_flag("TILEWRIGHT_INTERPRET") and not os.environ.get("TRITON_INTERPRET"):
    os.environ["TRITON_INTERPRET"] = "1"


def _default_cache_dir() -> Path:
    env = os.environ.get("TILEWRIGHT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tilewright"


@dataclass
class Config:
    """Process-wide tilewright settings (see module docstring)."""

    interpret: bool = field(default_factory=lambda: _env_flag("TILEWRIGHT_INTERPRET"))
    verify: bool = field(default_factory=lambda: _env_flag("TILEWRIGHT_VERIFY"))
    #: Raise :class:`tilewright.errors.StrictModeError` instead of falling back (a kernel,
    #: template, extern call or whole graph that would run its reference). For tests/benchmarks.
    strict: bool = field(default_factory=lambda: _env_flag("TILEWRIGHT_STRICT"))
    debug_dir: str | None = field(default_factory=lambda: os.environ.get("TILEWRIGHT_DEBUG_DIR") or None)
    cache_dir: Path = field(default_factory=_default_cache_dir)
    #: SQLAlchemy URL of the tuning database; None means ``sqlite:///<cache_dir>/tuning.db``.
    tuning_db_url: str | None = field(default_factory=lambda: os.environ.get("TILEWRIGHT_TUNING_DB") or None)
    autotune: bool = field(default_factory=lambda: _env_flag("TILEWRIGHT_AUTOTUNE"))
    #: Code generator for CPU tensors: "cpu" (native C++/OpenMP kernels), or "auto"/"triton"
    #: (Triton kernels, run in the interpreter when ``interpret`` is on).
    target: str = field(default_factory=lambda: os.environ.get("TILEWRIGHT_TARGET", "auto").strip().lower() or "auto")
    #: Trials per kernel when tuning at compile time.
    autotune_trials: int = 20
    #: Worker processes compiling GPU kernels in parallel (tuning candidates, a graph's first
    #: compile), and how long one compile may take before its worker is killed.
    compile_workers: int = 4
    compile_timeout_s: float = 120.0
    #: Fuse pointwise epilogues into matmul templates.
    epilogue_fusion: bool = True
    #: Rewrite attention patterns into the fused attention op.
    fuse_attention: bool = True
    #: Relative/absolute tolerances used by ``verify`` for float32 (scaled up for half types).
    verify_rtol: float = 1e-4
    verify_atol: float = 1e-5

    @property
    def config(self) -> "Config":
        """``import tilewright.config as c`` yields this object; ``c.config`` is it too."""
        return self

    def tuning_url(self) -> str:
        """The SQLAlchemy URL of the tuning database in use."""
        if self.tuning_db_url:
            return self.tuning_db_url
        return f"sqlite:///{self.cache_dir / 'tuning.db'}"


config = Config()


def cache_subdir(name: str) -> Path:
    """``<config.cache_dir>/<name>`` (created), or ``<tmp>/tilewright-<name>`` when that is not writable."""
    import tempfile

    path = Path(config.cache_dir) / name
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:  # read-only home: fall back to a temp dir
        path = Path(tempfile.gettempdir()) / f"tilewright-{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def write_debug_file(filename: str, text: str) -> None:
    """Write ``text`` to ``<debug_dir>/<filename>`` when ``config.debug_dir`` (``TILEWRIGHT_DEBUG_DIR``) is set."""
    debug_dir = config.debug_dir or os.environ.get("TILEWRIGHT_DEBUG_DIR")
    if not debug_dir:
        return
    path = Path(debug_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / filename).write_text(text)
