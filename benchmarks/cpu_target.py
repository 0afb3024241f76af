"""The CPU benchmark suite: the native C++ target against eager and Inductor, in one process.

For every case (kernels; models in float32 and bfloat16 inference; training steps — see
:mod:`benchmarks.cpu_cases`) each system compiles the case first and its outputs are compared
with eager's (relative error recorded, a mismatch marked); then the systems are timed
interleaved (round robin, ``--rounds`` rounds, each round as many calls as fill ~``--round-ms``),
and the JSON records each system's median per-call time, the spread (min and max of the round
medians), the ratio to eager and the compile time (first call, cold caches: the run uses fresh
cache directories). ``--compile-times`` adds, for a few models, the first-call time of a second
process that finds the first one's caches warm. A shared 2-core machine is noisy: compare only
within one run.

    python -m benchmarks.cpu_target --out benchmarks/results/<date>-cpu-target.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from tilewright.report import Report, collect

from .cpu_cases import ALL_CASES, CpuCase, relative_error

#: systems timed by default; ``inductor_max`` is Inductor's max-autotune (slow to compile on CPU)
DEFAULT_SYSTEMS = "eager,tilewright_cpu,inductor"


#: the tuning database ``tilewright_cpu_tuned`` compiles with (set by :mod:`benchmarks.cpu_tuned`)
TUNED_DB_URL: str | None = None


def _tilewright_cpu(gm: Any, example_inputs: Any) -> Any:
    import tilewright
    from tilewright.frontend.backend import tilewright_backend

    tilewright.config.target = "cpu"
    tilewright.config.tuning_db_url = None  # the run's fresh cache: default schedules
    return tilewright_backend(gm, example_inputs)


def _tilewright_cpu_tuned(gm: Any, example_inputs: Any) -> Any:
    import tilewright
    from tilewright.frontend.backend import tilewright_backend

    if TUNED_DB_URL is None:
        raise SystemExit("tilewright_cpu_tuned needs a tuning database: run benchmarks.cpu_tuned")
    tilewright.config.target = "cpu"
    tilewright.config.tuning_db_url = TUNED_DB_URL
    try:
        return tilewright_backend(gm, example_inputs)
    finally:
        tilewright.config.tuning_db_url = None


def _tilewright_eager_fallback(gm: Any, example_inputs: Any) -> Any:
    import tilewright
    from tilewright.frontend.backend import tilewright_backend

    tilewright.config.target = "triton"  # without the interpreter: Dynamo's graph runs as written
    return tilewright_backend(gm, example_inputs)


def compile_system(system: str, target: Any) -> Any:
    """``target`` compiled by ``system`` (each tilewright system has its own backend function, so
    Dynamo keeps their graphs apart)."""
    if system == "eager":
        return target
    if system == "inductor":
        return torch.compile(target)
    if system == "inductor_max":
        return torch.compile(target, mode="max-autotune")
    backends = {"tilewright_cpu": _tilewright_cpu, "tilewright_cpu_tuned": _tilewright_cpu_tuned,
                "tilewright_eager_fallback": _tilewright_eager_fallback}
    if system not in backends:
        raise SystemExit(f"unknown system {system!r}; choose from eager, inductor, inductor_max, {', '.join(backends)}")
    return torch.compile(target, backend=backends[system])


def _call(system: str, step: Callable[[Any], Any], compiled: Any) -> Any:
    import tilewright

    # the target is read when a graph is compiled (lazily, at the first call with new shapes)
    tilewright.config.target = "triton" if system == "tilewright_eager_fallback" else "cpu"
    return step(compiled)


def _round(fn: Callable[[], Any], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def run_case(case: CpuCase, systems: list[str], rounds: int, round_ms: float) -> dict[str, Any]:
    """Compile ``case`` with every system, compare outputs with eager's, time them interleaved."""
    work = case.build()
    torch._dynamo.reset()
    want = work.step(work.target)
    compiled: dict[str, Any] = {}
    result: dict[str, Any] = {"case": case.name, "group": case.group, "systems": {}}
    for system in systems:
        start = time.perf_counter()
        compiled[system] = compile_system(system, work.target)
        with collect() as report:
            got = _call(system, work.step, compiled[system])
        if system.startswith("tilewright_cpu"):
            result[f"{system}_report"] = _kernel_summary(report)
        entry = {"compile_and_first_call_s": round(time.perf_counter() - start, 3)}
        errors = [relative_error(g, w) for g, w in zip(got, want)]
        entry["max_relative_error"] = max(errors) if errors else 0.0
        entry["matches_eager"] = bool(len(got) == len(want) and entry["max_relative_error"] <= work.tolerance)
        result["systems"][system] = entry
    once = {s: _round(lambda s=s: _call(s, work.step, compiled[s]), 1) for s in systems}
    reps = {s: max(1, int(round_ms / 1e3 / max(once[s], 1e-6))) for s in systems}
    times: dict[str, list[float]] = {s: [] for s in systems}
    for _ in range(rounds):
        for s in systems:
            times[s].append(_round(lambda s=s: _call(s, work.step, compiled[s]), reps[s]))
    eager = statistics.median(times["eager"]) if "eager" in times else None
    for s in systems:
        m = statistics.median(times[s])
        result["systems"][s].update({"median_ms": m * 1e3, "min_ms": min(times[s]) * 1e3,
                                     "max_ms": max(times[s]) * 1e3, "calls_per_round": reps[s],
                                     "speedup_vs_eager": eager / m if eager else None})
    return result


def _kernel_summary(report: Report) -> dict[str, Any]:
    """What the CPU target made of the case's graphs: kernels by kind, coverage, ATen fallbacks."""
    kinds: dict[str, int] = {}
    for k in report.kernels:
        kinds[k["kind"]] = kinds.get(k["kind"], 0) + 1
    return {"graphs": [f"{g.name} [{g.mode}]" for g in report.graphs], "kernels": kinds,
            "coverage": round(report.coverage, 3),
            "aten_ops": sorted({f["op"].split(".")[1] for f in report.fallbacks if f["op"].startswith("aten.")})}


def compile_times(names: list[str], systems: list[str]) -> list[dict[str, Any]]:
    """First-call times of a cold process and of a second process that finds its caches warm."""
    rows = []
    for name in names:
        for system in systems:
            with tempfile.TemporaryDirectory() as tw_cache, tempfile.TemporaryDirectory() as ind_cache:
                env = dict(os.environ, TILEWRIGHT_CACHE_DIR=tw_cache, TORCHINDUCTOR_CACHE_DIR=ind_cache)
                secs = []
                for _ in range(2):
                    out = subprocess.run([sys.executable, "-m", "benchmarks.cpu_target", "--probe", name, system],
                                         env=env, capture_output=True, text=True, check=True)
                    secs.append(json.loads(out.stdout.strip().splitlines()[-1])["first_call_s"])
            rows.append({"case": name, "system": system, "cold_s": secs[0], "warm_s": secs[1],
                         "warm_over_cold": secs[1] / secs[0]})
            print(f"compile {name:28s} {system:16s} cold {secs[0]:.1f} s  warm {secs[1]:.1f} s", flush=True)
    return rows


def _probe(name: str, system: str) -> int:
    case = next(c for c in ALL_CASES if c.name == name)
    work = case.build()
    start = time.perf_counter()
    _call(system, work.step, compile_system(system, work.target))
    print(json.dumps({"first_call_s": time.perf_counter() - start}))
    return 0


def machine() -> dict[str, Any]:
    """The machine the numbers came from."""
    doc: dict[str, Any] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        from tilewright.targets.cpu.toolchain import cpu_description, find_compiler

        doc.update({"description": cpu_description(), "compiler": find_compiler().version})
    except Exception as exc:  # the description is informative only
        doc["description_error"] = str(exc)
    return doc


def _geomeans(results: list[dict[str, Any]], systems: list[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for group in sorted({r["group"] for r in results}):
        rows = [r for r in results if r["group"] == group]
        out[group] = {s: statistics.geometric_mean([r["systems"][s]["speedup_vs_eager"] for r in rows])
                      for s in systems if s != "eager"}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the CPU suite; writes JSON and prints a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--round-ms", type=float, default=150.0, help="time each system's calls fill per round")
    p.add_argument("--systems", default=DEFAULT_SYSTEMS)
    p.add_argument("--groups", default="kernel,inference,bf16,train", help="case groups to run")
    p.add_argument("--cases", default="", help="comma-separated case names (default: every case of --groups)")
    p.add_argument("--compile-times", default="gpt2 4x384 b2 s128,resnet18 b1 224px",
                   help="cases whose cold and warm compile times are measured in fresh processes ('' for none)")
    p.add_argument("--probe", nargs=2, metavar=("CASE", "SYSTEM"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.pop("TILEWRIGHT_INTERPRET", None)
    if args.probe:
        return _probe(*args.probe)
    if args.out is None:
        p.error("--out is required")
    systems = args.systems.split(",")
    if systems[0] != "eager":
        p.error("--systems must start with eager (ratios are to eager)")
    groups = set(args.groups.split(","))
    wanted = set(filter(None, args.cases.split(",")))
    cases = [c for c in ALL_CASES if (c.name in wanted if wanted else c.group in groups)]
    start = time.perf_counter()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tw_cache, tempfile.TemporaryDirectory() as ind_cache:
        os.environ.update(TILEWRIGHT_CACHE_DIR=tw_cache, TORCHINDUCTOR_CACHE_DIR=ind_cache)
        import tilewright

        tilewright.config.cache_dir = Path(tw_cache)  # read at import: the environment alone comes too late
        results = []
        for case in cases:
            r = run_case(case, systems, args.rounds, args.round_ms)
            results.append(r)
            cells = "  ".join(f"{s} {v['median_ms']:.2f} ms ({v['speedup_vs_eager']:.2f}x"
                              f"{'' if v['matches_eager'] else ', MISMATCH'})" for s, v in r["systems"].items())
            print(f"{r['case']:30s} {cells}", flush=True)
    compile_rows = compile_times(list(filter(None, args.compile_times.split(","))),
                                 [s for s in systems if s != "eager"])
    doc = {"machine": machine(), "rounds": args.rounds, "round_ms": args.round_ms, "results": results,
           "geomean_speedup_vs_eager": _geomeans(results, systems), "compile_times": compile_rows,
           "wall_s": round(time.perf_counter() - start, 1),
           "load_average": {"start": [round(x, 2) for x in load_start], "end": [round(x, 2) for x in os.getloadavg()]}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    for group, geo in doc["geomean_speedup_vs_eager"].items():
        print(f"geomean vs eager ({group}): " + ", ".join(f"{s} {g:.2f}x" for s, g in geo.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
