"""Tuned against default schedules on the native CPU target, in one process (issue #14's third goal).

For each case: its kernels (one per problem, as ``tilewright autotune`` finds them) are tuned with
real CPU timings (:class:`tilewright.autotune.measure.CpuMeasurer`, Optuna, cost-model seeding)
into a fresh SQLite tuning database; then the case is compiled twice — ``tilewright_cpu`` with
default schedules (a fresh, empty database; GEMMs still race the vendor library at compile time, as
by default) and ``tilewright_cpu_tuned`` with the tuned database — and timed interleaved with eager
exactly as :mod:`benchmarks.cpu_target` times its suite. The JSON records per case the tuning time,
the kernels tuned with the tuner's own measured default/best times, and the model-level medians,
spreads and the tuned/default ratio; and the geomean of that ratio.

    python -m benchmarks.cpu_tuned --trials 12 --out benchmarks/results/<date>-cpu-tuned.json

A shared 2-core machine is noisy: compare only within one run, and read the spreads.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from . import cpu_target
from .cpu_cases import ALL_CASES, CpuCase

#: fp32 inference and kernel cases tuned by default (training steps: their backward kernels are not
#: found by ``tunable_kernels``, which explains the forward)
DEFAULT_CASES = ("linear+bias+gelu 512x768x3072,layer_norm 2048x1024,softmax 2048x1024,gpt2 4x384 b2 s128,bert 4x384 b2 s128,llama-gqa 4x384 b2 s128,"
                 "vit 4x384 b2 224px")


def tune_case(case: CpuCase, db_url: str, trials: int, timeout_s: float | None,
              case_budget_s: float | None = None, measurer_rounds: int = 1) -> dict[str, Any]:
    """Tune every kernel of ``case`` into ``db_url`` with real CPU timings; a summary of what ran.

    ``case_budget_s`` (optional) is shared by the case's kernels: each gets at most
    ``case_budget_s / kernels`` seconds (and never more than ``timeout_s``). ``measurer_rounds``
    > 1 times every trial's config in that many interleaved rounds and keeps the smallest round
    median (robust to the stalls a loaded machine gives multi-threaded kernels).
    """
    import tilewright
    from tilewright.autotune.search import SearchSettings
    from tilewright.autotune.tuner import default_measurer, tune_kernels
    from tilewright.frontend.api import tunable_kernels

    work = case.build()
    torch._dynamo.reset()
    tilewright.config.target = "cpu"
    tilewright.config.tuning_db_url = None
    with torch.no_grad():
        kernels = tunable_kernels(lambda: work.step(work.target), [])
    torch._dynamo.reset()
    if not kernels:
        return {"kernels": [], "tune_s": 0.0}
    measurer = default_measurer(None, kernels[0])
    if measurer_rounds > 1 and hasattr(measurer, "rounds"):
        measurer.rounds = measurer_rounds
    if case_budget_s is not None:
        share = max(case_budget_s / len(kernels), 5.0)
        timeout_s = min(timeout_s, share) if timeout_s else share
    start = time.perf_counter()
    results = tune_kernels(kernels, storage_url=db_url, measurer=measurer, progress=False,
                           settings=SearchSettings(trials=trials, timeout_s=timeout_s, seed=0),
                           kernel_source=f"benchmarks.cpu_tuned:{case.name}")
    rows = [{"kernel": r.kernel, "trials": r.trials, "failed": r.failed, "stored": r.stored,
             "default_ms": r.default_time_s * 1e3 if r.default_time_s else None,
             "best_ms": r.time_s * 1e3 if r.time_s else None, "speedup": r.speedup,
             "config": r.config} for r in results]
    return {"kernels": rows, "tune_s": round(time.perf_counter() - start, 1),
            "timing_source": measurer.source, "timeout_per_kernel_s": timeout_s, "measurer_rounds": measurer_rounds}


def _geomean(values: list[float]) -> float | None:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def main(argv: list[str] | None = None) -> int:
    """Tune, then time tuned against default schedules; writes JSON and prints a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated case names (benchmarks.cpu_cases)")
    p.add_argument("--trials", type=int, default=12, help="measured trials per kernel")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds of tuning per kernel")
    p.add_argument("--budget-s", type=float, default=None,
                   help="total tuning seconds shared by the cases still to run (each case's kernels share its part)")
    p.add_argument("--measurer-rounds", type=int, default=1,
                   help="interleaved rounds per measured config while tuning (smallest round median kept)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--round-ms", type=float, default=150.0)
    args = p.parse_args(argv)
    os.environ.pop("TILEWRIGHT_INTERPRET", None)
    wanted = [n for n in args.cases.split(",") if n]
    by_name = {c.name: c for c in ALL_CASES}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {sorted(by_name)}")
    systems = ["eager", "tilewright_cpu", "tilewright_cpu_tuned"]
    start = time.perf_counter()
    load_start = list(os.getloadavg())
    results = []
    with tempfile.TemporaryDirectory() as tw_cache, tempfile.TemporaryDirectory() as ind_cache:
        os.environ.update(TILEWRIGHT_CACHE_DIR=tw_cache, TORCHINDUCTOR_CACHE_DIR=ind_cache)
        import tilewright

        tilewright.config.cache_dir = Path(tw_cache)
        cpu_target.TUNED_DB_URL = f"sqlite:///{Path(tw_cache) / 'tuned.db'}"
        tune_spent = 0.0
        for i, name in enumerate(wanted):
            case = by_name[name]
            share = None if args.budget_s is None else max(args.budget_s - tune_spent, 0.0) / (len(wanted) - i)
            tuning = tune_case(case, cpu_target.TUNED_DB_URL, args.trials, args.timeout, share, args.measurer_rounds)
            tune_spent += tuning["tune_s"]
            timed = cpu_target.run_case(case, systems, args.rounds, args.round_ms)
            default, tuned = (timed["systems"][s]["median_ms"] for s in systems[1:])
            fastest = [timed["systems"][s]["min_ms"] for s in systems[1:]]
            row = {**timed, "tuning": tuning, "tuned_over_default": default / tuned,
                   "tuned_over_default_min": fastest[0] / fastest[1],
                   "loadavg_after_timing": list(os.getloadavg())}
            results.append(row)
            print(f"{name:30s} tuned {tuned:.2f} ms, default {default:.2f} ms: {default / tuned:.2f}x "
                  f"({len(tuning['kernels'])} kernels tuned in {tuning['tune_s']:.0f} s)", flush=True)
    doc = {"machine": cpu_target.machine(), "trials_per_kernel": args.trials, "budget_s": args.budget_s,
           "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()), "rounds": args.rounds,
           "round_ms": args.round_ms, "results": results,
           "geomean_tuned_over_default": _geomean([r["tuned_over_default"] for r in results]),
           "geomean_tuned_over_default_min": _geomean([r["tuned_over_default_min"] for r in results]),
           "geomean_kernel_speedup_measured_by_tuner": _geomean(
               [k["speedup"] for r in results for k in r["tuning"]["kernels"] if k["speedup"]]),
           "wall_s": round(time.perf_counter() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"geomean tuned / default: {doc['geomean_tuned_over_default']:.3f}x "
          f"(kernels, as the tuner measured them: {doc['geomean_kernel_speedup_measured_by_tuner'] or 0:.3f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
