"""Build C++ kernel source into shared libraries, cached on disk, and load them with ctypes.

A library's file name carries a sha256 over its source, the compiler (path and version), the
flags and the CPU (model and ISA, since kernels are built with ``-march=native``), so a cache
entry is only ever reused for exactly what built it. Libraries live in ``<cache_dir>/cpu/``, with
their ``.cpp`` kept beside them. Each build compiles to a file unique to its process and thread
and then renames it into place, so concurrent builders (threads or processes) never expose a
half-written library; a cached library that does not load is deleted and rebuilt once.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import re
import subprocess
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ...config import cache_subdir, write_debug_file
from ...errors import BuildError
from .toolchain import Compiler, compile_flags, cpu_description, find_compiler

log = logging.getLogger(__name__)

#: Seconds a single compiler run may take before the build fails.
DEFAULT_TIMEOUT_S = 300.0
#: Compiler output lines quoted in a :class:`CompileError`.
MAX_ERROR_LINES = 20

_libraries: dict[str, ctypes.CDLL] = {}
_load_lock = threading.Lock()
_key_locks: dict[str, threading.Lock] = {}
_key_locks_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_runs = 0
_runs_lock = threading.Lock()


class CompileError(BuildError):
    """The C++ compiler rejected a kernel (or timed out); the message quotes it and names the kept source."""


def cache_dir() -> Path:
    """``<config.cache_dir>/cpu`` (created), or a temp-dir fallback when that is not writable."""
    return cache_subdir("cpu")


def cache_key(source: str, compiler: Compiler, flags: list[str]) -> str:
    """sha256 (hex) over the source, compiler path and version, flags, and CPU model and ISA."""
    cpu = cpu_description()
    payload = json.dumps({"source": source, "compiler": [compiler.path, compiler.version], "flags": list(flags),
                          "cpu": [cpu["model"], cpu["isa"]]}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "kernel"


#: compiled at the top of every library: ``tw_nthreads(requested)`` is the OpenMP team size a
#: parallel region uses, the schedule's ``threads`` capped by ``omp_get_max_threads()``, which
#: ``torch.set_num_threads`` sets (torch's libgomp is the one the kernels load). A schedule tuned
#: for 2 threads must not run 2 threads when the user asked torch for 1: on a busy machine an
#: oversubscribed team waits at every barrier for a descheduled thread (measured 3-20x slower).
RUNTIME_PRELUDE = """#ifdef _OPENMP
#include <omp.h>
static inline int tw_nthreads(long long requested) {
  const int cap = omp_get_max_threads();
  return requested < 1 ? 1 : (requested < cap ? (int)requested : cap);
}
#else
static inline int tw_nthreads(long long) { return 1; }
#endif
"""


def with_runtime_prelude(source: str) -> str:
    """``source`` with :data:`RUNTIME_PRELUDE` in front (once)."""
    return source if source.startswith(RUNTIME_PRELUDE) else RUNTIME_PRELUDE + source


def library_path(source: str, name: str, compiler: Compiler | None = None, flags: list[str] | None = None) -> Path:
    """Where :func:`build_library` keeps the library for these arguments (built or not)."""
    source = with_runtime_prelude(source)
    compiler = compiler or find_compiler()
    flags = compile_flags(compiler) if flags is None else flags
    return cache_dir() / f"{_safe_name(name)}_{cache_key(source, compiler, flags)[:24]}.so"


def _unique_sibling(path: Path, suffix: str) -> Path:
    """A temp name beside ``path`` unique to this process and call (renamed into place later)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp{suffix}")


def _write_atomic(path: Path, text: str) -> None:
    tmp = _unique_sibling(path, path.suffix)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _dump_debug_source(stem: str, source: str) -> None:
    write_debug_file(f"{stem}.cpp", source)


def _excerpt(output: str) -> str:
    """The compiler's first error lines (from the first line that mentions an error), trimmed."""
    lines = [line.rstrip()[:300] for line in output.splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if "error" in line.lower()), 0)
    start = first - 1 if first > 0 and "In function" in lines[first - 1] else first
    shown = lines[start:start + MAX_ERROR_LINES]
    rest = len(lines) - start - len(shown)
    return "\n".join(shown) + (f"\n... ({rest} more lines)" if rest > 0 else "")


def compiler_runs() -> int:
    """How many times this process has started the C++ compiler (each a library build)."""
    return _runs


def _run_compiler(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run one compiler command (the only place the build layer starts a compiler)."""
    global _runs
    with _runs_lock:
        _runs += 1
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _compile(cpp: Path, so: Path, compiler: Compiler, flags: list[str], timeout: float) -> None:
    """Compile ``cpp`` into ``so`` via a unique temp file renamed into place; CompileError on failure."""
    tmp = _unique_sibling(so, ".so")
    cmd = [compiler.path, *flags, "-o", str(tmp), str(cpp)]
    started = time.perf_counter()
    try:
        try:
            proc = _run_compiler(cmd, timeout)
        except subprocess.TimeoutExpired:
            raise CompileError(f"{compiler.path} timed out after {timeout:g} s compiling {cpp}") from None
        except OSError as exc:
            raise CompileError(f"{compiler.path} could not be run to compile {cpp}: {exc}") from exc
        if proc.returncode != 0 or not tmp.exists():
            raise CompileError(f"{compiler.path} failed (exit {proc.returncode}) to compile {cpp}:\n"
                               f"{_excerpt(proc.stderr or proc.stdout)}")
        os.replace(tmp, so)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("built %s in %.2f s", so.name, time.perf_counter() - started)


def _key_lock(key: str) -> threading.Lock:
    with _key_locks_lock:
        return _key_locks.setdefault(key, threading.Lock())


def build_library(source: str, name: str, compiler: Compiler | None = None, flags: list[str] | None = None,
                  timeout: float = DEFAULT_TIMEOUT_S) -> Path:
    """The shared library built from C++ ``source`` (cached on disk; ``name`` labels its files).

    Uses :func:`find_compiler` and :func:`compile_flags` unless given. The returned library has
    been loaded once (see :func:`load_library`); a cached one that fails to load is rebuilt.
    Raises :class:`CompileError` when the compiler fails or times out.
    """
    source = with_runtime_prelude(source)
    compiler = compiler or find_compiler()
    flags = compile_flags(compiler) if flags is None else list(flags)
    so = library_path(source, name, compiler, flags)
    cpp = so.with_suffix(".cpp")
    _dump_debug_source(so.stem, source)
    with _key_lock(so.stem):  # one build per library per process; other processes may race safely
        if so.exists():
            try:
                load_library(so)
                log.debug("cache hit %s", so)
                return so
            except OSError as exc:
                log.warning("cached library %s does not load (%s); rebuilding it", so, exc)
                so.unlink(missing_ok=True)
        if not cpp.exists() or cpp.read_text() != source:
            _write_atomic(cpp, source)
        _compile(cpp, so, compiler, flags, timeout)
        try:
            load_library(so)
        except OSError as exc:
            raise CompileError(f"{so} was built from {cpp} but does not load: {exc}") from exc
    return so


def load_library(path: str | os.PathLike[str]) -> ctypes.CDLL:
    """``ctypes.CDLL`` of the library at ``path``, loaded once per path per process (OSError if it cannot)."""
    key = os.path.abspath(path)
    with _load_lock:
        lib = _libraries.get(key)
        if lib is None:
            lib = ctypes.CDLL(key)
            _libraries[key] = lib
        return lib


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            workers = max(1, int(cpu_description()["cores"]))
            _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tilewright-cpu-build")
        return _executor


def build_in_background(source: str, name: str, compiler: Compiler | None = None, flags: list[str] | None = None,
                        timeout: float = DEFAULT_TIMEOUT_S) -> Future[Path]:
    """Start :func:`build_library` on a shared thread pool; the future yields the library's path."""
    return _pool().submit(build_library, source, name, compiler, flags, timeout)
