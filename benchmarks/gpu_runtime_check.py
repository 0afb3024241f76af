"""GPU-only checks of the runtime work in docs/gpu_runtime.md (needs a CUDA device).

Run: ``python benchmarks/gpu_runtime_check.py`` (prints one JSON object; exit code 1 if a check
failed). What it checks, each against a baseline taken in the same process:

* ``cudagraphs``: ``mode="reduce-overhead"`` on a small MLP matches eager, explain says
  "CUDA graphs: on", and the per-call time is compared with the default mode (host overhead).
* ``compile_pool``: a graph's first compile runs its kernels' compiles in worker processes
  (one pool), and the first call then finds them in Triton's cache.
* ``attention_bf16``: the compiled bf16 flash-attention kernels (UPCAST=False: bf16 tl.dot)
  against SDPA, causal and not, sizes that divide the blocks and sizes that do not.
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
    return {"ok": err < 1e-3 and CompilePool.pools_started - pools <= 1, "max_err": err,
            "pools": CompilePool.pools_started - pools, "worker_processes": CompilePool.processes_started - procs,
            "first_call_s": first}


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


def main() -> None:
    """Run every check; print JSON; exit 1 when one failed."""
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        sys.exit(1)
    out: dict[str, Any] = {"device": torch.cuda.get_device_name()}
    for name, check in (("cudagraphs", check_cudagraphs), ("compile_pool", check_compile_pool),
                        ("attention_bf16", check_attention_bf16)):
        try:
            out[name] = check()
        except Exception as exc:  # noqa: BLE001 - report every check
            out[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    print(json.dumps(out, indent=1, default=str))
    sys.exit(0 if all(v.get("ok") for k, v in out.items() if isinstance(v, dict)) else 1)


if __name__ == "__main__":
    main()
