"""``tilewright collect``: measure kernels on this GPU and write cost-model training records.

Generates kernels from random shapes of every kernel kind (and the model suite when its hook
exists), samples configs across each schedule space, compiles them in parallel on the CPU
cores while the GPU times the previous kernel, and appends records to ``--out`` (JSON Lines)
kernel by kernel until ``--budget-s`` runs out. Defaults fit a 15-minute GPU window.

Exit codes: 0 success; 3 no CUDA GPU (records must come from a real GPU); 4 no kernel could be
generated (no builders available).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

ALL_KINDS = ("pointwise", "reduction", "matmul", "attention", "conv")


def register(subparsers: Any) -> None:
    """Add the ``collect`` sub-command."""
    p = subparsers.add_parser("collect", help="measure kernels on a GPU into cost-model records",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="records file (.jsonl); default data/costmodel/records/<gpu>-<date>.jsonl")
    p.add_argument("--budget-s", type=float, default=600.0, help="wall-clock budget in seconds (default 600)")
    p.add_argument("--kinds", default=",".join(ALL_KINDS), help="comma-separated kernel kinds")
    p.add_argument("--per-kind", type=int, default=200, help="random problems per kind (upper bound)")
    p.add_argument("--configs-per-kernel", type=int, default=24)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    p.add_argument("--repeats", type=int, default=10, help="timed launches per config")
    p.add_argument("--device", default="cuda")
    p.add_argument("--target", choices=("gpu", "cpu"), default="gpu",
                   help="gpu: Triton kernels timed on CUDA; cpu: the native C++ target timed by wall clock")
    p.add_argument("--suite-module", default="tests.models.model_zoo",
                   help="module with a MODELS dict of model factories (CPU target)")
    p.add_argument("--repeat-sample", type=int, default=24,
                   help="configs measured again in a second process for the repeatability report (CPU)")
    p.add_argument("--rounds", type=int, default=1,
                   help="CPU: time each kernel's configs in this many interleaved rounds and keep the smallest "
                        "round median (robust to stalls on a loaded machine; default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-suite", action="store_true", help="skip the model-suite kernels")
    p.add_argument("--dry-run", action="store_true", help="list what would be measured, measure nothing")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def _kernels(args: argparse.Namespace) -> tuple[list[tuple[str, Any]], Iterator[tuple[str, Any]]]:
    """Model-suite kernels (a list) and random kernels (a lazy iterator)."""
    from ..autotune.kernel_zoo import SPEC_BUILDERS, model_suite_kernels
    from ..costmodel.collect import random_kernels

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    suite = [] if args.no_suite else model_suite_kernels()
    return suite, random_kernels(kinds, args.per_kind, SPEC_BUILDERS, seed=args.seed)


def _dry_run(args: argparse.Namespace) -> int:
    import random

    from ..costmodel.collect import sample_configs

    suite, rand = _kernels(args)
    rng = random.Random(args.seed)
    rows = []
    for source, kernel in [*suite, *rand]:
        rows.append({"source": source, "name": getattr(kernel, "name", ""), "kind": kernel.problem.kind,
                     "dims": kernel.problem.dims, "configs": len(sample_configs(kernel.space, args.configs_per_kernel, rng))})
    if args.json:
        print(json.dumps({"kernels": rows}, indent=1))
    else:
        from rich.console import Console

        Console().print(f"{len(rows)} kernels would be measured, "
                        f"{sum(r['configs'] for r in rows)} configs in all")
    return 0 if rows else 4


def run(args: argparse.Namespace) -> int:
    """Collect records; returns the exit code."""
    if args.target == "cpu":
        return run_cpu(args)
    if args.dry_run:
        return _dry_run(args)
    import torch

    if not str(args.device).startswith("cuda") or not torch.cuda.is_available():
        log.error("collect needs a CUDA GPU: records must come from real GPU timings")
        return 3
    from functools import partial

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..autotune.measure import CudaMeasurer, precompile
    from ..costmodel.collect import collect
    from ..costmodel.devices import device_family

    measurer = CudaMeasurer(args.device, repeats=args.repeats, warmup=2, compile_workers=0)
    info = measurer.device_info()
    out = Path(args.out or f"data/costmodel/records/{device_family(info['name'])}-{time.strftime('%Y%m%d-%H%M')}.jsonl")
    suite, rand = _kernels(args)
    kernels = [*suite, *rand] if suite else rand
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                  TextColumn("{task.fields[status]}"), disable=args.json) as progress:
        task = progress.add_task(f"collecting on {info['name']}", total=args.budget_s, status="")
        start = time.monotonic()

        def tick(summary: Any, name: str) -> None:
            progress.update(task, completed=min(time.monotonic() - start, args.budget_s),
                            status=f"{summary.kernels} kernels, {summary.records} records ({name})")

        summary = collect(iter(kernels), measurer, out, configs_per_kernel=args.configs_per_kernel,
                          budget_s=args.budget_s, seed=args.seed,
                          precompile=partial(precompile, workers=args.workers), on_kernel=tick)
    result = {"out": str(out), "kernels": summary.kernels, "records": summary.records,
              "failures": summary.failures, "seconds": round(summary.seconds, 1),
              "stopped_by_budget": summary.stopped_by_budget, "by_kind": summary.by_kind,
              "device": summary.device}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        from rich.console import Console

        Console().print(f"wrote {summary.records} records ({summary.failures} failures) from "
                        f"{summary.kernels} kernels to {out} in {summary.seconds:.0f}s")
    return 0 if summary.kernels else 4


def _cpu_items(args: argparse.Namespace) -> Iterator[tuple[str, Any, Any]]:
    """Model-suite kernels first (``--no-suite`` skips them), then generated problems."""
    from .collect_cpu import CPU_KINDS, cpu_specs, spec_items, suite_kernels

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if args.kinds == ",".join(ALL_KINDS):
        kinds = list(CPU_KINDS)
    if not args.no_suite:
        seen: set[str] = set()
        for source, kernel in suite_kernels(args.suite_module):
            if kernel.problem.key() not in seen:
                seen.add(kernel.problem.key())
                yield source, kernel, None
    yield from spec_items(cpu_specs(kinds, args.per_kind, seed=args.seed))


def run_cpu(args: argparse.Namespace) -> int:
    """``tilewright collect --target cpu``: records of the native CPU target, with a repeatability
    report and a metadata file (machine, command, load) next to ``--out``."""
    import sys

    from ..autotune.measure import CpuMeasurer
    from .collect_cpu import collect_cpu, device_extra, repeatability

    measurer = CpuMeasurer(repeats=min(args.repeats, 7), sample_s=1e-3, rounds=max(args.rounds, 1))
    info = measurer.device_info()
    out = Path(args.out or f"data/costmodel/records/cpu-{time.strftime('%Y%m%d-%H%M')}.jsonl")
    if args.dry_run:
        rows = [{"source": s, "kind": k.problem.kind, "dims": k.problem.dims} for s, k, _ in _cpu_items(args)]
        print(json.dumps({"kernels": rows}, indent=1))
        return 0 if rows else 4

    def tick(summary: Any, name: str) -> None:
        log.info("%d kernels, %d records (%s)", summary.kernels, summary.records, name)
        if not args.json:
            print(f"[{summary.kernels}] {summary.records} records  {name}", flush=True)

    summary = collect_cpu(_cpu_items(args), measurer, out, configs_per_kernel=args.configs_per_kernel,
                          budget_s=args.budget_s, seed=args.seed, on_kernel=tick)
    jobs = summary.jobs
    if args.repeat_sample and jobs:
        import random

        jobs = random.Random(args.seed).sample(jobs, min(args.repeat_sample, len(jobs)))
        repeat = repeatability(jobs)
    else:
        repeat = {"pairs": 0, "note": "no repeatability sample requested"}
    meta = {"format": "tilewright-cpu-records", "records": out.name, "command": "tilewright " + " ".join(sys.argv[1:]),
            "device": {k: v for k, v in info.items() if k != "isa"}, "isa": info.get("isa", []),
            "cpu": device_extra(info), "timing": {"measurer": "CpuMeasurer", "repeats": measurer.repeats,
                                                  "sample_s": measurer.sample_s, "max_spread": measurer.max_spread,
                                                  "retries": measurer.retries, "rounds": measurer.rounds},
            "loadavg_start_end": summary.loadavg, "cores_online": os.cpu_count(),
            "kernels": summary.kernels, "records_written": summary.records, "failures": summary.failures,
            "by_kind": summary.by_kind, "seconds": round(summary.seconds, 1),
            "stopped_by_budget": summary.stopped_by_budget, "repeatability": repeat}
    meta_path = out.with_suffix(".meta.json")
    meta_path.write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    result = {"out": str(out), "meta": str(meta_path), "kernels": summary.kernels, "records": summary.records,
              "failures": summary.failures, "by_kind": summary.by_kind,
              "repeatability": {k: v for k, v in repeat.items() if k != "rows"}}
    print(json.dumps(result, indent=1, default=str))
    return 0 if summary.kernels else 4
