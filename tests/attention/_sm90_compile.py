"""Compile the flash-attention kernels for sm_90 with bf16 inputs and UPCAST=False.

Run by tests/attention/test_kernels.py in a fresh interpreter without ``TRITON_INTERPRET``
(the kernels must be real ``JITFunction`` s). Prints one JSON object: case -> {"cubin_bytes",
"shared"} or {"error"}.
"""
from __future__ import annotations

import json
from typing import Any

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tilewright.targets.triton.attention import kernels as K

_FP32 = {"LSE", "DELTA", "DS", "OPART", "LPART"}
_FLOATS = {"scale", "dropout_p"}
_INTS = {"H", "HKV", "M", "N", "D", "GROUP", "NUM_SPLITS"}


_UNIT_STRIDES = {"sqd", "skd", "svd", "sod", "sdd", "sdkd", "sdvd", "sdqd", "smn"}


def _divisible() -> list[Any]:
    """How this Triton spells "divisible by 16" in ASTSource attrs."""
    from triton.backends.compiler import BaseBackend

    parse = getattr(BaseBackend, "parse_attr", None)
    return parse("D") if parse is not None else [["tt.divisibility", 16]]


def _signature(fn: Any, consts: dict[str, Any]) -> dict[str, str]:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name == "MASK":
            sig[name] = "*u8"
        elif name == "SEED":
            sig[name] = "*i64"
        elif name in _FP32:
            sig[name] = "*fp32"
        elif name.isupper() and name not in _INTS:
            sig[name] = "*bf16"
        elif name in _FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_case(fn: Any, consts: dict[str, Any], stages: int) -> dict[str, Any]:
    """Compile one kernel for sm_90: its cubin size and shared memory, or the error."""
    # as a launch on contiguous tensors specialises them: unit head-dim strides are constants,
    # pointers and the other strides are divisible by 16 (what lets loads vectorise and pipeline)
    consts = {**{a: 1 for a in fn.arg_names if a in _UNIT_STRIDES}, **consts}
    sig = _signature(fn, consts)
    attrs = {(fn.arg_names.index(a),): _divisible() for a, t in sig.items()
             if t.startswith("*") or (t == "i32" and a[:1] == "s")}
    src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()}, attrs=attrs)
    try:
        out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": stages})
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    ttgir = out.asm.get("ttgir", "")
    return {"cubin_bytes": len(out.asm.get("cubin", b"")), "shared": int(getattr(out.metadata, "shared", 0)),
            "async_loads": ttgir.count("async_copy_global_to_local") + ttgir.count("async_tma_copy")}


def main() -> None:
    """Compile the cases and print the results as JSON."""
    base = {"HAS_BIAS": False, "HAS_MASK": False, "IS_CAUSAL": True, "HAS_DROPOUT": False, "UPCAST": False,
            "DOT_PREC": None, "BLOCK_D": 64, "EVEN_D": True}
    fwd = {**base, "BLOCK_M": 128, "BLOCK_N": 64}
    bwd = {**base, "BLOCK_M": 32, "BLOCK_N": 128}
    dq = {**base, "BLOCK_M": 128, "BLOCK_N": 32, "STORE_DS": False}
    cases = {
        "fwd-causal": (K.attn_fwd_kernel, fwd, 3),
        "fwd-mask-bias": (K.attn_fwd_kernel, {**fwd, "IS_CAUSAL": False, "HAS_MASK": True, "HAS_BIAS": True,
                                              "HAS_DROPOUT": True, "EVEN_D": False, "BLOCK_D": 128}, 2),
        "dkdv-causal": (K.attn_bwd_dkdv_kernel, bwd, 3),
        "dq-causal": (K.attn_bwd_dq_kernel, dq, 3),
        "dq-bias-grad": (K.attn_bwd_dq_kernel, {**dq, "HAS_BIAS": True, "STORE_DS": True, "IS_CAUSAL": False}, 2),
    }
    print(json.dumps({name: compile_case(fn, consts, stages) for name, (fn, consts, stages) in cases.items()}))


if __name__ == "__main__":
    main()
