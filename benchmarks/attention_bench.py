"""GPU benchmark of tilewright's fused attention against SDPA (flash backend) and FlexAttention.

Prefill: forward and forward+backward for sequence lengths 1k-16k, head dims 64/128, causal
and not, float16/bfloat16 (total hidden size fixed at 2048, 16k tokens per batch). Decode: a
1-token query over 4k-128k keys (grouped-query, 32 query / 8 kv heads, head dim 128) with the
split-K decode kernel against SDPA. Every baseline runs in the same process on the same inputs,
so the reported ratios come from one run. Results (TFLOP/s, ms, ratios, max error vs SDPA and the
config used) are written as JSON to ``--out``.

Usage::

    python benchmarks/attention_bench.py --out results/attention            # full suite
    python benchmarks/attention_bench.py --out /tmp/att --quick             # a few points

It refuses to run without CUDA: interpreter timings say nothing about GPU performance.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("attention_bench")
#: Device the benchmark runs on (tests point it at the CPU interpreter for a smoke run).
DEVICE = "cuda"

#: Forward configs tried per prefill shape (the best feasible one is reported).
FWD_CANDIDATES = [
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2},
]
#: Backward configs tried per prefill shape.
BWD_CANDIDATES = [
    {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4, "num_stages": 1},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 8, "num_stages": 1},
    {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 8, "num_stages": 1},
    {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
]
#: Split counts tried for decode (plus the heuristic default).
DECODE_SPLITS = [8, 16, 32, 64, 128]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path, help="directory for attention_bench.json")
    p.add_argument("--seqs", default="1024,2048,4096,8192,16384")
    p.add_argument("--head-dims", default="64,128")
    p.add_argument("--dtypes", default="float16,bfloat16")
    p.add_argument("--tokens", type=int, default=16384, help="batch * seq for prefill")
    p.add_argument("--hidden", type=int, default=2048, help="heads * head_dim for prefill")
    p.add_argument("--decode-keys", default="4096,8192,16384,32768,65536,131072")
    p.add_argument("--decode-batch", type=int, default=4)
    p.add_argument("--decode-heads", default="32,8", help="query heads,kv heads for decode")
    p.add_argument("--decode-head-dim", type=int, default=128)
    p.add_argument("--warmup", type=int, default=10, help="ms of warm-up per timing")
    p.add_argument("--rep", type=int, default=50, help="ms of repetitions per timing")
    p.add_argument("--quick", action="store_true", help="a few points only (smoke run)")
    p.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    p.add_argument("--no-bwd", action="store_true", help="forward only")
    p.add_argument("--compile-only", metavar="SM", type=int, default=None,
                   help="only compile every attention kernel for CUDA arch SM (e.g. 90) and exit; no GPU needed")
    return p.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _bench(fn: Callable[[], Any], warmup: int, rep: int) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep))


def _try(fn: Callable[[], float]) -> tuple[float | None, str | None]:
    """Run a timing; a failure is recorded as data, not raised."""
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001
        return None, f"{type(exc).__name__}: {str(exc)[:300]}"


def _tflops(flops: float, ms: float | None) -> float | None:
    return None if not ms else flops / (ms * 1e-3) / 1e12


def _ratios(tflops: dict[str, float | None]) -> dict[str, float | None]:
    ours = tflops.get("tilewright")
    return {f"vs_{name}": (ours / v if ours and v else None) for name, v in tflops.items() if name != "tilewright"}


def _best_config(run: Callable[[dict[str, Any]], Callable[[], Any]], candidates: list[dict[str, Any]],
                 space: Any, warmup: int, rep: int) -> tuple[dict[str, Any] | None, float | None, list[str]]:
    best, best_ms, errors = None, None, []
    for cfg in candidates:
        if not space.is_feasible(cfg):
            continue
        ms, err = _try(lambda: _bench(run(cfg), warmup, rep))
        if err:
            errors.append(f"{cfg}: {err}")
        elif best_ms is None or ms < best_ms:  # type: ignore[operator]
            best, best_ms = cfg, ms
    return best, best_ms, errors


def bench_prefill(args: argparse.Namespace, device_smem: int) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from tilewright.targets.triton.attention import launch as A

    flex = block_mask_fn = None
    if not args.no_flex:
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            # NOTE: one compiled FlexAttention per shape; without a larger cache Dynamo falls back
            # to the eager (materialising) FlexAttention after 8 shapes and the numbers are wrong.
            torch._dynamo.config.cache_size_limit = 1024
            if hasattr(torch._dynamo.config, "accumulated_cache_size_limit"):
                torch._dynamo.config.accumulated_cache_size_limit = 4096
            flex = torch.compile(flex_attention, dynamic=False)
            block_mask_fn = create_block_mask
        except Exception as exc:  # noqa: BLE001
            log.warning("FlexAttention unavailable: %s", exc)

    records = []
    seqs, dims, dtypes = _ints(args.seqs), _ints(args.head_dims), args.dtypes.split(",")
    if args.quick:
        seqs, dims, dtypes = seqs[:2], dims[:1], dtypes[:1]
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for d in dims:
            heads = max(1, args.hidden // d)
            for s in seqs:
                batch = max(1, args.tokens // s)
                for causal in (False, True):
                    torch.manual_seed(0)
                    q, k, v = (torch.randn(batch, heads, s, d, device=DEVICE, dtype=dtype, requires_grad=True)
                               for _ in range(3))
                    dout = torch.randn_like(q)
                    scale = d ** -0.5
                    fwd_flops = 4.0 * batch * heads * s * s * d * (0.5 if causal else 1.0)
                    rec: dict[str, Any] = {"kind": "prefill", "dtype": dtype_name, "head_dim": d, "seq": s,
                                           "batch": batch, "heads": heads, "causal": causal, "errors": []}

                    def ours_fwd(cfg: dict[str, Any]) -> Callable[[], Any]:
                        return lambda: A.flash_attention_forward(q, k, v, scale=scale, causal=causal, config=cfg,
                                                                 decode=False)

                    fspace = A.forward_space(d, dtype_name, device_smem)
                    fcfg, f_ms, errs = _best_config(ours_fwd, FWD_CANDIDATES + [fspace.default_config()], fspace,
                                                    args.warmup, args.rep)
                    rec["errors"] += errs
                    rec["fwd_config"] = fcfg

                    def sdpa_fwd() -> Any:
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

                    bm = None
                    flex_ok = flex is not None
                    if flex_ok and causal:
                        try:
                            bm = block_mask_fn(lambda b, h, qi, ki: ki <= qi, None, None, s, s, device=DEVICE)
                        except Exception as exc:  # noqa: BLE001
                            rec["errors"].append(f"flex block mask: {exc}")
                            flex_ok = False

                    def flex_fwd() -> Any:
                        return flex(q, k, v, block_mask=bm, scale=scale)

                    ms = {"tilewright": f_ms}
                    with torch.no_grad():
                        ms["sdpa_flash"], e = _try(lambda: _bench(sdpa_fwd, args.warmup, args.rep))
                        rec["errors"] += [f"sdpa_flash fwd: {e}"] if e else []
                        if flex_ok:
                            ms["flex"], e = _try(lambda: _bench(flex_fwd, args.warmup, args.rep))
                            rec["errors"] += [f"flex fwd: {e}"] if e else []
                        if fcfg is not None:
                            out, _ = A.flash_attention_forward(q, k, v, scale=scale, causal=causal, config=fcfg,
                                                               decode=False)
                            ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
                            rec["max_abs_err_vs_sdpa"] = float((out.float() - ref.float()).abs().max())
                    tf = {n: _tflops(fwd_flops, t) for n, t in ms.items()}
                    records.append({**rec, "mode": "fwd", "ms": ms, "tflops": tf, "ratio": _ratios(tf)})

                    if args.no_bwd:
                        continue
                    bspace = A.backward_space(d, dtype_name, device_smem)
                    out_l = A.flash_attention_forward(q.detach(), k.detach(), v.detach(), scale=scale, causal=causal,
                                                      config=fcfg, decode=False) if fcfg else None

                    def ours_fb(cfg: dict[str, Any]) -> Callable[[], Any]:
                        def step() -> Any:
                            out, lse = A.flash_attention_forward(q, k, v, scale=scale, causal=causal, config=fcfg,
                                                                 decode=False)
                            return A.flash_attention_backward(dout, q, k, v, out, lse, scale=scale, causal=causal,
                                                              config=cfg)
                        return step

                    bcfg, b_ms, errs = (None, None, ["forward failed"]) if out_l is None else _best_config(
                        ours_fb, BWD_CANDIDATES + [bspace.default_config()], bspace, args.warmup, args.rep)
                    rec = {**rec, "errors": list(rec["errors"]) + errs, "bwd_config": bcfg}

                    def sdpa_fb() -> Any:
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
                        return torch.autograd.grad(o, (q, k, v), dout)

                    def flex_fb() -> Any:
                        o = flex(q, k, v, block_mask=bm, scale=scale)
                        return torch.autograd.grad(o, (q, k, v), dout)

                    ms = {"tilewright": b_ms}
                    ms["sdpa_flash"], e = _try(lambda: _bench(sdpa_fb, args.warmup, args.rep))
                    rec["errors"] += [f"sdpa_flash fwd+bwd: {e}"] if e else []
                    if flex_ok:
                        ms["flex"], e = _try(lambda: _bench(flex_fb, args.warmup, args.rep))
                        rec["errors"] += [f"flex fwd+bwd: {e}"] if e else []
                    tf = {n: _tflops(3.5 * fwd_flops, t) for n, t in ms.items()}
                    records.append({**rec, "mode": "fwd+bwd", "ms": ms, "tflops": tf, "ratio": _ratios(tf)})
                    log.info("prefill %s d=%d s=%d causal=%s done", dtype_name, d, s, causal)
                    # NOTE: rebinding, not ``del``: the closures above read q/k/v/dout through cells (a
                    # ``del`` of a closed-over name reads to linters as undefined); all of them ran already
                    q = k = v = dout = None  # type: ignore[assignment]
                    torch.cuda.empty_cache()
    return records


def bench_decode(args: argparse.Namespace, device_smem: int) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from tilewright.targets.triton.attention import launch as A

    records = []
    keys = _ints(args.decode_keys)
    if args.quick:
        keys = keys[:2]
    heads, kv_heads = _ints(args.decode_heads)
    batch, d = args.decode_batch, args.decode_head_dim
    for dtype_name in args.dtypes.split(",")[: 1 if args.quick else None]:
        dtype = getattr(torch, dtype_name)
        for n in keys:
            torch.manual_seed(0)
            q = torch.randn(batch, heads, 1, d, device=DEVICE, dtype=dtype)
            k = torch.randn(batch, kv_heads, n, d, device=DEVICE, dtype=dtype)
            v = torch.randn_like(k)
            flops = 4.0 * batch * heads * n * d
            kv_bytes = 2.0 * batch * kv_heads * n * d * q.element_size()
            space = A.decode_space(d, dtype_name, device_smem)
            base = space.default_config()
            base["NUM_SPLITS"] = A.default_num_splits(batch * kv_heads, n, int(base["BLOCK_N"]), q.device)
            cands = [base] + [{**base, "NUM_SPLITS": sp} for sp in DECODE_SPLITS if sp != base["NUM_SPLITS"]]
            cands += [{**c, "BLOCK_N": 128} for c in cands[:3]]

            def ours(cfg: dict[str, Any]) -> Callable[[], Any]:
                return lambda: A.flash_attention_forward(q, k, v, config=cfg, decode=True)

            cfg, ours_ms, errs = _best_config(ours, cands, space, args.warmup, args.rep)
            ms: dict[str, float | None] = {"tilewright": ours_ms}
            ms["sdpa"], e = _try(lambda: _bench(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                                                args.warmup, args.rep))
            errs += [f"sdpa: {e}"] if e else []
            rec: dict[str, Any] = {"kind": "decode", "mode": "fwd", "dtype": dtype_name, "keys": n, "batch": batch,
                                   "heads": heads, "kv_heads": kv_heads, "head_dim": d, "config": cfg, "errors": errs}
            if cfg is not None:
                out, _ = A.flash_attention_forward(q, k, v, config=cfg, decode=True)
                ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                rec["max_abs_err_vs_sdpa"] = float((out.float() - ref.float()).abs().max())
            tf = {name: _tflops(flops, t) for name, t in ms.items()}
            rec.update(ms=ms, tflops=tf, ratio=_ratios(tf),
                       gbps={name: (kv_bytes / (t * 1e-3) / 1e9 if t else None) for name, t in ms.items()})
            records.append(rec)
            log.info("decode %s n=%d done", dtype_name, n)
            q = k = v = None  # type: ignore[assignment]  # (not ``del``: closures read them, see above)
            torch.cuda.empty_cache()
    return records


def compile_check(arch: int) -> dict[str, Any]:
    """Compile every attention kernel (all feature flags on, fp16 and fp32) for ``sm_<arch>``.

    Needs no GPU (Triton's bundled ptxas), so it catches compile errors the interpreter cannot.
    Returns kernel -> shared bytes, or the error text.
    """
    import os

    if os.environ.get("TRITON_INTERPRET") not in (None, "", "0"):
        raise RuntimeError("unset TRITON_INTERPRET: the compile check needs compiled kernels")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from tilewright.targets.triton.attention import kernels as K

    pointers = {"Q", "K", "V", "BIAS", "MASK", "SEED", "OUT", "LSE", "DO", "DELTA", "DK", "DV", "DQ", "DS",
                "OPART", "LPART"}
    floats = {"scale", "dropout_p"}
    flags = dict(HAS_BIAS=True, HAS_MASK=True, IS_CAUSAL=True, HAS_DROPOUT=True, UPCAST=False, STORE_DS=True)
    kernels = {"fwd": K.attn_fwd_kernel, "bwd_preprocess": K.attn_bwd_preprocess_kernel,
               "bwd_dkdv": K.attn_bwd_dkdv_kernel, "bwd_dq": K.attn_bwd_dq_kernel,
               "decode_split": K.attn_decode_split_kernel, "decode_combine": K.attn_decode_combine_kernel}
    results: dict[str, Any] = {}
    for dt in ("fp16", "fp32"):
        for name, fn in kernels.items():
            consts = {k: v for k, v in flags.items() if k in fn.arg_names}
            consts.update({k: v for k, v in dict(BLOCK_M=64, BLOCK_N=64, BLOCK_D=64, BLOCK_S=16).items()
                           if k in fn.arg_names})
            if "DOT_PREC" in fn.arg_names:
                consts["DOT_PREC"] = "ieee" if dt == "fp32" else None
            sig: dict[str, str] = {}
            for arg in fn.arg_names:
                if arg in consts:
                    sig[arg] = "constexpr"
                elif arg in pointers:
                    sig[arg] = {"MASK": "*u8", "SEED": "*i64"}.get(arg, f"*{dt}" if arg in
                                                                     {"Q", "K", "V", "BIAS", "OUT", "DO", "DK", "DV",
                                                                      "DQ"} else "*fp32")
                else:
                    sig[arg] = "fp32" if arg in floats else "i32"
            src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
            try:
                compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                          options={"num_warps": 4, "num_stages": 2})
                results[f"{name}/{dt}"] = {"shared_bytes": int(compiled.metadata.shared)}
            except Exception as exc:  # noqa: BLE001
                results[f"{name}/{dt}"] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    import torch

    if args.compile_only is not None:
        result = compile_check(args.compile_only)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "attention_compile_check.json").write_text(json.dumps(result, indent=1))
        for name, res in result.items():
            print(f"{name:24s} {res}")
        return 1 if any("error" in r for r in result.values()) else 0

    if not torch.cuda.is_available():
        sys.stderr.write("attention_bench: no CUDA GPU found. This benchmark measures GPU kernels only; "
                         "Triton-interpreter timings on CPU would be meaningless, so nothing was run.\n")
        return 2
    import triton

    from tilewright.schedule.device import device_info

    info = device_info("cuda")
    smem = int(info.get("shared_memory_per_block") or 99 * 1024)
    started = time.time()
    prefill = bench_prefill(args, smem)
    decode = bench_decode(args, smem)
    result = {
        "benchmark": "attention",
        "device": info,
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "flop_convention": "fwd 4*B*H*M*N*D (halved when causal); fwd+bwd 3.5x fwd; decode 4*B*H*N*D",
        "seconds": round(time.time() - started, 1),
        "prefill": prefill,
        "decode": decode,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "attention_bench.json"
    path.write_text(json.dumps(result, indent=1, default=str))
    for rec in prefill + decode:
        ratio = ", ".join(f"{k}={v:.2f}" for k, v in rec["ratio"].items() if v is not None)
        ours = rec["tflops"].get("tilewright")
        label = f"{rec['kind']:7s} {rec['mode']:7s} {rec['dtype']:8s} d={rec['head_dim']:3d} " + (
            f"s={rec['seq']:6d} causal={int(rec['causal'])}" if rec["kind"] == "prefill" else f"keys={rec['keys']:6d}")
        print(f"{label}  ours={ours if ours is None else round(ours, 1)} TFLOP/s  {ratio}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
