"""Ahead-of-time compilation of generated kernels for a GPU target, without a GPU.

Triton's interpreter accepts code its compiler rejects (loop-carried type changes, Python
values where tensors are needed). :func:`compile_for_target` runs the real compiler down to
machine code for, e.g., an H100 (``sm_90``); the test suite uses it to check every generated
kernel of the model zoo, and the autotuner can use it to precompile. It must run in a process
where Triton was imported *without* ``TRITON_INTERPRET`` (see :func:`compile_in_subprocess`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

_POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
                  torch.float64: "*fp64", torch.int64: "*i64", torch.int32: "*i32", torch.int16: "*i16",
                  torch.int8: "*i8", torch.uint8: "*u8", torch.bool: "*i1"}


@dataclass
class CompileJob:
    """One kernel source plus everything the compiler needs to specialise it.

    ``pointer_types`` are the types of the non-constexpr arguments in order (``"*fp32"``, or
    ``"i32"``/``"fp32"`` for scalars); ``aligned`` names the arguments Triton would specialise as
    divisible by 16 when the kernel runs (pointers from torch's allocator, sizes and strides that
    are multiples of 16); ``source`` may be empty when ``module`` names an importable module that
    defines ``fn_name`` (hand-written kernels).
    """

    name: str
    source: str
    fn_name: str
    pointer_types: list[str]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    aligned: list[str] = field(default_factory=list)
    module: str = ""
    #: the names of ``pointer_types``' arguments (empty: the kernel's non-constexpr ones, in order)
    arg_names: list[str] = field(default_factory=list)


def _constexpr(value: Any) -> Any:
    """A config value as the kernel's constexpr (strings such as ``PRECISION`` stay strings)."""
    return value if isinstance(value, str) or value is None else int(value)


def job_for(kernel: Any, config: dict[str, Any] | None = None) -> CompileJob:
    """A :class:`CompileJob` for a :class:`~tilewright.targets.triton.kernel.GeneratedKernel` and config."""
    config = dict(config or kernel.config)
    spec = kernel.spec
    fn_name = spec.fn_name
    if spec.kind == "reduction":
        persistent = int(config["RBLOCK"]) >= int(spec.meta["rnumel"])
        fn_name = spec.meta["persistent_fn" if persistent else "looped_fn"]
    pointers = [_POINTER_TYPES[v.type.dtype] for v in spec.inputs + spec.outputs]
    consts = {k: _constexpr(v) for k, v in config.items() if k not in ("num_warps", "num_stages", "extern")}
    if spec.kind == "matmul":  # the extern product's pointer, and whether it is read
        pointers.append(_POINTER_TYPES[spec.inputs[0].type.dtype])
        consts["EXTERN"] = int(bool(config.get("extern", False)))
    return CompileJob(kernel.name, spec.source, fn_name, pointers, consts, int(config.get("num_warps", 4)),
                      int(config.get("num_stages", 1)), aligned=_pointer_args(spec.source, fn_name))


def _pointer_args(source: str, fn_name: str) -> list[str]:
    """The non-constexpr parameters of a generated kernel: tensors from torch's allocator, aligned."""
    import re

    match = re.search(rf"def {re.escape(fn_name)}\((.*?)\):", source, re.S)
    params = [p.strip() for p in match.group(1).split(",")] if match else []
    return [p for p in params if p and "constexpr" not in p]


def jobs_for(kernel: Any, config: dict[str, Any] | None = None) -> list[CompileJob]:
    """Every :class:`CompileJob` a generated kernel launches (a scatter launches two)."""
    if getattr(kernel, "kind", None) == "scatter":
        config = dict(config or kernel.config)
        pointers = [_POINTER_TYPES[v.type.dtype] for v in kernel.inputs + kernel.outputs]
        return [CompileJob(kernel.name + suffix, kernel.source, kernel.name + suffix, pointers,
                           {"XBLOCK": int(config["XBLOCK"])}, int(config.get("num_warps", 4)), 1)
                for suffix in ("_copy", "_scatter")]
    return [job_for(kernel, config)]


def _parameters(fn: Any) -> list[tuple[str, bool, Any]]:
    """(name, is constexpr, default) of a Triton kernel's parameters (JIT, interpreted or plain)."""
    import inspect

    raw = fn
    while hasattr(raw, "fn"):  # a recorder, JIT or interpreted function: the Python function inside
        raw = raw.fn
    out = []
    for name, p in inspect.signature(raw).parameters.items():
        default = None if p.default is inspect.Parameter.empty else p.default
        out.append((name, "constexpr" in str(p.annotation), default))
    return out


def job_from_launch(name: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, source: str = "",
                    module: str = "", fn_name: str = "") -> CompileJob:
    """The :class:`CompileJob` of one launch ``fn[grid](*args, **kwargs)``, specialised as Triton would
    specialise it: tensors are pointers (divisible by 16 when their address is), integers equal
    to 1 are constants, other integers ``i32``/``i64`` (divisible by 16 when they are), floats ``fp32``."""
    import torch

    params = _parameters(fn)
    values = {p: a for (p, _, _), a in zip(params, args)}
    values.update({k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")})
    types: list[str] = []
    names: list[str] = []
    consts: dict[str, Any] = {}
    aligned: list[str] = []
    for pname, is_constexpr, default in params:
        value = values.get(pname, default)
        if is_constexpr or value is None:
            consts[pname] = value.value if hasattr(value, "value") and not isinstance(value, torch.Tensor) else value
            continue
        names.append(pname)
        if isinstance(value, torch.Tensor):
            types.append(_POINTER_TYPES[value.dtype])
            if value.data_ptr() % 16 == 0:
                aligned.append(pname)
        elif isinstance(value, bool):
            types.append("i1")
        elif isinstance(value, int):
            if value == 1:
                consts[pname] = 1
                names.pop()
                continue
            types.append("i32" if -2**31 <= value < 2**31 else "i64")
            if value % 16 == 0:
                aligned.append(pname)
        elif isinstance(value, float):
            types.append("fp32")
        else:
            raise TypeError(f"{name}: cannot state the type of argument {pname}={value!r}")
    return CompileJob(name, source, fn_name or getattr(getattr(fn, "fn", fn), "__name__", name), types, consts,
                      int(kwargs.get("num_warps", 4)), int(kwargs.get("num_stages", 3)), aligned, module, names)


class LaunchRecorder:
    """Stands in for a Triton kernel: ``recorder[grid](*args, **kwargs)`` records the launch as a
    :class:`CompileJob` (see :func:`job_from_launch`) instead of running it, so a launcher's own
    code states the arguments, constants and launch options a real run would compile."""

    def __init__(self, fn: Any, name: str, *, source: str = "", module: str = "", fn_name: str = "") -> None:
        self.fn, self.name, self.source, self.module, self.fn_name = fn, name, source, module, fn_name
        self.jobs: list[CompileJob] = []

    def __getitem__(self, grid: Any) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.jobs.append(job_from_launch(self.name, self.fn, args, kwargs, source=self.source,
                                             module=self.module, fn_name=self.fn_name))
        return record


def compile_for_target(job: CompileJob, arch: int = 90, warp_size: int = 32) -> int:
    """Compile ``job`` to machine code for CUDA ``sm_<arch>``; returns the code size in bytes."""
    return int(compile_and_check(job, arch, warp_size)["cubin_bytes"])


def compile_and_check(job: CompileJob, arch: int = 90, warp_size: int = 32) -> dict[str, int]:
    """Compile ``job`` for ``sm_<arch>``: its cubin size, the shared memory it needs (bytes) and,
    where ptxas can be run, its registers per thread and spilled bytes (-1: unknown)."""
    compiled = compile_kernel(job, arch, warp_size)
    shared = getattr(compiled.metadata, "shared", 0) or 0
    stats = ptxas_stats(compiled.asm.get("ptx", ""), arch)
    return {"cubin_bytes": len(compiled.asm.get("cubin", b"")), "shared": int(shared), **stats}


def _jit_function(job: CompileJob) -> Any:
    """The job's kernel as a JITFunction: from its source text, or from the module it names."""
    import importlib
    import importlib.util
    import tempfile

    from triton.runtime.jit import JITFunction

    if job.module:
        fn = getattr(importlib.import_module(job.module), job.fn_name)
        return fn if isinstance(fn, JITFunction) else JITFunction(fn)
    directory = tempfile.mkdtemp(prefix="tw_aot_")
    path = os.path.join(directory, f"{job.fn_name}.py")
    with open(path, "w") as handle:
        handle.write(job.source)
    spec = importlib.util.spec_from_file_location(f"tw_aot_{abs(hash(job.source))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return JITFunction(getattr(module, job.fn_name))


def _divisibility_attr() -> list[Any]:
    """How this Triton spells "divisible by 16" in ASTSource attrs (read from its backend)."""
    from triton.backends.compiler import BaseBackend

    parse = getattr(BaseBackend, "parse_attr", None)
    return parse("D") if parse is not None else [["tt.divisibility", 16]]


def compile_kernel(job: CompileJob, arch: int = 90, warp_size: int = 32) -> Any:
    """Compile ``job`` for CUDA ``sm_<arch>`` without a GPU; Triton's CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .jit import restore_triton_language

    restore_triton_language()  # interpreted kernels run earlier in this process leave patches behind
    fn = _jit_function(job)
    if job.arg_names:
        types = dict(zip(job.arg_names, job.pointer_types))
        unknown = [a for a in fn.arg_names if a not in job.constexprs and a not in types]
        if unknown:
            raise TypeError(f"{job.fn_name} has arguments the job does not state: {unknown} (the kernel changed)")
        signature = {a: "constexpr" if a in job.constexprs else types[a] for a in fn.arg_names}
    else:
        pointers = iter(job.pointer_types)
        signature = {a: "constexpr" if a in job.constexprs else next(pointers) for a in fn.arg_names}
    constexprs = {(fn.arg_names.index(k),): v for k, v in job.constexprs.items()}
    attr = _divisibility_attr()
    attrs = {(fn.arg_names.index(a),): attr for a in job.aligned if a in fn.arg_names and a not in job.constexprs}
    return triton.compile(ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                          target=GPUTarget("cuda", arch, warp_size),
                          options={"num_warps": job.num_warps, "num_stages": job.num_stages})


def ptxas_path(arch: int) -> str | None:
    """The ptxas Triton itself uses for ``sm_<arch>`` (its API differs across versions), or None."""
    import inspect

    try:
        from triton.backends.nvidia import compiler as nv
    except ImportError:
        return None
    getter = getattr(nv, "get_ptxas", None)
    if getter is not None:
        try:
            tool = getter(arch) if inspect.signature(getter).parameters else getter()
            path = getattr(tool, "path", None) or (tool[0] if isinstance(tool, tuple) else tool)
            if path and os.path.isfile(str(path)):
                return str(path)
        except Exception:  # an older or newer API: fall back to the bundled binary
            pass
    bundled = os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")
    return bundled if os.path.isfile(bundled) else None


def ptxas_stats(ptx: str, arch: int = 90) -> dict[str, int]:
    """Registers per thread and spilled bytes (stores + loads) of ``ptx`` from ``ptxas -v``;
    -1 for each when no ptxas is available or its report cannot be read."""
    import re
    import tempfile

    unknown = {"registers": -1, "spill_bytes": -1}
    ptxas = ptxas_path(arch)
    if not ptx or ptxas is None:
        return unknown
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory(prefix="tw_ptxas_") as directory:
        src = os.path.join(directory, "k.ptx")
        with open(src, "w") as handle:
            handle.write(ptx)
        proc = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", src, "-o", os.path.join(directory, "k.cubin")],
                              capture_output=True, text=True, timeout=300)
    report = proc.stderr + proc.stdout
    regs = re.search(r"Used (\d+) registers", report)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", report)
    if proc.returncode != 0 or regs is None or not spills:
        return unknown
    return {"registers": int(regs.group(1)), "spill_bytes": sum(int(a) + int(b) for a, b in spills)}


def compile_in_subprocess(jobs: list[CompileJob], arch: int = 90, timeout_s: float = 900) -> list[dict[str, Any]]:
    """Compile ``jobs`` in a fresh process without the interpreter; one result dict per job."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "TILEWRIGHT_INTERPRET")}
    payload = json.dumps({"arch": arch, "jobs": [asdict(j) for j in jobs]})
    proc = subprocess.run([sys.executable, "-m", "tilewright.targets.triton.cross_compile"], input=payload, text=True,
                          capture_output=True, env=env, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"target compiler process failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def _main() -> None:
    request = json.loads(sys.stdin.read())
    results = []
    for raw in request["jobs"]:
        job = CompileJob(**raw)
        try:
            results.append({"name": job.name, "ok": True, **compile_and_check(job, request["arch"])})
        except Exception as exc:  # report every failure, keep compiling the rest
            results.append({"name": job.name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    _main()
