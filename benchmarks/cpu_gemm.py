"""The CPU target's GEMM against torch.mm, and its fused linear+bias+GELU against eager and Inductor.

GEMM (float32): square 256/512/1024/2048 and two transformer linears (M x K x N: 128 x 768 x 3072,
512 x 3072 x 768). Each case times, interleaved round robin on the same tensors, ``torch.mm(a, b,
out=c)`` and the generated kernel launched directly with its default schedule (what the compiler
picks without tuning records): once with every core (wall clock) and once single-threaded (the
calling thread's CPU time: on a shared machine other processes' time slices do not count).
Fused: ``gelu(linear(x, w, b))`` for x ``[4, 128, 768]`` and w ``[3072, 768]``, timed as eager,
the CPU target (compiled, end to end) and Inductor (``max-autotune`` when it compiles within ``--inductor-timeout`` seconds, else default Inductor;
the JSON says which). Every system's output is checked against float64 first. The JSON records
medians of the round times, the spread (min and max round) and the ratios. A shared 2-core
machine is noisy: compare only within one run.

    python -m benchmarks.cpu_gemm --out benchmarks/results/<date>-cpu-gemm.json
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .cpu_target import machine
from .timing import ItemTimeout, deadline

log = logging.getLogger(__name__)

#: (M, K, N) of the float32 GEMM cases
GEMM_SHAPES = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048),
               (128, 768, 3072), (512, 3072, 768)]


def _round(fn: Callable[[], Any], reps: int, clock: Callable[[], float] = time.perf_counter) -> float:
    start = clock()
    for _ in range(reps):
        fn()
    return (clock() - start) / reps


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, round_ms: float,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, dict[str, float]]:
    """Median, min and max per-call ms of each function over ``rounds`` round-robin rounds
    (``clock``: wall time, or the calling thread's CPU time for single-threaded runs)."""
    once = {name: _round(fn, 1) for name, fn in fns.items()}  # warm up (and size the rounds)
    reps = {name: max(1, int(round_ms / 1e3 / max(t, 1e-6))) for name, t in once.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_round(fn, reps[name], clock) * 1e3)
    return {name: {"median_ms": statistics.median(ts), "min_ms": min(ts), "max_ms": max(ts), "calls_per_round": reps[name]}
            for name, ts in times.items()}


def _matmul_kernel(a: torch.Tensor, b: torch.Tensor) -> Any:
    """The CPU target's generated kernel for ``a @ b`` (built through the real pipeline)."""
    import tilewright
    from tilewright.frontend.api import tunable_kernels

    tilewright.config.target = "cpu"
    kernels = [k for k in tunable_kernels(lambda x, y: x @ y, (a, b)) if k.problem.kind == "matmul"]
    torch._dynamo.reset()
    if not kernels:
        raise RuntimeError("the CPU target generated no matmul kernel")
    return kernels[0]


def _timed_pair(a: torch.Tensor, b: torch.Tensor, kernel: Any, config: dict[str, Any], threads: int, rounds: int,
                round_ms: float, clock: Callable[[], float]) -> dict[str, Any]:
    """torch.mm and the kernel (``config``) with ``threads`` threads each, interleaved on the same operands."""
    m, n = a.shape[0], b.shape[1]
    c_torch, c_tw = torch.empty(m, n), torch.empty(m, n)
    launch = kernel.runner(config)
    args = [a, b, c_tw]
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        timed = interleaved({"torch_mm": lambda: torch.mm(a, b, out=c_torch), "tilewright": lambda: launch(args)},
                            rounds, round_ms, clock)
    finally:
        torch.set_num_threads(saved)
    flops = 2.0 * m * n * a.shape[1]
    for entry in timed.values():
        entry["gflops"] = flops / entry["median_ms"] / 1e6
    return {"threads": threads, "clock": "thread CPU time" if clock is time.thread_time else "wall",
            "schedule": dict(config), "systems": timed,
            "ratio_vs_torch_mm": timed["torch_mm"]["median_ms"] / timed["tilewright"]["median_ms"],
            "ratio_vs_torch_mm_best_round": timed["torch_mm"]["min_ms"] / timed["tilewright"]["min_ms"]}


def gemm_case(m: int, k: int, n: int, rounds: int, round_ms: float) -> dict[str, Any]:
    """torch.mm vs the generated kernel (default schedule) on the same float32 operands: with every
    core (wall clock), and single-threaded (the thread's CPU time, which other processes on a shared
    machine disturb least)."""
    torch.manual_seed(0)
    a, b = torch.randn(m, k), torch.randn(k, n)
    kernel = _matmul_kernel(a, b)
    c = torch.empty(m, n)
    kernel.runner(kernel.config)([a, b, c])
    want = a.double() @ b.double()
    errors = {"torch_mm": (torch.mm(a, b).double() - want).abs().max().item(),
              "tilewright": (c.double() - want).abs().max().item()}
    parallel = _timed_pair(a, b, kernel, kernel.config, torch.get_num_threads(), rounds, round_ms, time.perf_counter)
    single = _timed_pair(a, b, kernel, {**kernel.config, "threads": 1}, 1, rounds, round_ms, time.thread_time)
    log.info("GEMM %dx%dx%d: ratio vs torch.mm %.2f (%d threads, wall), %.2f (1 thread, CPU time)", m, k, n,
             parallel["ratio_vs_torch_mm"], parallel["threads"], single["ratio_vs_torch_mm"])
    return {"M": m, "K": k, "N": n, "max_abs_error_vs_float64": errors, "all_threads": parallel,
            "one_thread": single, "ratio_vs_torch_mm": parallel["ratio_vs_torch_mm"]}


def _compile_inductor(fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...], timeout_s: float) -> tuple[Any, str, float]:
    """Inductor max-autotune if it compiles within ``timeout_s``, else default Inductor."""
    torch._dynamo.reset()
    start = time.perf_counter()
    try:
        with deadline(timeout_s):
            compiled = torch.compile(fn, mode="max-autotune")
            compiled(*inputs)
        return compiled, "max-autotune", time.perf_counter() - start
    except (ItemTimeout, Exception) as exc:  # noqa: BLE001 - any failure falls back to default Inductor
        log.warning("Inductor max-autotune did not compile (%s); using default Inductor", exc)
    torch._dynamo.reset()
    start = time.perf_counter()
    compiled = torch.compile(fn)
    compiled(*inputs)
    return compiled, "default", time.perf_counter() - start


def fused_case(rounds: int, round_ms: float, inductor_timeout_s: float) -> dict[str, Any]:
    """gelu(linear(x, w, b)) in eager, on the CPU target, and in Inductor."""
    import tilewright
    from tilewright.report import collect

    torch.manual_seed(0)
    x, w, b = torch.randn(4, 128, 768), torch.randn(3072, 768) / 28, torch.randn(3072)
    fn = lambda x, w, b: F.gelu(F.linear(x, w, b))
    inputs = (x, w, b)
    want = fn(*[t.double() for t in inputs])
    inductor, inductor_mode, inductor_compile_s = _compile_inductor(fn, inputs, inductor_timeout_s)

    def tw_backend(gm: Any, example_inputs: Any) -> Any:
        from tilewright.frontend.backend import tilewright_backend

        tilewright.config.target = "cpu"
        return tilewright_backend(gm, example_inputs)

    start = time.perf_counter()
    tw = torch.compile(fn, backend=tw_backend)
    with collect() as report:
        tw(*inputs)
    tw_compile_s = time.perf_counter() - start
    systems = {"eager": lambda: fn(*inputs), "tilewright_cpu": lambda: tw(*inputs),
               f"inductor_{inductor_mode.replace('-', '_')}": lambda: inductor(*inputs)}
    errors = {name: (f().double() - want).abs().max().item() for name, f in systems.items()}
    timed = interleaved(systems, rounds, round_ms)
    for name, entry in timed.items():
        entry["max_abs_error_vs_float64"] = errors[name]
    tw_ms = timed["tilewright_cpu"]["median_ms"]
    return {"case": "gelu(linear(x[4,128,768], w[3072,768], b))", "inductor_mode": inductor_mode,
            "compile_s": {"tilewright_cpu": tw_compile_s, "inductor": inductor_compile_s},
            "tilewright_kernels": [{"kind": k["kind"], "ops": k["ops"], "schedule": k["schedule"]}
                                   for k in report.kernels],
            "systems": timed,
            "speedup_vs": {name: entry["median_ms"] / tw_ms for name, entry in timed.items() if name != "tilewright_cpu"}}


def main(argv: list[str] | None = None) -> int:
    """Run the GEMM and fused cases and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-ms", type=float, default=150.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    parser.add_argument("--inductor-timeout", type=float, default=90.0)
    parser.add_argument("--skip-fused", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
                              "gemm": [gemm_case(m, k, n, args.rounds, args.round_ms) for m, k, n in GEMM_SHAPES]}
    result["gemm_ratio_geomean"] = {
        key: statistics.geometric_mean([g[key]["ratio_vs_torch_mm"] for g in result["gemm"]])
        for key in ("all_threads", "one_thread")}
    if not args.skip_fused:
        result["fused_linear_gelu"] = fused_case(args.rounds, args.round_ms, args.inductor_timeout)
    result["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    for g in result["gemm"]:
        p, o = g["all_threads"], g["one_thread"]
        log.info("%5d x %4d x %4d  %d threads: torch.mm %8.3f ms  tilewright %8.3f ms  ratio %.2f | 1 thread: "
                 "torch.mm %8.3f ms  tilewright %8.3f ms  ratio %.2f", g["M"], g["K"], g["N"], p["threads"],
                 p["systems"]["torch_mm"]["median_ms"], p["systems"]["tilewright"]["median_ms"], p["ratio_vs_torch_mm"],
                 o["systems"]["torch_mm"]["median_ms"], o["systems"]["tilewright"]["median_ms"], o["ratio_vs_torch_mm"])
    if "fused_linear_gelu" in result:
        log.info("fused linear+bias+GELU: %s", json.dumps(result["fused_linear_gelu"]["speedup_vs"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
