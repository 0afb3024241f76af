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
from dataclasses import asdict, dataclass
from typing import Any

import torch

_POINTER_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
                  torch.float64: "*fp64", torch.int64: "*i64", torch.int32: "*i32", torch.int16: "*i16",
                  torch.int8: "*i8", torch.uint8: "*u8", torch.bool: "*i1"}


@dataclass
class CompileJob:
    """One kernel source plus everything the compiler needs to specialise it."""

    name: str
    source: str
    fn_name: str
    pointer_types: list[str]
    constexprs: dict[str, int]
    num_warps: int
    num_stages: int


def job_for(kernel: Any, config: dict[str, Any] | None = None) -> CompileJob:
    """A :class:`CompileJob` for a :class:`~tilewright.targets.triton.kernel.GeneratedKernel` and config."""
    config = dict(config or kernel.config)
    spec = kernel.spec
    fn_name = spec.fn_name
    if spec.kind == "reduction":
        persistent = int(config["RBLOCK"]) >= int(spec.meta["rnumel"])
        fn_name = spec.meta["persistent_fn" if persistent else "looped_fn"]
    pointers = [_POINTER_TYPES[v.type.dtype] for v in spec.inputs + spec.outputs]
    consts = {k: int(v) for k, v in config.items() if k not in ("num_warps", "num_stages")}
    return CompileJob(kernel.name, spec.source, fn_name, pointers, consts, int(config.get("num_warps", 4)),
                      int(config.get("num_stages", 1)))


def jobs_for(kernel: Any, config: dict[str, Any] | None = None) -> list[CompileJob]:
    """Every :class:`CompileJob` a generated kernel launches (a scatter launches two)."""
    if getattr(kernel, "kind", None) == "scatter":
        config = dict(config or kernel.config)
        pointers = [_POINTER_TYPES[v.type.dtype] for v in kernel.inputs + kernel.outputs]
        return [CompileJob(kernel.name + suffix, kernel.source, kernel.name + suffix, pointers,
                           {"XBLOCK": int(config["XBLOCK"])}, int(config.get("num_warps", 4)), 1)
                for suffix in ("_copy", "_scatter")]
    return [job_for(kernel, config)]


def compile_for_target(job: CompileJob, arch: int = 90, warp_size: int = 32) -> int:
    """Compile ``job`` to machine code for CUDA ``sm_<arch>``; returns the code size in bytes."""
    return int(compile_and_check(job, arch, warp_size)["cubin_bytes"])


def compile_and_check(job: CompileJob, arch: int = 90, warp_size: int = 32) -> dict[str, int]:
    """Compile ``job`` for ``sm_<arch>``; its cubin size and the shared memory it needs (bytes)."""
    import importlib.util
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from .jit import restore_triton_language

    restore_triton_language()  # interpreted kernels run earlier in this process leave patches behind

    directory = tempfile.mkdtemp(prefix="tw_aot_")
    path = os.path.join(directory, f"{job.fn_name}.py")
    with open(path, "w") as handle:
        handle.write(job.source)
    spec = importlib.util.spec_from_file_location(f"tw_aot_{abs(hash(job.source))}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    fn = JITFunction(getattr(module, job.fn_name))
    pointers = iter(job.pointer_types)
    signature = {a: "constexpr" if a in job.constexprs else next(pointers) for a in fn.arg_names}
    constexprs = {(fn.arg_names.index(k),): v for k, v in job.constexprs.items()}
    compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs),
                              target=GPUTarget("cuda", arch, warp_size),
                              options={"num_warps": job.num_warps, "num_stages": job.num_stages})
    shared = getattr(compiled.metadata, "shared", 0) or 0
    return {"cubin_bytes": len(compiled.asm.get("cubin", b"")), "shared": int(shared)}


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
            size = compile_for_target(job, request["arch"])
            results.append({"name": job.name, "ok": True, "cubin_bytes": size})
        except Exception as exc:  # report every failure, keep compiling the rest
            results.append({"name": job.name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]})
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    _main()
