"""Compile the convolution kernel templates for sm_90 in a process of their own.

Run by tests/conv/test_conv_compile.py in a fresh interpreter without ``TRITON_INTERPRET``, so
nothing an earlier test did in the test process (interpreted kernels, Triton's interpreter
patches on ``triton.language``) can change the outcome. Prints one JSON object: case -> "ok",
"skip: ..." (no CUDA toolchain bundled with Triton) or the error.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from tilewright.targets.triton.conv.backward import KERNEL_DGRAD, KERNEL_WGRAD, dgrad_source, wgrad_source
from tilewright.targets.triton.conv.epilogues import EpilogueBuilder
from tilewright.targets.triton.conv.templates import (KERNEL_DIRECT, KERNEL_IGEMM, default_epilogue, direct_source,
                                               igemm_source)

EPI, _ = (EpilogueBuilder().bias().activation("gelu").scale_channels("gamma", torch.ones(3))
          .add("res", torch.ones(1, 3, 1, 1)).scale("alpha", 1.0).build())
IGEMM_TILE = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}
GRAD_TILE = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}


def cases() -> dict[str, Callable[[], tuple[str, str, dict[str, int], str]]]:
    """Case id -> a function giving (source, kernel name, constexprs, pointer type)."""
    out: dict[str, Callable[[], tuple[str, str, dict[str, int], str]]] = {}
    for k_order in ("tap", "flat"):
        for ptr in ("*fp16", "*bf16", "*fp32"):
            def igemm(k_order: str = k_order, ptr: str = ptr) -> tuple[str, str, dict[str, int], str]:
                epi = EPI if ptr != "*fp32" else default_epilogue(True)
                return igemm_source(epi, k_order), KERNEL_IGEMM, IGEMM_TILE, ptr
            out[f"igemm-{k_order}-{ptr[1:]}"] = igemm
    out["direct-fp16"] = lambda: (direct_source(EPI), KERNEL_DIRECT, {"BLOCK_M": 64, "BLOCK_N": 32}, "*fp16")
    out["wgrad-bf16"] = lambda: (wgrad_source(), KERNEL_WGRAD, GRAD_TILE, "*bf16")
    out["dgrad-fp16"] = lambda: (dgrad_source(), KERNEL_DGRAD, GRAD_TILE, "*fp16")
    return out


def compile_case(workdir: Path, source: str, name: str, consts: dict[str, int], ptr: str) -> str:
    """Compile one kernel for sm_90; "ok", "skip: ..." or the error text."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    path = workdir / f"{name}_{abs(hash(source))}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    fn = JITFunction(getattr(module, name))
    sig: dict[str, Any] = {a: "constexpr" if a in consts else ptr if a.endswith("_ptr") else
                           "fp32" if a.startswith("ep_alpha") else "i32" for a in fn.arg_names}
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    try:
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 3})
    except (RuntimeError, ImportError, FileNotFoundError) as exc:
        if "ptxas" in str(exc) or "backend" in str(exc).lower():
            return f"skip: no CUDA compile toolchain: {exc}"
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def main() -> None:
    """Compile every case and print the results as JSON."""
    workdir = Path(tempfile.mkdtemp(prefix="tw-sm90-"))
    results = {case: compile_case(workdir, *make()) for case, make in cases().items()}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
