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
