"""The host's C++ toolchain and CPU, as the native CPU target sees them.

:func:`find_compiler` picks the C++ compiler (``$CXX``, else ``c++``, ``g++``, ``clang++`` on
``PATH``) and probes once per compiler whether OpenMP works; :func:`cpu_description` reads the
processor's model, vector ISA, core count and cache sizes from the OS; :func:`compile_flags`
gives the flags every kernel library is built with.
"""
from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...errors import BuildError

log = logging.getLogger(__name__)

#: Compilers tried, in order, when ``$CXX`` is unset or unusable.
CANDIDATES = ("c++", "g++", "clang++")
#: CPU flags (as /proc/cpuinfo spells them) that matter to generated kernels.
INTERESTING_ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16",
                   "amx_tile", "amx_bf16", "neon", "asimd")
_PROBE_TIMEOUT_S = 60.0
_OPENMP_PROBE = """\
#include <omp.h>
int main() {
    int n = 0;
#pragma omp parallel reduction(+ : n)
    n += 1;
    return n >= 1 && omp_get_max_threads() >= 1 ? 0 : 1;
}
"""

_lock = threading.Lock()
_versions: dict[str, str | None] = {}
_openmp: dict[str, bool] = {}


class NoCompilerError(BuildError):
    """No working C++ compiler was found; the message says where it looked and how to get one."""


@dataclass(frozen=True)
class Compiler:
    """A C++ compiler: its resolved ``path``, ``--version`` first line, and OpenMP support."""

    path: str
    version: str
    openmp: bool


def _run(cmd: list[str], cwd: str | None = None) -> subprocess.CompletedProcess[str] | None:
    """Run a probe command; None when it cannot start or times out."""
    try:
        return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("probe %s failed: %s", cmd, exc)
        return None


def compiler_version(path: str) -> str | None:
    """First line of ``path --version`` (cached per path); None when it does not run."""
    with _lock:
        if path in _versions:
            return _versions[path]
        proc = _run([path, "--version"])
        version = None
        if proc is not None and proc.returncode == 0:
            lines = (proc.stdout or proc.stderr).strip().splitlines()
            version = lines[0].strip() if lines else "unknown"
        _versions[path] = version
        return version


def supports_openmp(path: str) -> bool:
    """Whether ``path -fopenmp`` compiles and links a trivial OpenMP program (probed once per path)."""
    with _lock:
        if path in _openmp:
            return _openmp[path]
        with tempfile.TemporaryDirectory(prefix="tilewright-omp-") as tmp:
            Path(tmp, "probe.cpp").write_text(_OPENMP_PROBE)
            proc = _run([path, "-fopenmp", "probe.cpp", "-o", "probe"], cwd=tmp)
            ok = proc is not None and proc.returncode == 0
        if not ok:
            detail = proc.stderr.strip().splitlines()[:3] if proc is not None else ["did not run"]
            log.info("%s: OpenMP unavailable, kernels will run single-threaded (%s)", path, " ".join(detail))
        _openmp[path] = ok
        return ok


def _inspect(path: str) -> Compiler | None:
    """A :class:`Compiler` for ``path``, or None when it does not answer ``--version``."""
    version = compiler_version(path)
    if version is None:
        return None
    return Compiler(path=path, version=version, openmp=supports_openmp(path))


def find_compiler() -> Compiler:
    """The C++ compiler to build kernels with: ``$CXX``, else the first of c++, g++, clang++ on PATH.

    Raises :class:`NoCompilerError` when none of them works.
    """
    looked: list[str] = []
    cxx = os.environ.get("CXX", "").strip()
    if cxx:
        resolved = shutil.which(cxx)
        found = _inspect(resolved) if resolved else None
        if found is not None:
            return found
        looked.append(f"$CXX={cxx} ({'not found' if resolved is None else 'does not run'})")
        log.warning("$CXX=%s is %s; trying %s", cxx, "not found" if resolved is None else "not a working compiler",
                    ", ".join(CANDIDATES))
    else:
        looked.append("$CXX (unset)")
    for name in CANDIDATES:
        resolved = shutil.which(name)
        found = _inspect(resolved) if resolved else None
        if found is not None:
            return found
        looked.append(name)
    raise NoCompilerError(
        f"no C++ compiler found (looked at {', '.join(looked)} on PATH): install one "
        "(Debian/Ubuntu: apt install g++; Fedora: dnf install gcc-c++; macOS: xcode-select --install) "
        "or set CXX=/path/to/compiler; the graph runs eagerly meanwhile")


def compile_flags(compiler: Compiler) -> list[str]:
    """Flags for building a kernel library with ``compiler`` (no -ffast-math: NaN/inf must behave)."""
    flags = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c++17", "-fno-math-errno"]
    if compiler.openmp:
        flags.append("-fopenmp")
    return flags


def parse_size(text: str) -> int | None:
    """Bytes in a sysfs cache size such as ``48K``, ``2048K``, ``32M`` or ``512``; None if unparsable."""
    text = text.strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if scale != 1 else text
    try:
        return int(digits) * scale
    except ValueError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _cpuinfo(text: str | None) -> tuple[str, set[str]]:
    """(model name, flag set) from /proc/cpuinfo text (x86 ``flags``, ARM ``Features``)."""
    model, flags = "", set()
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def cache_sizes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> dict[str, int | None]:
    """``l1d_bytes``, ``l2_bytes``, ``l3_bytes`` of CPU 0 from sysfs (None where unreadable)."""
    sizes: dict[str, int | None] = {"l1d_bytes": None, "l2_bytes": None, "l3_bytes": None}
    try:
        indices = sorted(root.glob("index*"))
    except OSError:
        return sizes
    for index in indices:
        level, kind, size = (_read(index / name) for name in ("level", "type", "size"))
        if level is None or kind is None or size is None:
            continue
        level, kind = level.strip(), kind.strip().lower()
        key = {"1": "l1d_bytes" if kind == "data" else None, "2": "l2_bytes", "3": "l3_bytes"}.get(level)
        if key is not None and kind in ("data", "unified") and sizes[key] is None:
            sizes[key] = parse_size(size)
    return sizes


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


@lru_cache(maxsize=1)
def _describe() -> dict[str, Any]:
    model, flags = _cpuinfo(_read(Path("/proc/cpuinfo")))
    machine = platform.machine()
    if machine.lower() in ("aarch64", "arm64"):
        flags.add("asimd")  # Advanced SIMD (NEON) is mandatory on AArch64
    isa = sorted(flag for flag in INTERESTING_ISA if flag in flags)
    simd = 64 if "avx512f" in flags else 32 if flags & {"avx", "avx2"} else 16
    description: dict[str, Any] = {
        "model": model or platform.processor() or machine or "unknown",
        "isa": isa, "cores": _cores(), "simd_bytes": simd, "machine": machine,
    }
    description.update(cache_sizes())
    return description


def cpu_description() -> dict[str, Any]:
    """The host CPU read from the OS (cached): model, isa, cores, simd_bytes, l1d/l2/l3_bytes, machine."""
    description = _describe()
    return {**description, "isa": list(description["isa"])}
