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

Timing records whose ``source`` is not ``"gpu"`` are refused (``--allow-synthetic`` replays
them with every number labelled SYNTHETIC): this script never reports made-up numbers as GPU
results. The record format is described in docs/autotune.md.
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
    synthetic = source != "gpu"
    if synthetic and not args.allow_synthetic:
        print(f"{args.record}: timing records come from {source!r}, not from a GPU. No real GPU "
              "records, so no comparison is reported. Record them on a GPU with "
              "`python benchmarks/tuner_replay.py record module:factory --out FILE`.")
        return 2
    device = dict(record.get("device") or {})
    device.setdefault("name", "unknown"), device.setdefault("capability", "unknown")
    device.setdefault("triton_version", "unknown")
    cost_model = None
    if not args.no_costmodel:
        try:
            from tilewright.costmodel.roofline import RooflineModel

            cost_model = RooflineModel()
        except ImportError:
            print("note: no roofline cost model available; skipping tilewright+costmodel")
    tag = "SYNTHETIC (not GPU measurements)" if synthetic else f"GPU {device['name']}"
    results = [run_strategies(e, device, args.seeds, cost_model) for e in record["kernels"]]
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
        Path(args.json_out).write_text(json.dumps({"label": tag, "source": source, "device": device,
                                                   "results": results}, indent=2))
    return 0


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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
