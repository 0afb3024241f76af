"""The native CPU target's build layer: compiler discovery, the on-disk library cache, loading."""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

import tilewright
from tilewright.errors import BuildError
from tilewright.targets.cpu import build, toolchain
from tilewright.targets.cpu.build import (
    CompileError,
    build_in_background,
    build_library,
    library_path,
    load_library,
    with_runtime_prelude,
)
from tilewright.targets.cpu.toolchain import (
    NoCompilerError,
    compile_flags,
    cpu_description,
    find_compiler,
)

REPO = Path(__file__).resolve().parents[2]

ADD_ONE = """
extern "C" void add_one(float* x, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; ++i) x[i] += 1.0f;
}
extern "C" int has_openmp() {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
"""


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setattr(tilewright.config, "cache_dir", cache)
    return cache


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Every compiler command the build layer runs from now on."""
    calls: list[list[str]] = []
    real = build._run_compiler

    def counting(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return real(cmd, timeout)

    monkeypatch.setattr(build, "_run_compiler", counting)
    return calls


def _call_add_one(path: Path) -> torch.Tensor:
    lib = load_library(path)
    lib.add_one.argtypes = [ctypes.c_void_p, ctypes.c_long]
    lib.add_one.restype = None
    x = torch.arange(1000, dtype=torch.float32)
    lib.add_one(x.data_ptr(), x.numel())
    return x


def test_built_library_runs_on_a_tensor(_cache: Path) -> None:
    path = build_library(ADD_ONE, "add_one")
    assert path.parent == _cache / "cpu" and path.suffix == ".so"
    assert path.with_suffix(".cpp").read_text() == with_runtime_prelude(ADD_ONE)  # kept for debugging
    torch.testing.assert_close(_call_add_one(path), torch.arange(1000, dtype=torch.float32) + 1)
    compiler = find_compiler()
    assert ("-fopenmp" in compile_flags(compiler)) == compiler.openmp
    assert load_library(path).has_openmp() == int(compiler.openmp)
    assert "-ffast-math" not in compile_flags(compiler)


def test_cache_hit_does_not_recompile(compiles: list[list[str]]) -> None:
    first = build_library(ADD_ONE, "add_one")
    mtime = first.stat().st_mtime_ns
    assert build_library(ADD_ONE, "add_one") == first
    assert len(compiles) == 1 and first.stat().st_mtime_ns == mtime
    other = build_library(ADD_ONE + "\n// another kernel\n", "add_one")
    assert other != first and len(compiles) == 2


def test_cache_key_covers_flags(compiles: list[list[str]]) -> None:
    flags = compile_flags(find_compiler())
    assert build_library(ADD_ONE, "k", flags=flags) != build_library(ADD_ONE, "k", flags=[*flags, "-DEXTRA"])
    assert len(compiles) == 2


def test_compile_error_quotes_the_compiler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tilewright.config, "debug_dir", str(tmp_path / "debug"))
    source = 'extern "C" int broken() { return undefined_name_xyz; }\n'
    with pytest.raises(CompileError) as info:
        build_library(source, "broken")
    message = str(info.value)
    assert "undefined_name_xyz" in message and "error" in message.lower()
    kept = library_path(source, "broken").with_suffix(".cpp")
    assert str(kept) in message and kept.read_text() == with_runtime_prelude(source)
    assert isinstance(info.value, BuildError)
    assert [p.suffix for p in (tmp_path / "debug").iterdir()] == [".cpp"]
    assert not list(kept.parent.glob(".*tmp*"))  # no temp file left behind


def test_compile_timeout_is_a_compile_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setattr(build, "_run_compiler", hang)
    with pytest.raises(CompileError, match="timed out after 7 s"):
        build_library(ADD_ONE + "// timeout\n", "slow", timeout=7)


def test_missing_compiler_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(NoCompilerError) as info:
        find_compiler()
    message = str(info.value)
    assert "no-such-compiler" in message and "g++" in message and "clang++" in message
    assert "apt install g++" in message and "CXX=" in message
    with pytest.raises(BuildError):
        build_library(ADD_ONE, "add_one")


def test_cxx_is_preferred(monkeypatch: pytest.MonkeyPatch) -> None:
    gxx = find_compiler()
    monkeypatch.setenv("CXX", gxx.path)
    assert find_compiler() == gxx and gxx.version


_WORKER = textwrap.dedent("""
    import ctypes, sys
    from pathlib import Path
    from tilewright.targets.cpu.build import build_library, load_library
    path = build_library(Path(sys.argv[1]).read_text(), "race")
    lib = load_library(path)
    lib.add_one.argtypes = [ctypes.c_void_p, ctypes.c_long]
    x = (ctypes.c_float * 4)(1, 2, 3, 4)
    lib.add_one(x, 4)
    assert list(x) == [2, 3, 4, 5], list(x)
    print(path)
""")


def test_concurrent_builders_all_get_a_loadable_library(tmp_path: Path, _cache: Path) -> None:
    source = ADD_ONE + "\n// race\n"
    source_file = tmp_path / "race.cpp"
    source_file.write_text(source)
    env = {**os.environ, "TILEWRIGHT_CACHE_DIR": str(_cache), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(source_file)], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(build_library(source, "race"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        paths.append(Path(out.strip().splitlines()[-1]))
    assert len(paths) == 4 and len(set(paths)) == 1
    _call_add_one(paths[0])
    assert not list(paths[0].parent.glob(".*tmp*"))


def test_background_build() -> None:
    futures = [build_in_background(ADD_ONE + f"// {i}\n", f"bg{i}") for i in range(2)]
    paths = [future.result(timeout=120) for future in futures]
    assert len(set(paths)) == 2
    for path in paths:
        torch.testing.assert_close(_call_add_one(path), torch.arange(1000, dtype=torch.float32) + 1)


def test_corrupt_cache_entry_is_rebuilt(compiles: list[list[str]]) -> None:
    source = ADD_ONE + "\n// corrupt\n"
    path = library_path(source, "corrupt")
    path.write_bytes(b"this is not an ELF file")
    assert build_library(source, "corrupt") == path
    assert len(compiles) == 1
    torch.testing.assert_close(_call_add_one(path), torch.arange(1000, dtype=torch.float32) + 1)


def test_cpu_description() -> None:
    cpu = cpu_description()
    assert cpu["cores"] >= 1 and cpu["simd_bytes"] in (16, 32, 64)
    assert cpu["isa"] == sorted(cpu["isa"]) and set(cpu["isa"]) <= set(toolchain.INTERESTING_ISA)
    assert isinstance(cpu["model"], str) and cpu["model"] and cpu["machine"]
    for key in ("l1d_bytes", "l2_bytes", "l3_bytes"):
        assert cpu[key] is None or cpu[key] > 0
    cpu["isa"].append("mutated")
    assert "mutated" not in cpu_description()["isa"]


def test_cache_sizes_parse_sysfs(tmp_path: Path) -> None:
    for i, (level, kind, size) in enumerate([("1", "Data", "48K"), ("1", "Instruction", "32K"),
                                             ("2", "Unified", "2048K"), ("3", "Unified", "32M")]):
        index = tmp_path / f"index{i}"
        index.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (index / name).write_text(value + "\n")
    assert toolchain.cache_sizes(tmp_path) == {"l1d_bytes": 48 << 10, "l2_bytes": 2048 << 10, "l3_bytes": 32 << 20}
    assert toolchain.cache_sizes(tmp_path / "missing") == {"l1d_bytes": None, "l2_bytes": None, "l3_bytes": None}
    assert toolchain.parse_size("garbage") is None and toolchain.parse_size("512") == 512


def test_cpuinfo_parsing() -> None:
    x86 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f\n"
    assert toolchain._cpuinfo(x86) == ("Some CPU", {"fpu", "sse4_2", "avx", "avx2", "fma", "avx512f"})
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm\nCPU part\t: 0xd0c\n"
    assert toolchain._cpuinfo(arm) == ("", {"fp", "asimd", "evtstrm"})
    assert toolchain._cpuinfo(None) == ("", set())


THREADS_PROBE = '''
#include <omp.h>
extern "C" int team_size(long long requested) {
  int n = 0;
  #pragma omp parallel num_threads(tw_nthreads(requested))
  {
    #pragma omp single
    n = omp_get_num_threads();
  }
  return n;
}
'''


def test_openmp_teams_follow_torch_set_num_threads() -> None:
    """A schedule's ``threads`` is capped by torch's intra-op setting at run time: after
    ``torch.set_num_threads(1)`` a region asking for 2 threads runs 1 (an oversubscribed team
    stalls at every barrier on a busy machine)."""
    if not find_compiler().openmp:
        pytest.skip("the C++ compiler has no OpenMP: every kernel runs one thread")
    team_size = load_library(build_library(THREADS_PROBE, "threads_probe")).team_size
    team_size.restype, team_size.argtypes = ctypes.c_int, [ctypes.c_longlong]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert team_size(2) == 1 and team_size(8) == 1
        assert team_size(0) == 1
        torch.set_num_threads(2)
        assert team_size(1) == 1
        assert team_size(2) == 2
    finally:
        torch.set_num_threads(before)


def test_every_generated_parallel_region_is_capped() -> None:
    """Each OpenMP team the C++ generators open asks ``tw_nthreads`` for its size."""
    import re

    import tilewright.targets.cpu as cpu_pkg

    unchecked = []
    for path in sorted(Path(cpu_pkg.__file__).parent.glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "#pragma omp parallel" in line and path.name != "toolchain.py":
                clauses = re.findall(r"num_threads\(([^()]*(?:\([^()]*\))?)\)", line)
                if not clauses or not all(c.startswith("tw_nthreads(") for c in clauses):
                    unchecked.append(f"{path.name}:{number}: {line.strip()}")
    assert not unchecked, unchecked
