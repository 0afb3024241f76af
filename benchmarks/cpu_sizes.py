"""Run-time sizes on the CPU target: kernel speed with sizes in the code vs as arguments, and the
cost of a new sequence length.

``kernels``: every case of the kernel group (:mod:`benchmarks.cpu_cases`) plus short-row cases
(where a size in the code could pay most) is compiled twice in this process, once with
``TILEWRIGHT_CPU_SIZES=specialize`` (sizes written into the C++) and once with run-time sizes,
and the two (and eager) are timed interleaved: ``--rounds`` rounds of ~``--round-ms`` each; the
JSON has each variant's median per-call time and the spread of the round medians.

``recompile``: a model compiled at one sequence length, then run at new ones: first-call time and
compiler runs per new size, in a fresh process per variant (cold build cache).

    python -m benchmarks.cpu_sizes --out benchmarks/results/<date>-cpu-sizes.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .cpu_cases import KERNEL_CASES, CpuCase, _kernel

VARIANTS = ("specialize", "runtime")


def _short_cases() -> tuple[CpuCase, ...]:
    return (
        CpuCase("layer_norm 8192x32", "kernel", _kernel(lambda x, w, b: F.layer_norm(x, (32,), w, b),
                                                          (8192, 32), (32,), (32,))),
        CpuCase("softmax 64x64x24", "kernel", _kernel(lambda x: torch.softmax(x, -1), (64, 64, 24))),
        CpuCase("softmax 4096x64", "kernel", _kernel(lambda x: torch.softmax(x, -1), (4096, 64))),
        CpuCase("softmax 2048x128", "kernel", _kernel(lambda x: torch.softmax(x, -1), (2048, 128))),
        CpuCase("softmax 1024x256", "kernel", _kernel(lambda x: torch.softmax(x, -1), (1024, 256))),
        CpuCase("layer_norm 1024x256", "kernel", _kernel(lambda x, w, b: F.layer_norm(x, (256,), w, b),
                                                           (1024, 256), (256,), (256,))),
        CpuCase("sum over seq 16x257x64", "kernel", _kernel(lambda x: x.sum(1), (16, 257, 64))),
        CpuCase("pointwise broadcast 64x129x33", "kernel",
                _kernel(lambda x, b: torch.sigmoid(x) * b, (64, 129, 33), (129, 1))),
        CpuCase("linear+bias 96x64x64", "kernel", _kernel(lambda x, w, b: F.linear(x, w, b), (96, 64), (64, 64), (64,))),
    )


def _compile(fn: Callable[..., Any], args: list[torch.Tensor], variant: str) -> Callable[..., Any]:
    """``fn`` compiled by tilewright with ``variant`` sizes; the backend's callable (no Dynamo guards)."""
    from tilewright.frontend.backend import tilewright_backend

    captured: list[Callable[..., Any]] = []

    def capture(gm: Any, example: Any, **kw: Any) -> Callable[..., Any]:
        compiled = tilewright_backend(gm, example, **kw)
        captured.append(compiled)
        return compiled

    os.environ["TILEWRIGHT_CPU_SIZES"] = variant
    try:
        torch.compile(fn, backend=capture)(*args)
        captured[-1](*args)  # the first call compiles (lazily, per signature)
    finally:
        os.environ.pop("TILEWRIGHT_CPU_SIZES", None)
        torch._dynamo.reset()
    return captured[-1]


def _round(call: Callable[[], Any], reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - start) / reps


def _limit_threads(threads: int) -> None:
    """Kernels see a CPU of ``threads`` cores (their schedules use at most that many), and so does eager."""
    from tilewright.targets.cpu import toolchain

    real = toolchain.cpu_description
    toolchain.cpu_description = lambda: {**real(), "cores": threads}  # type: ignore[assignment]
    torch.set_num_threads(threads)


def kernels(rounds: int, round_ms: float, threads: int | None = None,
            cases: list[str] | None = None) -> list[dict[str, Any]]:
    """Each kernel case with specialised and run-time sizes (and eager), timed interleaved."""
    import tilewright

    tilewright.config.target = "cpu"
    if threads:
        _limit_threads(threads)
    results = []
    for case in (*KERNEL_CASES, *_short_cases()):
        if cases and case.name not in cases:
            continue
        work = case.build()
        captured: list[list[torch.Tensor]] = []
        work.step(lambda *a, into=captured: into.append(list(a)))
        args = captured[0]
        calls: dict[str, Callable[[], Any]] = {"eager": lambda fn=work.target, a=args: fn(*a)}
        want = work.target(*args)
        for variant in VARIANTS:
            compiled = _compile(work.target, args, variant)
            got = compiled(*args)
            got = got[0] if isinstance(got, (list, tuple)) else got
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            calls[variant] = lambda c=compiled, a=args: c(*a)
        once = {s: _round(c, 3) for s, c in calls.items()}
        reps = {s: max(1, int(round_ms / 1e3 / max(t, 1e-7))) for s, t in once.items()}
        times: dict[str, list[float]] = {s: [] for s in calls}
        for _ in range(rounds):
            for s, c in calls.items():
                times[s].append(_round(c, reps[s]))
        row = {"case": case.name, "load": os.getloadavg()}
        for s, ts in times.items():
            row[s] = {"median_us": statistics.median(ts) * 1e6, "min_us": min(ts) * 1e6, "max_us": max(ts) * 1e6}
        row["runtime_vs_specialize"] = row["specialize"]["median_us"] / row["runtime"]["median_us"]
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


_RECOMPILE = r"""
import json, os, sys, time, torch
sys.path.insert(0, os.getcwd())
import tilewright
from pathlib import Path
from tilewright.targets.cpu.build import compiler_runs
tilewright.config.target = "cpu"
tilewright.config.cache_dir = Path(sys.argv[1])
model_name = sys.argv[2]
torch.manual_seed(0)
if model_name == "gpt2":
    from tests.models.model_zoo import gpt2
    model = gpt2()[0].eval()
    make = lambda b, t: torch.randint(0, 101, (b, t))
else:
    from tests.cpu.test_dynamic_sizes import Block
    model = Block().eval()
    make = lambda b, t: torch.randn(b, t, 24)
compiled = torch.compile(model, backend="tilewright")
rows = []
for b, t in [(2, 7), (2, 11), (2, 13), (2, 17), (2, 23)]:
    x = make(b, t)
    runs = compiler_runs()
    start = time.perf_counter()
    with torch.no_grad():
        compiled(x)
    rows.append({"batch": b, "seq": t, "first_call_s": time.perf_counter() - start, "compiler_runs": compiler_runs() - runs})
print(json.dumps(rows))
"""


def recompile(model: str) -> dict[str, Any]:
    """First-call time and compiler runs per new sequence length, each variant in a fresh process."""
    out: dict[str, Any] = {"model": model}
    for variant in VARIANTS:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, TILEWRIGHT_CPU_SIZES=variant)
            proc = subprocess.run([sys.executable, "-c", _RECOMPILE, cache, model], env=env, capture_output=True,
                                  text=True, check=True)
            out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load"] = os.getloadavg()
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--parts", default="kernels,recompile")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--round-ms", type=float, default=150.0)
    p.add_argument("--models", default="block,gpt2")
    p.add_argument("--cases", default="", help="comma-separated kernel case names (default: all)")
    p.add_argument("--threads", type=int, default=0, help="kernels and eager use at most this many threads "
                                                            "(1 gives steadier numbers on a shared machine)")
    args = p.parse_args(argv)
    parts = args.parts.split(",")
    result: dict[str, Any] = {"load_start": os.getloadavg()}
    if "kernels" in parts:
        result["kernels"] = kernels(args.rounds, args.round_ms, args.threads or None,
                                    [c for c in args.cases.split(",") if c] or None)
        result["threads"] = args.threads or "all"
    if "recompile" in parts:
        result["recompile"] = [recompile(m) for m in args.models.split(",")]
    result["load_end"] = os.getloadavg()
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
