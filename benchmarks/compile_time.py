"""Compile time of tilewright's pipeline (capture, passes, codegen) on the GPT-2 test model.

Usage::

    python -m benchmarks.compile_time                  # tiny GPT-2, CPU interpreter
    python -m benchmarks.compile_time --size realistic --repeat 3 --json out.json

The phase times come from the backend's compile report (what ``tilewright.explain(...).to_dict()
["timings"]`` returns, collected during the first call so nothing compiles twice;
today ``import``, ``passes``, ``codegen``, and ``triton_compile`` where reported); the total excludes Triton's
own compile. Where the backend reports no timings, the wall time of the first call minus the
second is used instead, and the output says so. ``--inductor`` adds Inductor's first-minus-second
time on the same model for comparison.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("benchmarks.compile_time")

#: Phases reported by the backend that are not tilewright's own pipeline work.
EXCLUDED_PHASES = ("triton_compile",)


def measure(system: str, small: bool, device: Any, repeat: int) -> dict[str, Any]:
    """Median phase times of ``system`` compiling GPT-2 inference over ``repeat`` fresh compiles."""
    import torch  # noqa: PLC0415

    from . import systems  # noqa: PLC0415
    from .cases import ALL_CASES  # noqa: PLC0415
    from .timing import timed_call  # noqa: PLC0415

    wl = ALL_CASES["gpt2"].build(small, torch.float32, device)
    systems.warm_up(system, device)  # one-time start-up (imports, worker pools) is not compile time
    walls: list[float] = []
    phases: dict[str, list[float]] = {}
    for _ in range(repeat):
        systems.reset_compilers()
        fn = systems.prepare(system, wl.target)
        with systems.collecting(system) as info:
            _, first = timed_call(lambda: wl.step(fn), device)
        _, second = timed_call(lambda: wl.step(fn), device)
        walls.append(max(0.0, first - second))
        if system == "tilewright" and not info and not systems.SUT.substitute:
            systems.reset_compilers()  # no collector in this tilewright: ask explain instead
            info = systems.summarize_explain(systems.explain(wl.target, wl.args)) or {}
        for name, seconds in (info.get("timings") or {}).items():
            phases.setdefault(name, []).append(float(seconds))
    out: dict[str, Any] = {"system": system, "repeat": repeat, "first_minus_second_each_s": walls,
                           "first_minus_second_s": statistics.median(walls)}
    if phases:
        med = {k: statistics.median(v) for k, v in phases.items()}
        out["phases_s"] = med
        out["pipeline_s"] = sum(v for k, v in med.items() if k not in EXCLUDED_PHASES)
        out["method"] = "backend-reported phase timings (the compile report's 'timings'), Triton compile excluded"
    else:
        out["pipeline_s"] = out["first_minus_second_s"]
        out["method"] = "wall time of the first call minus the second (no timings reported by the backend)"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: prints one line per system and optionally writes JSON."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.compile_time", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("small", "realistic"), default="small")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--inductor", action="store_true", help="also measure Inductor on the same model")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    import torch  # noqa: PLC0415

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        os.environ.setdefault("TILEWRIGHT_INTERPRET", "1")  # before tilewright is imported
    from . import systems  # noqa: PLC0415

    systems.SUT.backend = "tilewright" if systems.tilewright_available() else "aot_eager"
    results = [measure("tilewright", args.size == "small", device, args.repeat)]
    if args.inductor:
        results.append(measure("inductor", args.size == "small", device, args.repeat))
    doc = {"model": "gpt2", "size": args.size, "device": str(device), "sut": systems.SUT.backend,
           "torch": torch.__version__, "results": results}
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    if systems.SUT.substitute:
        print("NOTE: tilewright is not available; aot_eager stood in for it.")
    for r in results:
        phases = ", ".join(f"{k} {v:.3f}" for k, v in r.get("phases_s", {}).items())
        print(f"{r['system']:<10} pipeline {r['pipeline_s']:.3f} s  [{r['method']}]" + (f"  ({phases})" if phases else "")
              + f"; end to end (first call minus second) {r['first_minus_second_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
