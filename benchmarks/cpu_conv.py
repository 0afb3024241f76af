"""The CPU target's convolution kernels against eager (oneDNN) and Inductor on ResNet-18/50 and
ConvNeXt shapes at 224 px.

Each case is ``relu(conv2d(x, w, b))`` (a convolution with batch norm folded into ``w`` and ``b``,
then ReLU; depthwise cases have no ReLU, as in ConvNeXt). Systems, timed interleaved round robin in
one process on the same tensors (median, min and max of the rounds):

- ``eager``: the function as written (oneDNN convolution, then ReLU);
- ``tw_generated``: the CPU target's generated kernel launched directly with its default schedule;
- ``tw_extern``: the same kernel's ``extern`` candidate (torch.convolution, then the generated epilogue);
- ``tilewright``: the function compiled with the tilewright backend, end to end (the compile-time
  race picked one of the two above: the JSON says which);
- ``inductor``: ``torch.compile`` default mode.

Every system's output is checked against float64 first. A shared 2-core machine is noisy:
compare only within one run, and read the load average recorded beside the numbers.

    python -m benchmarks.cpu_conv --out benchmarks/results/<date>-cpu-conv.json [--batch 1 8] [--only r18] [--one-thread]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .cpu_gemm import interleaved
from .cpu_target import machine

log = logging.getLogger(__name__)

#: name -> (C, K, H, kernel, stride, groups); padding = kernel // 2
SHAPES: dict[str, tuple[int, int, int, int, int, int]] = {
    "stem 7x7/2 3->64 @224": (3, 64, 224, 7, 2, 1),
    "r18 3x3 64->64 @56": (64, 64, 56, 3, 1, 1),
    "r18 3x3/2 64->128 @56": (64, 128, 56, 3, 2, 1),
    "r18 3x3 128->128 @28": (128, 128, 28, 3, 1, 1),
    "r18 3x3 256->256 @14": (256, 256, 14, 3, 1, 1),
    "r18 3x3 512->512 @7": (512, 512, 7, 3, 1, 1),
    "r50 1x1 64->256 @56": (64, 256, 56, 1, 1, 1),
    "r50 1x1 256->64 @56": (256, 64, 56, 1, 1, 1),
    "r50 1x1/2 256->512 @56": (256, 512, 56, 1, 2, 1),
    "r50 1x1 1024->256 @14": (1024, 256, 14, 1, 1, 1),
    "r50 1x1 2048->512 @7": (2048, 512, 7, 1, 1, 1),
    "convnext dw 7x7 96 @56": (96, 96, 56, 7, 1, 96),
    "convnext dw 7x7 768 @7": (768, 768, 7, 7, 1, 768),
}


def _fn(stride: int, padding: int, groups: int) -> Callable[..., torch.Tensor]:
    if groups > 1:
        return lambda x, w, b: F.conv2d(x, w, b, stride, padding, 1, groups)
    return lambda x, w, b: torch.relu(F.conv2d(x, w, b, stride, padding, 1, groups))


def _conv_kernel(fn: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...]) -> Any:
    """The CPU target's generated convolution kernel for ``fn`` (built through the real pipeline)."""
    import tilewright
    from tilewright.frontend.api import tunable_kernels

    tilewright.config.target = "cpu"
    kernels = [k for k in tunable_kernels(fn, inputs) if k.problem.kind == "conv"]
    torch._dynamo.reset()
    if not kernels:
        raise RuntimeError("the CPU target generated no convolution kernel")
    return kernels[0]


def case(name: str, batch: int, rounds: int, round_ms: float, inductor: bool, one_thread: bool = False) -> dict[str, Any]:
    """One convolution shape at ``batch``: every system interleaved on the same tensors. ``one_thread``:
    torch and the kernels on one thread, timed by the calling thread's CPU time (what a loaded shared
    machine disturbs least); the end-to-end compiled system is left out (its kernels use every core)."""
    import tilewright
    from tilewright.report import collect

    c, k, h, r, stride, groups = SHAPES[name]
    torch.manual_seed(0)
    x = torch.randn(batch, c, h, h)
    w = torch.randn(k, c // groups, r, r) / (c // groups * r * r) ** 0.5
    b = torch.randn(k)
    fn = _fn(stride, r // 2, groups)
    inputs = (x, w, b)
    want = fn(*[t.double() for t in inputs])
    kernel = _conv_kernel(fn, inputs)
    out_gen, out_ext = torch.empty_like(want, dtype=torch.float32), torch.empty_like(want, dtype=torch.float32)
    default = kernel.space.default_config()  # kernel.config is what the compile-time race picked
    if one_thread:
        default["threads"] = 1
    gen = kernel.runner(default)
    extern_config = {**default, "extern": True}  # (with threads=1 outside the space: extern takes the default)
    kernel.ensure_built()

    def ext(tensors: list[torch.Tensor]) -> None:
        kernel.launch(tensors, extern_config)
    tilewright.config.target = "cpu"
    compiled = torch.compile(fn, backend="tilewright")
    with collect() as report:
        compiled(*inputs)
    picked = [k["schedule"] for k in report.kernels if k["kind"] == "conv"]
    systems: dict[str, Callable[[], Any]] = {
        "eager": lambda: fn(*inputs), "tw_generated": lambda: gen([x, w, b, out_gen]),
        "tw_extern": lambda: ext([x, w, b, out_ext]), "tilewright": lambda: compiled(*inputs)}
    outputs = {"tw_generated": lambda: (gen([x, w, b, out_gen]), out_gen)[1],
               "tw_extern": lambda: (ext([x, w, b, out_ext]), out_ext)[1]}
    if inductor:
        torch._dynamo.reset()
        ind = torch.compile(fn)
        ind(*inputs)
        systems["inductor"] = lambda: ind(*inputs)
    errors = {s: (outputs.get(s, f)().double() - want).abs().max().item() for s, f in systems.items()}
    load = os.getloadavg()
    if one_thread:
        del systems["tilewright"]
    timed = interleaved(systems, rounds, round_ms, time.thread_time if one_thread else time.perf_counter)
    torch._dynamo.reset()
    macs = batch * k * want.shape[2] * want.shape[3] * (c // groups) * r * r
    for s, entry in timed.items():
        entry["max_abs_error_vs_float64"] = errors[s]
        entry["gflops"] = 2.0 * macs / entry["median_ms"] / 1e6
        entry["speedup_vs_eager"] = timed["eager"]["median_ms"] / entry["median_ms"]
    row = {"case": name, "batch": batch, "clock": "thread CPU time, 1 thread" if one_thread else "wall", "schedule": default, "raced": picked,
           "load_avg_before": load, "load_avg_after": os.getloadavg(), "systems": timed}
    log.info("%-26s b%d  eager %8.3f ms  generated %.2fx  extern %.2fx  tilewright %s%s  (load %.1f)", name, batch,
             timed["eager"]["median_ms"], timed["tw_generated"]["speedup_vs_eager"],
             timed["tw_extern"]["speedup_vs_eager"],
             f"{timed['tilewright']['speedup_vs_eager']:.2f}x" if "tilewright" in timed else "-",
             f"  inductor {timed['inductor']['speedup_vs_eager']:.2f}x" if inductor else "", load[0])
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the convolution cases and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--round-ms", type=float, default=120.0)
    parser.add_argument("--no-inductor", action="store_true")
    parser.add_argument("--one-thread", action="store_true", help="1 thread everywhere, timed by thread CPU time")
    args = parser.parse_args(argv)
    if args.one_thread:
        torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    rows = [case(name, batch, args.rounds, args.round_ms, not args.no_inductor, args.one_thread)
            for batch in args.batch for name in SHAPES if args.only in name]
    systems = [s for s in rows[0]["systems"] if s != "eager"] if rows else []
    result: dict[str, Any] = {
        "machine": machine(), "torch_threads": torch.get_num_threads(), "rounds": args.rounds, "rows": rows,
        "geomean_speedup_vs_eager": {s: statistics.geometric_mean([r["systems"][s]["speedup_vs_eager"] for r in rows])
                                     for s in systems},
        "wall_s": time.perf_counter() - started}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=str))
    log.info("geomean speedup vs eager: %s", json.dumps({s: round(v, 3) for s, v in
                                                          result["geomean_speedup_vs_eager"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
