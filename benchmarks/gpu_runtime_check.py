"""GPU-only checks of the runtime work in docs/gpu_runtime.md (needs a CUDA device).

Run: ``python benchmarks/gpu_runtime_check.py`` (prints one JSON object; exit code 1 if a check
failed). What it checks, each against a baseline taken in the same process:

* ``cudagraphs``: ``mode="reduce-overhead"`` on a small MLP matches eager, explain says
  "CUDA graphs: on", and the per-call time is compared with the default mode (host overhead).
* ``compile_pool``: a graph's first compile runs its kernels' compiles in worker processes
  (one pool), and the first call then finds them in Triton's cache; a compiled bf16 SDPA
  forward and backward hands its two attention templates to the pool (launched there once,
  no error) and matches float32 SDPA.
* ``attention_bf16``: the compiled bf16 flash-attention kernels (UPCAST=False: bf16 tl.dot)
  against SDPA, causal and not, sizes that divide the blocks and sizes that do not.
* ``attention_fp32``: float32 (IEEE dots) forward and backward with the sm_90 defaults at head
  dims 64 and 128 against a float64 reference; D=128 dK/dV is the one launch known to spill
  (tests/core/test_gpu_compile.py), so its time is recorded next to SDPA's.
* ``gemm``: the generated GEMM at each float32 precision candidate (ieee, tf32x3, extern cuBLAS
  under torch's default flags; tf32 under ``allow_tf32``) and in bf16, against ``torch.mm``
  (cuBLAS) under the same flags: relative error vs float64 and median time (do_bench).

``--checks`` picks a subset (comma-separated names); ``--out FILE`` also writes the JSON there.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F


def _time(fn: Any, *args: Any, reps: int = 50) -> float:
    for _ in range(5):
        fn(*args)
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(*args)
        torch.cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def check_cudagraphs() -> dict[str, Any]:
    """reduce-overhead vs default mode on a launch-bound MLP."""
    from tilewright.report import collect

    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU())
                                  for _ in range(8)]).cuda()
    x = torch.randn(8, 256, device="cuda")
    torch._dynamo.reset()
    plain = torch.compile(model, backend="tilewright")
    graphs = torch.compile(model, backend="tilewright", mode="reduce-overhead", dynamic=False)
    with torch.no_grad(), collect() as report:
        want = model(x)
        got = [graphs(torch.randn_like(x)) for _ in range(3)] + [graphs(x)]
        t_plain, t_graph, t_eager = _time(plain, x), _time(graphs, x), _time(model, x)
    notes = [n for g in report.graphs for n in g.notes if n.startswith("CUDA graphs:")]
    err = (got[-1] - want).abs().max().item()
    return {"ok": err < 1e-3 and any("on:" in n for n in notes), "max_err": err, "notes": notes,
            "us_per_call": {"eager": t_eager * 1e6, "tilewright": t_plain * 1e6,
                            "tilewright_reduce_overhead": t_graph * 1e6}}


def check_compile_pool() -> dict[str, Any]:
    """One pool per graph compile; the first call loads cached binaries."""
    from tilewright.autotune.compile_pool import CompilePool

    torch._dynamo.reset()
    pools, procs = CompilePool.pools_started, CompilePool.processes_started

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.softmax(a @ b, -1).sum(0) + torch.tanh(a).mean(1).sum()

    a, b = torch.randn(333, 130, device="cuda"), torch.randn(130, 77, device="cuda")
    compiled = torch.compile(fn, backend="tilewright")
    t0 = time.perf_counter()
    out = compiled(a, b)
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    err = (out - fn(a, b)).abs().max().item()
    pools, procs = CompilePool.pools_started - pools, CompilePool.processes_started - procs
    attention = _attention_precompile(CompilePool)
    return {"ok": err < 1e-3 and pools <= 1 and attention["ok"], "max_err": err, "pools": pools,
            "worker_processes": procs, "first_call_s": first, "attention": attention}


def _attention_precompile(pool_class: Any) -> dict[str, Any]:
    """A bf16 SDPA forward and backward: the pool launches the attention templates' kernels once
    (warming Triton's cache) before the graphs' first calls; those calls' times and errors."""
    seen: dict[str, str | None] = {}
    run = pool_class.run

    def recording_run(self: Any, work: Any) -> dict[str, str]:
        errors = run(self, work)
        seen.update({key: errors.get(key) for key in work if key.startswith("template ")})
        return errors

    torch._dynamo.reset()
    pool_class.run = recording_run
    try:
        q, k, v = (torch.randn(2, 8, 509, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        t0 = time.perf_counter()
        out = torch.compile(fn, backend="tilewright")(q, k, v)
        out.backward(torch.ones_like(out))
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
    finally:
        pool_class.run = run
    want = fn(*(t.detach().float() for t in (q, k, v)))
    err = (out.float() - want).abs().max().item()
    return {"ok": err < 3e-2 and len(seen) == 2 and not any(seen.values()), "templates": seen,
            "max_err": err, "first_fwd_bwd_s": first}


def check_attention_bf16() -> dict[str, Any]:
    """Compiled bf16 kernels (no upcast) against SDPA."""
    from tilewright.targets.triton.attention.launch import flash_attention_backward, flash_attention_forward

    results = {}
    ok = True
    for m, n, causal in ((512, 512, True), (509, 509, True), (300, 517, False), (1024, 1024, True)):
        q, k, v = (torch.randn(2, 8, s, 64, device="cuda", dtype=torch.bfloat16) for s in (m, n, n))
        out, lse = flash_attention_forward(q, k, v, causal=causal, decode=False)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal)
        err = (out.float() - ref).abs().max().item()
        dout = torch.randn_like(out)
        dq, dk, dv, _ = flash_attention_backward(dout, q, k, v, out, lse, causal=causal)
        qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
        F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal).backward(dout.float())
        gerr = max((g.float() - w.grad).abs().max().item() for g, w in ((dq, qf), (dk, kf), (dv, vf)))
        t_tw = _time(lambda: flash_attention_forward(q, k, v, causal=causal, decode=False), reps=20)
        t_sdpa = _time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal), reps=20)
        good = err < 3e-2 and gerr < 1e-1
        ok = ok and good
        results[f"{m}x{n}{'-causal' if causal else ''}"] = {"ok": good, "fwd_err": err, "grad_err": gerr,
                                                           "fwd_us": t_tw * 1e6, "sdpa_us": t_sdpa * 1e6}
    return {"ok": ok, **results}


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm().clamp_min(1e-30))


def check_attention_fp32() -> dict[str, Any]:
    """float32 (IEEE dots) with the default configs against float64, at head dims 64 and 128."""
    from tilewright.targets.triton.attention.launch import flash_attention_backward, flash_attention_forward

    results: dict[str, Any] = {}
    ok = True
    for d in (64, 128):
        q, k, v = (torch.randn(2, 8, s, d, device="cuda") for s in (509, 517, 517))
        out, lse = flash_attention_forward(q, k, v, causal=True, decode=False)
        qd, kd, vd = (t.double().requires_grad_() for t in (q, k, v))
        ref = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
        dout = torch.randn_like(out)
        dq, dk, dv, _ = flash_attention_backward(dout, q, k, v, out, lse, causal=True)
        ref.backward(dout.double())
        errs = [_rel_err(out, ref.detach())] + [_rel_err(g, w.grad) for g, w in ((dq, qd), (dk, kd), (dv, vd))]
        t_fwd = _time(lambda: flash_attention_forward(q, k, v, causal=True, decode=False), reps=10)
        t_bwd = _time(lambda: flash_attention_backward(dout, q, k, v, out, lse, causal=True), reps=10)
        t_sdpa = _time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), reps=10)
        good = max(errs) < 1e-4
        ok = ok and good
        results[f"d{d}"] = {"ok": good, "rel_err_out_dq_dk_dv": errs, "fwd_us": t_fwd * 1e6, "bwd_us": t_bwd * 1e6,
                            "sdpa_fwd_us": t_sdpa * 1e6}
    return {"ok": ok, **results}


def _gemm_rows(dtype: torch.dtype, size: int, device: str = "cuda", bench: Any = None) -> list[dict[str, Any]]:
    """The generated GEMM under each candidate the current flags allow, and cuBLAS, on one shape
    (``bench(fn) -> ms``: ``triton.testing.do_bench``'s median by default)."""
    from tilewright.frontend.api import tunable_kernels

    if bench is None:
        from triton.testing import do_bench

        def bench(fn: Any) -> float:
            return float(do_bench(fn, return_mode="median"))
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    kernel = next(k for k in tunable_kernels(lambda x, y: x @ y, (a, b)) if k.kind == "matmul")
    tensors = kernel.make_inputs(device)
    want = tensors[0].double() @ tensors[1].double()
    rows = [{"system": "cublas", "rel_err": _rel_err(torch.mm(tensors[0], tensors[1]), want),
             "ms": bench(lambda: torch.mm(tensors[0], tensors[1]))}]
    precisions = list(kernel.space.params.get("PRECISION", [None]))
    candidates = [{"PRECISION": p, "extern": False} for p in precisions] + [{"extern": True}]
    for change in candidates:
        cfg = {**kernel.config, **{k: v for k, v in change.items() if v is not None}}
        if not kernel.space.is_feasible(cfg):
            continue
        run = kernel.runner(cfg)
        tensors[-1].fill_(float("nan"))
        run(tensors)
        name = "extern" if cfg.get("extern") else f"tilewright[{cfg.get('PRECISION', str(dtype)[6:])}]"
        rows.append({"system": name, "config": cfg, "rel_err": _rel_err(tensors[-1], want),
                     "ms": bench(lambda: run(tensors))})
    for row in rows:
        row["tflops"] = 2.0 * size ** 3 / (row["ms"] * 1e-3) / 1e12
    return rows


def check_gemm(size: int = 4096) -> dict[str, Any]:
    """The generated GEMM's precision candidates and bf16 against cuBLAS under the same torch flags."""
    saved = torch.backends.cuda.matmul.allow_tf32
    out: dict[str, Any] = {}
    try:
        for name, dtype, tf32 in (("fp32_highest", torch.float32, False), ("fp32_allow_tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch._dynamo.reset()
            out[name] = _gemm_rows(dtype, size)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    # float32-level error under the default flags (ieee and tf32x3 alike); tf32/bf16 within their formats
    bounds = {"fp32_highest": 1e-5, "fp32_allow_tf32": 5e-3, "bf16": 2e-2}
    ok = all(r["rel_err"] < bounds[name] for name, rows in out.items() for r in rows)
    return {"ok": ok, "size": size, **out}


CHECKS = {"cudagraphs": check_cudagraphs, "compile_pool": check_compile_pool, "attention_bf16": check_attention_bf16,
          "attention_fp32": check_attention_fp32, "gemm": check_gemm}


def main(argv: list[str] | None = None) -> None:
    """Run the checks; print JSON; exit 1 when one failed (or there is no CUDA device)."""
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", default=",".join(CHECKS), help="comma-separated, of: " + ", ".join(CHECKS))
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    names = [n for n in args.checks.split(",") if n]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        parser.error(f"unknown checks {unknown}; known: {sorted(CHECKS)}")
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        sys.exit(1)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name()}
    for name in names:
        check = CHECKS[name]
        try:
            out[name] = check()
        except Exception as exc:  # noqa: BLE001 - report every check
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    sys.exit(0 if all(v.get("ok") for k, v in out.items() if isinstance(v, dict)) else 1)


if __name__ == "__main__":
    main()
