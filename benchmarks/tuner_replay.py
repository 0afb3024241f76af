"""Replay recorded GPU timings to compare how fast tuners get within 2% of the exhaustive best.

Strategies compared, per kernel, on the same recorded table (no GPU needed to replay):

* ``tilewright+costmodel``: the Optuna TPE search with the roofline cost model's favourites
  enqueued first and its ranking filtering proposals;
* ``tilewright``: the same search without the cost model;
* ``random``: configs in a random order;
* ``triton.autotune``: exhaustive: it benchmarks every config before it picks one.

The number reported is the count of measured trials until the best-so-far is within 2% of the
recorded best (mean over seeds). Usage::

    # on a GPU machine: record every feasible config of a model's kernels
    python benchmarks/tuner_replay.py record mypkg.models:gpt2_small --out timings.json
    # anywhere: replay
    python benchmarks/tuner_replay.py replay timings.json [--seeds 5] [--json-out result.json]

On the native CPU target the tables are recorded with ``record-cpu`` (wall-clock timings of
the generated C++ kernels, :class:`~tilewright.autotune.measure.CpuMeasurer`; ``source:
"cpu"``), and replay compares TPE, CMA-ES and random search, each with and without cost-model
seeding (the model's favourites measured first: the roofline, or ``--model`` a trained file)::

    python benchmarks/tuner_replay.py record-cpu --out benchmarks/results/cpu-tuner-tables.json
    python benchmarks/tuner_replay.py replay benchmarks/results/cpu-tuner-tables.json --seeds 10

Timing records whose ``source`` is neither ``"gpu"`` nor ``"cpu"`` are refused
(``--allow-synthetic`` replays them with every number labelled SYNTHETIC): this script never
reports made-up numbers as measurements. The record format is described in docs/autotune.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from tilewright.autotune.measure import ReplayMeasurer, load_record  # noqa: E402
from tilewright.schedule.problem import KernelProblem  # noqa: E402
from tilewright.autotune.search import SearchSettings, run_search  # noqa: E402
from tilewright.schedule.space import Config, ScheduleSpace, config_hash  # noqa: E402

log = logging.getLogger("tuner_replay")
WITHIN = 1.02


@dataclass
class RecordedKernel:
    """A kernel known only through its recorded timings (never compiled here)."""

    name: str
    problem: KernelProblem
    space: ScheduleSpace
    configs: dict[str, Config] = field(default_factory=dict)

    def make_inputs(self, device: str) -> Sequence[Any]:
        raise RuntimeError("recorded kernels cannot run")

    def runner(self, config: Config) -> Callable[[Sequence[Any]], None]:
        raise RuntimeError("recorded kernels cannot run")


def recorded_kernel(entry: dict[str, Any]) -> RecordedKernel:
    """Rebuild a kernel from a record: the space's feasible set is the recorded configs."""
    configs = {h: dict(c) for h, c in entry["configs"].items()}
    known = set(configs)
    sp = entry["space"]
    space = ScheduleSpace(sp["kind"], {k: list(v) for k, v in sp["params"].items()},
                          [lambda c: None if config_hash(c) in known else "not in the record"],
                          default=sp.get("default"), version=str(sp.get("version", "1")))
    p = entry["problem"]
    problem = KernelProblem(p["kind"], p["fingerprint"], dict(p["dims"]), p["dtype"],
                            tuple(p.get("signature", ())), float(p.get("flops", 0)),
                            float(p.get("bytes", 0)), dict(p.get("meta", {})))
    return RecordedKernel(entry["name"], problem, space, configs)


def trials_to_within(history: Sequence[float], best: float) -> int | None:
    """1-based index of the first measured trial within 2% of ``best`` (None: never)."""
    for i, value in enumerate(history):
        if value <= best * WITHIN:
            return i + 1
    return None


def _shuffled_curve(kernel: RecordedKernel, timings: dict[str, Any], seed: int, first: Sequence[str] = ()) -> list[float]:
    """Best-so-far of measuring ``first`` then the remaining configs in a random order."""
    rest = [h for h in kernel.configs if h not in set(first)]
    random.Random(seed).shuffle(rest)
    running, curve = float("inf"), []
    for h in [*first, *rest]:
        t = timings.get(h)
        if isinstance(t, (int, float)):
            running = min(running, t)
        curve.append(running)
    return curve


def run_cpu_strategies(entry: dict[str, Any], device: dict[str, Any], seeds: int,
                       cost_model: Any, topk: int = 5) -> dict[str, Any]:
    """Trials-to-2% of TPE, CMA-ES and random, each with and without cost-model seeding."""
    kernel = recorded_kernel(entry)
    timings = entry["timings"]
    ok = {h: t for h, t in timings.items() if isinstance(t, (int, float)) and h in kernel.configs}
    if not ok:
        return {"kernel": kernel.name, "error": "no successful timing recorded"}
    best = min(ok.values())
    n = len(kernel.configs)
    out: dict[str, Any] = {"kernel": kernel.name, "kind": kernel.problem.kind, "dims": kernel.problem.dims,
                           "configs": n, "best_s": best, "strategies": {}}
    hashes = list(kernel.configs)
    favourites: list[str] = []
    if cost_model is not None:
        scores = cost_model.predict(kernel.problem, [kernel.configs[h] for h in hashes], device)
        favourites = [hashes[i] for i in sorted(range(n), key=lambda i: scores[i])[:topk]]
        default = kernel.space.default
        if default is not None and config_hash(default) in kernel.configs:
            favourites = [config_hash(default), *[h for h in favourites if h != config_hash(default)]]

    def search(sampler: str, seed: int, model: Any) -> int | None:
        settings = SearchSettings(sampler=sampler, trials=n, seed=seed, remeasure_rounds=0, topk=topk,
                                  filter_keep=1.0)
        result = run_search(kernel, ReplayMeasurer(timings, info=device), settings=settings,
                            cost_model=model, device=device)
        return trials_to_within(result.history, best)

    runs: dict[str, Callable[[int], int | None]] = {
        "tpe": lambda s: search("tpe", s, None), "cmaes": lambda s: search("cmaes", s, None),
        "random": lambda s: trials_to_within(_shuffled_curve(kernel, timings, s), best)}
    if cost_model is not None:
        runs.update({"tpe+costmodel": lambda s: search("tpe", s, cost_model),
                     "cmaes+costmodel": lambda s: search("cmaes", s, cost_model),
                     "random+costmodel": lambda s: trials_to_within(
                         _shuffled_curve(kernel, timings, s, favourites), best)})
    for name, fn in runs.items():
        counts = [fn(seed) for seed in range(seeds)]
        reached = [c for c in counts if c is not None]
        out["strategies"][name] = {"mean_trials": statistics.mean(reached) if reached else None,
                                   "median_trials": statistics.median(reached) if reached else None,
                                   "reached": f"{len(reached)}/{seeds}",
                                   "fraction_of_space": statistics.median(reached) / n if reached else None}
    return out


def run_strategies(entry: dict[str, Any], device: dict[str, Any], seeds: int,
                   cost_model: Any) -> dict[str, Any]:
    """Trials-to-2% of every strategy on one recorded kernel."""
    kernel = recorded_kernel(entry)
    timings = entry["timings"]
    ok = {h: t for h, t in timings.items() if isinstance(t, (int, float)) and h in kernel.configs}
    if not ok:
        return {"kernel": kernel.name, "error": "no successful timing recorded"}
    best = min(ok.values())
    n = len(kernel.configs)
    out: dict[str, Any] = {"kernel": kernel.name, "configs": n, "best_s": best, "strategies": {}}

    def search(seed: int, model: Any) -> int | None:
        settings = SearchSettings(trials=n, seed=seed, remeasure_rounds=0)
        result = run_search(kernel, ReplayMeasurer(timings, info=device), settings=settings,
                            cost_model=model, device=device)
        return trials_to_within(result.history, best)

    def shuffled(seed: int) -> int | None:
        order = list(kernel.configs)
        random.Random(seed).shuffle(order)
        running, curve = float("inf"), []
        for h in order:
            t = timings.get(h)
            if isinstance(t, (int, float)):
                running = min(running, t)
            curve.append(running)
        return trials_to_within(curve, best)

    runs: dict[str, Callable[[int], int | None]] = {"tilewright": lambda s: search(s, None),
                                                    "random": shuffled}
    if cost_model is not None:
        runs = {"tilewright+costmodel": lambda s: search(s, cost_model), **runs}
    for name, fn in runs.items():
        counts = [fn(seed) for seed in range(seeds)]
        reached = [c for c in counts if c is not None]
        out["strategies"][name] = {"mean_trials": statistics.mean(reached) if reached else None,
                                   "reached": f"{len(reached)}/{seeds}"}
    out["strategies"]["triton.autotune"] = {"mean_trials": n, "reached": "exhaustive"}
    return out


def replay(args: argparse.Namespace) -> int:
    """The ``replay`` sub-command."""
    record = load_record(args.record)
    source = str(record.get("source", "unknown"))
    synthetic = source not in ("gpu", "cpu")
    if synthetic and not args.allow_synthetic:
        print(f"{args.record}: timing records come from {source!r}, not from a GPU. No real GPU "
              "records, so no comparison is reported. Record them on a GPU with "
              "`python benchmarks/tuner_replay.py record module:factory --out FILE`.")
        return 2
    device = dict(record.get("device") or {})
    device.setdefault("name", "unknown"), device.setdefault("capability", "unknown")
    device.setdefault("triton_version", "unknown")
    cost_model = None
    if args.model and not args.no_costmodel:
        from tilewright.costmodel.gbm import GBMCostModel

        cost_model = GBMCostModel.load(args.model)
    elif not args.no_costmodel:
        try:
            from tilewright.costmodel.roofline import RooflineModel

            cost_model = RooflineModel()
        except ImportError:
            print("note: no roofline cost model available; skipping tilewright+costmodel")
    tag = "SYNTHETIC (not GPU measurements)" if synthetic else f"{source.upper()} {device['name']}"
    run = run_cpu_strategies if source == "cpu" else run_strategies
    results = [run(e, device, args.seeds, cost_model) for e in record["kernels"]]
    print(f"trials to come within 2% of the exhaustive best - {tag}")
    names = list(next((r["strategies"] for r in results if "strategies" in r), {}))
    print(f"{'kernel':<32} {'configs':>7} " + " ".join(f"{n:>21}" for n in names))
    for r in results:
        if "error" in r:
            print(f"{r['kernel']:<32} {r['error']}")
            continue
        cells = []
        for n in names:
            s = r["strategies"][n]
            mean = "never" if s["mean_trials"] is None else f"{s['mean_trials']:.1f}"
            cells.append(f"{mean + ' (' + s['reached'] + ')':>21}")
        print(f"{r['kernel']:<32} {r['configs']:>7} " + " ".join(cells))
    if args.json_out:
        model_name = "none" if cost_model is None else (args.model or "roofline")
        summary = _median_summary(results)
        print("median over kernels of the median trials to within 2% (share of the space): " + ", ".join(
            f"{k} {v['median_trials']} ({v['median_fraction']:.0%})" for k, v in summary.items()
            if v["median_trials"] is not None))
        Path(args.json_out).write_text(json.dumps({"label": tag, "source": source, "device": device,
                                                   "cost_model": model_name, "seeds": args.seeds,
                                                   "summary": summary, "results": results}, indent=2))
    return 0


def _median_summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per strategy: median over kernels of the median trials to 2% and of the share of the space
    (a kernel where the strategy never came within 2% counts as its whole space)."""
    out: dict[str, Any] = {}
    rows = [r for r in results if "strategies" in r]
    for name in (rows[0]["strategies"] if rows else {}):
        trials = [r["strategies"][name].get("median_trials", r["strategies"][name]["mean_trials"]) for r in rows]
        # a strategy that never got within 2% counts as the whole space (its share as 100%)
        filled = [t if t is not None else r["configs"] for t, r in zip(trials, rows)]
        fracs = [t / r["configs"] for t, r in zip(filled, rows)]
        out[name] = {"median_trials": statistics.median(filled) if filled else None,
                     "median_fraction": statistics.median(fracs) if fracs else 1.0,
                     "kernels_reached": f"{sum(t is not None for t in trials)}/{len(rows)}"}
    return out


#: Kernels measured whole for the CPU replay: small spaces (attention blocks, scatter, pointwise,
#: gather) and GEMMs, whose ~10^4-config spaces are replayed on a random 64-config subspace.
CPU_TABLE_SPECS: list[tuple[str, dict[str, int], dict[str, Any]]] = [
    ("attention", {"B": 1, "H": 4, "M": 256, "N": 256, "D": 64}, {"causal": False}),
    ("attention", {"B": 2, "H": 2, "M": 384, "N": 384, "D": 32}, {"causal": True}),
    ("attention", {"B": 1, "H": 8, "M": 128, "N": 128, "D": 40}, {"causal": False}),
    ("scatter", {"rows": 5000, "dim": 64, "n": 4096}, {}),
    ("pointwise", {"numel": 1 << 20}, {"n_inputs": 2, "op": "gelu"}),
    ("gather", {"vocab": 20000, "dim": 256, "n": 2048}, {}),
    ("matmul", {"B": 1, "M": 256, "N": 384, "K": 320}, {"epilogue_ops": ["bias"]}),
    ("matmul", {"B": 1, "M": 97, "N": 200, "K": 512}, {"epilogue_ops": []}),
]


def record_cpu(args: argparse.Namespace) -> int:
    """The ``record-cpu`` sub-command: time every config (a 64-config sample of GEMM spaces) of a
    few native CPU kernels, two passes in opposite orders, keeping each config's faster median."""
    import os

    from tilewright.autotune.measure import CpuMeasurer
    from tilewright.costmodel.collect import ProblemSpec
    from tilewright.commands.collect_cpu import device_extra, kernels_of_spec

    measurer = CpuMeasurer(repeats=5, sample_s=1e-3)
    info = measurer.device_info()
    out: dict[str, Any] = {"format": "tilewright-timings", "source": "cpu", "device": info, "kernels": [],
                           "cpu": device_extra(info), "loadavg_start": list(os.getloadavg()),
                           "method": "CpuMeasurer(repeats=5, sample_s=1e-3), every config twice (forward "
                                     "then reverse order), the smaller median kept"}
    rng = random.Random(0)
    for kind, dims, meta in CPU_TABLE_SPECS[: args.max_kernels]:
        kernel = kernels_of_spec(ProblemSpec(kind, dims, "float32", meta))[0]
        configs = list(kernel.space.enumerate())
        if len(configs) > args.max_configs:
            default = kernel.space.default_config()
            configs = [default, *rng.sample([c for c in configs if c != default], args.max_configs - 1)]
        first = measurer.measure(kernel, configs)
        second = list(reversed(measurer.measure(kernel, list(reversed(configs)))))
        timings: dict[str, Any] = {}
        for a, b in zip(first, second):
            times = [r.time_s for r in (a, b) if r.ok]
            timings[a.config_hash] = min(times) if times else (a.error or b.error)
        out["kernels"].append({
            "name": f"{kind}-" + "x".join(str(v) for v in kernel.problem.dims.values()),
            "problem_key": kernel.problem.key(), "problem": kernel.problem.to_dict(),
            "space": {"kind": kernel.space.kind, "params": kernel.space.params, "version": kernel.space.version,
                      "default": kernel.space.default_config()},
            "configs": {r.config_hash: r.config for r in first}, "timings": timings,
            "pass_agreement": _pass_agreement(first, second)})
        print(f"{kind} {kernel.problem.dims}: {len(configs)} configs, {sum(r.ok for r in first)} ran", flush=True)
    out["loadavg_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    return 0


def _pass_agreement(first: Sequence[Any], second: Sequence[Any]) -> dict[str, float]:
    """Median |log ratio| of the two passes and the share of configs within 10%."""
    import math

    dev = [abs(math.log(b.time_s / a.time_s)) for a, b in zip(first, second) if a.ok and b.ok]
    if not dev:
        return {}
    return {"median_abs_log_ratio": statistics.median(dev),
            "within_10pct": sum(d <= math.log(1.1) for d in dev) / len(dev)}


def record(args: argparse.Namespace) -> int:
    """The ``record`` sub-command: time every feasible config of a model's kernels on a GPU."""
    import torch

    from tilewright.schedule.device import device_info
    from tilewright.autotune.measure import CudaMeasurer
    from tilewright.autotune.tuner import load_kernels

    if not torch.cuda.is_available():
        print("record needs a CUDA GPU; none is available here. Nothing recorded.")
        return 2
    measurer = CudaMeasurer(repeats=args.repeats)
    out: dict[str, Any] = {"format": "tilewright-timings", "source": "gpu",
                           "device": device_info("cuda"), "kernels": []}
    for kernel in load_kernels(args.target):
        configs = list(kernel.space.enumerate())[: args.max_configs]
        results = measurer.measure(kernel, configs)
        out["kernels"].append({
            "name": kernel.name, "problem_key": kernel.problem.key(),
            "problem": kernel.problem.to_dict(),
            "space": {"kind": kernel.space.kind, "params": kernel.space.params,
                      "version": kernel.space.version, "default": kernel.space.default_config()},
            "configs": {r.config_hash: r.config for r in results},
            "timings": {r.config_hash: (r.time_s if r.ok else r.error) for r in results}})
        print(f"{kernel.name}: {len(results)} configs, {sum(r.ok for r in results)} ran")
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rp = sub.add_parser("replay", help="compare strategies on a timing-record file")
    rp.add_argument("record")
    rp.add_argument("--seeds", type=int, default=5)
    rp.add_argument("--no-costmodel", action="store_true")
    rp.add_argument("--model", default=None, help="trained cost-model file for the seeded strategies "
                                                   "(default: the roofline)")
    rp.add_argument("--allow-synthetic", action="store_true",
                    help="replay non-GPU records too, labelled SYNTHETIC")
    rp.add_argument("--json-out", default=None)
    rp.set_defaults(func=replay)
    rc = sub.add_parser("record", help="record every config's GPU time (needs CUDA)")
    rc.add_argument("target", help="module:factory (as for `tilewright autotune`)")
    rc.add_argument("--out", required=True)
    rc.add_argument("--repeats", type=int, default=20)
    rc.add_argument("--max-configs", type=int, default=2000)
    rc.set_defaults(func=record)
    rcc = sub.add_parser("record-cpu", help="record the CPU tables of CPU_TABLE_SPECS (native CPU target)")
    rcc.add_argument("--out", required=True)
    rcc.add_argument("--max-configs", type=int, default=64)
    rcc.add_argument("--max-kernels", type=int, default=len(CPU_TABLE_SPECS))
    rcc.set_defaults(func=record_cpu)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
