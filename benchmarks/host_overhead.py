"""Host overhead of tilewright's runtime: Python time per kernel call, extern call, view and input.

Graphs of N generated CPU kernels (``TILEWRIGHT_TARGET=cpu``) run on tiny tensors (1-8 elements),
so what is timed is the runtime's own code, not the kernels. Each case is an ATen FX graph
(``make_fx``) compiled with :func:`tilewright.compile_graph` (no Dynamo, no AOTAutograd around
it) and timed at two sizes; the slope between them is the cost of one more kernel (extern call,
view, input). Cases:

- ``kernels``: a chain of generated pointwise kernels with a transpose between them;
- ``externs``: a chain of ``cumsum`` calls (ATen calls, no kernels);
- ``views``: one kernel reading N ``as_strided`` views of its input;
- ``inputs``: one kernel adding N inputs (the guard checks each one);
- ``guard``: the specialisation lookup alone, per input tensor.

Systems, interleaved round robin: ``eager`` (the same Python function, torch ops), ``general``
(the runtime's step-by-step interpreter) and ``fast`` (the generated per-graph callable) when
the runtime has one. ``--empty-kernels`` binds every C kernel to an empty C function, so the
kernel bodies cost nothing at all (results are then wrong; only time is measured).

    python -m benchmarks.host_overhead --out benchmarks/results/<date>-host-overhead.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TILEWRIGHT_TARGET", "cpu")

import torch

#: the two sizes the slope is taken between, per case
SIZES = {"kernels": (2, 34), "externs": (2, 34), "views": (2, 34), "inputs": (2, 66)}


def _kernels(n: int) -> tuple[Callable[..., Any], list[torch.Tensor], int]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        for _ in range(n):
            x = (x * 1.5).t() + 1
        return x

    return fn, [torch.randn(2, 2)], n


def _externs(n: int) -> tuple[Callable[..., Any], list[torch.Tensor], int]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        for _ in range(n):
            x = torch.cumsum(x, 0)
        return x

    return fn, [torch.randn(4)], n


def _views(n: int) -> tuple[Callable[..., Any], list[torch.Tensor], int]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        acc = torch.as_strided(x, (2,), (1,), 0) * 1.0
        for i in range(1, n + 1):
            acc = acc + torch.as_strided(x, (2,), (1,), i)
        return acc

    return fn, [torch.randn(n + 4)], n


def _inputs(n: int) -> tuple[Callable[..., Any], list[torch.Tensor], int]:
    def fn(*xs: torch.Tensor) -> torch.Tensor:
        acc = xs[0] * 1.0
        for x in xs[1:]:
            acc = acc + x
        return acc

    return fn, [torch.randn(4) for _ in range(n)], n


CASES = {"kernels": _kernels, "externs": _externs, "views": _views, "inputs": _inputs}


def _runtime_modes() -> list[str]:
    try:
        from tilewright.runtime import fastpath  # noqa: F401
    except ImportError:
        return ["general"]
    return ["general", "fast"]


def _set_mode(mode: str) -> None:
    if mode == "eager":
        return
    try:
        from tilewright.runtime import fastpath
    except ImportError:
        return
    fastpath.settings.enabled = mode == "fast"


def _empty_library() -> Any:
    from tilewright.targets.cpu.build import build_library, load_library

    return load_library(build_library('extern "C" void tw_empty_kernel(void) {}\n', "tw_host_overhead_empty"))


def _patch_empty_kernels() -> None:
    """Bind every CPU kernel built from now on to one empty C function (same argument types)."""
    from tilewright.targets.cpu.kernel import CpuKernel

    library = _empty_library()
    original = CpuKernel.bind

    def bind(self: CpuKernel, lib: Any) -> None:
        original(self, lib)
        fn = library["tw_empty_kernel"]  # a fresh function object per kernel
        fn.restype, fn.argtypes = None, self.function.argtypes
        self.function = fn

    CpuKernel.bind = bind  # type: ignore[method-assign]


def _compile(fn: Callable[..., Any], inputs: list[torch.Tensor]) -> Any:
    from torch.fx.experimental.proxy_tensor import make_fx

    import tilewright

    gm = make_fx(fn)(*inputs)
    run = tilewright.compile_graph(gm, inputs)
    for mode in ["fast", "general"]:  # compile and warm up both paths
        _set_mode(mode)
        for _ in range(3):
            run(*inputs)
    return run


def _per_call_us(call: Callable[[], Any], reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - t0) / reps * 1e6


def _time_case(name: str, rounds: int, reps: int) -> dict[str, Any]:
    make = CASES[name]
    modes = ["eager"] + _runtime_modes()
    built = {}
    for n in SIZES[name]:
        fn, inputs, units = make(n)
        built[n] = (fn, inputs, units, _compile(fn, inputs))
    samples: dict[tuple[str, int], list[float]] = {(m, n): [] for m in modes for n in SIZES[name]}
    for _ in range(rounds):
        for n, (fn, inputs, _units, run) in built.items():
            for mode in modes:
                _set_mode(mode)
                call = (lambda f=fn, a=inputs: f(*a)) if mode == "eager" else (lambda r=run, a=inputs: r(*a))
                samples[(mode, n)].append(_per_call_us(call, reps))
    lo, hi = SIZES[name]
    units = built[hi][2] - built[lo][2]
    result: dict[str, Any] = {"sizes": list(SIZES[name]), "per_call_us": {}, "per_unit_us": {}}
    for mode in modes:
        slopes = [(b - a) / units for a, b in zip(samples[(mode, lo)], samples[(mode, hi)])]
        result["per_call_us"][mode] = {str(n): round(statistics.median(samples[(mode, n)]), 2) for n in SIZES[name]}
        result["per_unit_us"][mode] = {"median": round(statistics.median(slopes), 3),
                                       "min": round(min(slopes), 3), "max": round(max(slopes), 3)}
    return result


def _guard_case(rounds: int, reps: int) -> dict[str, Any]:
    """The specialisation lookup alone (no graph runs), per input tensor."""
    from tilewright.frontend.backend import LazyCompiledGraph

    out: dict[str, Any] = {}
    samples: dict[int, list[float]] = {}
    lazies = {}
    for n in SIZES["inputs"]:
        fn, inputs, _units = _inputs(n)
        run = _compile(fn, inputs)
        lazy: LazyCompiledGraph = run.lazy
        # the graph itself replaced by a no-op: what remains is the guard
        for key in list(lazy.cache):
            lazy.cache[key] = lambda args: None
        if hasattr(lazy, "reset_guard"):
            lazy.reset_guard()
        lazies[n] = (lazy, inputs)
        samples[n] = []
    for _ in range(rounds):
        for n, (lazy, inputs) in lazies.items():
            samples[n].append(_per_call_us(lambda lz=lazy, a=inputs: lz(list(a)), reps))
    lo, hi = SIZES["inputs"]
    slopes = [(b - a) / (hi - lo) for a, b in zip(samples[lo], samples[hi])]
    out["per_call_us"] = {str(n): round(statistics.median(s), 2) for n, s in samples.items()}
    out["per_input_us"] = {"median": round(statistics.median(slopes), 3), "min": round(min(slopes), 3),
                           "max": round(max(slopes), 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the cases and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--cases", default=",".join([*CASES, "guard"]))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=200, help="calls per timed round")
    parser.add_argument("--empty-kernels", action="store_true", help="bind every C kernel to an empty function")
    args = parser.parse_args(argv)
    import tilewright

    tilewright.config.target = "cpu"
    torch.set_num_threads(1)
    if args.empty_kernels:
        _patch_empty_kernels()
    results: dict[str, Any] = {"empty_kernels": args.empty_kernels, "rounds": args.rounds, "reps": args.reps,
                               "python": sys.version.split()[0], "torch": torch.__version__, "cases": {}}
    for name in args.cases.split(","):
        results["cases"][name] = _guard_case(args.rounds, args.reps) if name == "guard" \
            else _time_case(name, args.rounds, args.reps)
        print(name, json.dumps(results["cases"][name]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
