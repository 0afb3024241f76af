"""The noise ceiling of CPU cost-model labels: the same configs measured in two processes.

Rebuilds generated problems of every CPU kind (``tilewright collect``'s generators, same seed
as a committed record file, so most problems are the committed ones and their configs are the
committed configs), then measures every config in two separate Python processes, one after
the other, each with :class:`tilewright.autotune.measure.CpuMeasurer` in interleaved rounds
(``--rounds``; every round's median is kept in the record's ``device_extra["round_medians"]``).
Both runs are written as ordinary records (they are training data too). The report
(:func:`tilewright.costmodel.noise.ceilings_by_label`) gives, per label statistic (first round
only = what one plain measurement gives; smallest round median = the robust label), the
Spearman ρ, top-1 regret and top-5 recall that ranking by one run reaches against the other:
what a perfect model could reach against one noisy measurement. With ``--committed`` it also
compares the new runs with the committed records of the same problems and configs.

    python -m benchmarks.cpu_noise_ceiling --out-dir data/costmodel_cpu --name epyc-rounds \\
        --json benchmarks/results/cpu-costmodel/noise-ceiling.json \\
        --committed data/costmodel_cpu/records-random.jsonl

Report the load average with it (it is in the JSON): a shared machine is what is measured.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

KINDS = "matmul,attention,pointwise,reduction,gather,scatter"


def _committed_configs(paths: list[str]) -> dict[str, list[dict[str, Any]]]:
    from tilewright.costmodel.records import read_records

    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for rec in read_records(*paths) if paths else []:
        out[rec.problem_key][rec.config_hash] = rec.config
    return {k: list(v.values()) for k, v in out.items()}


def measure_run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One process's run: rebuild the problems, measure their configs in rounds, append records."""
    from tilewright.autotune.measure import CpuMeasurer
    from tilewright.commands.collect_cpu import cpu_sample_configs, cpu_specs, kernels_of_spec, measure_kernel
    from tilewright.costmodel.records import write_records

    kinds = args.kinds.split(",")
    committed = _committed_configs(args.committed)
    measurer = CpuMeasurer(repeats=args.repeats, sample_s=1e-3, rounds=args.rounds)
    info = dict(measurer.device_info())
    taken: dict[str, int] = defaultdict(int)
    start, load = time.monotonic(), [list(os.getloadavg())]
    for i, spec in enumerate(cpu_specs(kinds, args.per_kind, seed=args.seed)):
        if taken[spec.kind] >= args.groups_per_kind or time.monotonic() - start > args.budget_s:
            continue
        try:
            kernels = kernels_of_spec(spec)
        except Exception as exc:  # noqa: BLE001 - a problem that does not build is skipped
            log.info("%s %s not built: %s", spec.kind, spec.dims, exc)
            continue
        if not kernels:
            continue
        kernel = kernels[0]
        configs = committed.get(kernel.problem.key()) or cpu_sample_configs(
            kernel.space, args.configs_per_kernel, random.Random(args.seed * 1000 + i))
        records = measure_kernel(kernel, configs, measurer, info, f"cpu:random:{spec.kind}")
        write_records(out, records, append=True)
        taken[spec.kind] += 1
        print(f"[{sum(taken.values())}] {spec.kind} {spec.dims}: {len(records)} configs", flush=True)
    load.append(list(os.getloadavg()))
    return {"seconds": round(time.monotonic() - start, 1), "loadavg_start_end": load, "groups": dict(taken)}


def main(argv: list[str] | None = None) -> int:
    """Run two measuring processes and write the ceiling report."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=Path("data/costmodel_cpu"))
    p.add_argument("--name", default="noise", help="records go to OUT_DIR/records-NAME-{a,b}.jsonl")
    p.add_argument("--json", type=Path, required=True, help="the report")
    p.add_argument("--committed", nargs="*", default=[], help="committed record files (configs reused, compared)")
    p.add_argument("--kinds", default=KINDS)
    p.add_argument("--per-kind", type=int, default=40, help="as the committed collection (same problems)")
    p.add_argument("--seed", type=int, default=1, help="as the committed collection (same problems)")
    p.add_argument("--groups-per-kind", type=int, default=6)
    p.add_argument("--configs-per-kernel", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--budget-s", type=float, default=400.0, help="per process: no new problem after this")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        info = measure_run(args, args.child)
        args.child.with_suffix(".run.json").write_text(json.dumps(info))
        return 0
    runs = {}
    for side in ("a", "b"):
        out = args.out_dir / f"records-{args.name}-{side}.jsonl"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.cpu_noise_ceiling", *(argv if argv is not None else sys.argv[1:]),
               "--child", str(out)]
        subprocess.run(cmd, check=True)
        runs[side] = json.loads(out.with_suffix(".run.json").read_text())
        out.with_suffix(".run.json").unlink()
    report = summarize_runs(args, runs)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    for label, c in report["a_vs_b"].items():
        o = c["overall"]
        print(f"{label:18s} rho {o['spearman']:.3f} (perfect-model estimate {c['spearman_perfect_estimate']:.3f}) "
              f"top-5 {o['top5_recall']:.1%} regret median {o['top1_regret_median']:.1%} over {c['groups']} problems")
    return 0


def summarize_runs(args: argparse.Namespace, runs: dict[str, Any]) -> dict[str, Any]:
    """The report: ceilings by label between the two runs, and each run against the committed records."""
    from tilewright.costmodel.noise import ceilings_by_label, is_disturbed, label_table, paired_ceiling
    from tilewright.costmodel.records import read_records

    a = read_records(args.out_dir / f"records-{args.name}-a.jsonl")
    b = read_records(args.out_dir / f"records-{args.name}-b.jsonl")
    report: dict[str, Any] = {
        "command": "python -m benchmarks.cpu_noise_ceiling " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d"), "device": a[0].device_name if a else None, "runs": runs,
        "rounds": args.rounds, "repeats": args.repeats,
        "records": {"a": len(a), "b": len(b)},
        "disturbed": {"a": sum(is_disturbed(r) for r in a if r.ok), "b": sum(is_disturbed(r) for r in b if r.ok)},
        "a_vs_b": _strip(ceilings_by_label(a, b)),
    }
    if args.committed:
        old = read_records(*args.committed)
        kinds = {r.problem_key: r.kind for r in old}
        report["committed_vs_a"] = _strip({"first_round": paired_ceiling(
            label_table(old, "first_round"), label_table(a, "first_round"), kinds)})
        report["committed_device"] = old[0].device_name if old else None
    return report


def _strip(ceilings: dict[str, Any]) -> dict[str, Any]:
    """Per-problem rows kept, rounded."""
    return {k: {**v, "rows": [{**r, "spearman": round(r["spearman"], 4)} for r in v["rows"]]}
            for k, v in ceilings.items()}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    raise SystemExit(main())
