"""Collect cost-model records on the native CPU target (`tilewright collect --target cpu`).

Kernels come from problem generators with varied shapes (:func:`cpu_specs`, built by
compiling a small torch function for the CPU target, so they are exactly what the compiler
generates) and from a model suite (``module:MODELS``, by default the test model zoo). For
each kernel the default config, the extremes of every parameter and random feasible configs
are measured with :class:`~tilewright.autotune.measure.CpuMeasurer`; records carry the CPU's
description (``device_extra``) and the load average, and their device capability is
``cpu:<digest of ISA flags and compiler>`` so they never mix with GPU or interpreter records.

:func:`repeatability` measures a sample of the same configs again in a fresh process and
reports how well the two agree.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..schedule.space import Config, ScheduleSpace, config_hash
from ..costmodel.collect import CollectSummary, ProblemSpec, sample_configs
from ..costmodel.records import Record, write_records

log = logging.getLogger(__name__)

CPU_KINDS = ("pointwise", "reduction", "matmul", "attention", "gather", "scatter")


def _logint(rng: random.Random, lo: int, hi: int) -> int:
    return max(lo, min(hi, round(math.exp(rng.uniform(math.log(lo), math.log(hi))))))


def cpu_spec(kind: str, rng: random.Random) -> ProblemSpec:
    """A random CPU problem of ``kind``: odd and round sizes, small enough for a loaded 2-core machine."""
    if kind == "pointwise":
        return ProblemSpec(kind, {"numel": _logint(rng, 1 << 10, 1 << 22)}, "float32",
                           {"n_inputs": rng.randint(1, 3), "op": rng.choice(["add", "mul", "gelu", "silu", "tanh"])})
    if kind == "reduction":
        rows, cols = _logint(rng, 1, 4096), _logint(rng, 16, 8192)
        while rows * cols > (1 << 22):
            rows = max(1, rows // 2)
        return ProblemSpec(kind, {"rows": rows, "rnumel": cols}, "float32",
                           {"op": rng.choice(["sum", "max", "softmax", "layernorm", "column_sum"])})
    if kind == "matmul":
        dims = {"B": rng.choice([1, 1, 1, 4]), "M": _logint(rng, 8, 768), "N": _logint(rng, 8, 768),
                "K": _logint(rng, 8, 768)}
        return ProblemSpec(kind, dims, "float32", {"epilogue_ops": rng.sample(["bias", "relu", "gelu", "add"],
                                                                              rng.randint(0, 2))})
    if kind == "attention":
        seq = _logint(rng, 16, 512)
        dims = {"B": rng.choice([1, 2]), "H": rng.choice([1, 2, 4, 8]), "M": seq, "N": seq,
                "D": rng.choice([16, 32, 40, 64])}
        return ProblemSpec(kind, dims, "float32", {"causal": rng.random() < 0.5})
    if kind == "gather":
        return ProblemSpec(kind, {"vocab": _logint(rng, 64, 50000), "dim": _logint(rng, 8, 1024),
                                  "n": _logint(rng, 8, 4096)}, "float32", {})
    if kind == "scatter":
        return ProblemSpec(kind, {"rows": _logint(rng, 16, 20000), "dim": _logint(rng, 4, 512),
                                  "n": _logint(rng, 8, 8192)}, "float32", {})
    raise ValueError(f"no CPU problem generator for kind {kind!r}")


_ACT = {"gelu": "gelu", "silu": "silu", "tanh": "tanh", "relu": "relu"}


def _program(spec: ProblemSpec) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """A torch function and inputs whose compiled graph holds a kernel of ``spec.kind``."""
    import torch
    import torch.nn.functional as F

    d, m = spec.dims, spec.meta
    act = {"gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh, "relu": torch.relu}
    if spec.kind == "pointwise":
        op = m.get("op", "add")
        xs = tuple(torch.randn(d["numel"]) for _ in range(int(m.get("n_inputs", 2))))

        def pw(*a: Any) -> Any:
            acc = a[0]
            for t in a[1:]:
                acc = acc * t if op == "mul" else acc + t
            return act[op](acc) if op in act else acc * 1.5
        return pw, xs
    if spec.kind == "reduction":
        x = torch.randn(d["rows"], d["rnumel"])
        fns = {"sum": lambda t: t.sum(-1), "max": lambda t: t.amax(-1), "softmax": lambda t: torch.softmax(t, -1),
               "layernorm": lambda t: F.layer_norm(t, (t.shape[-1],)), "column_sum": lambda t: t.sum(0)}
        return fns[m.get("op", "sum")], (x,)
    if spec.kind == "matmul":
        b, mm, n, k = d.get("B", 1), d["M"], d["N"], d["K"]
        lead = [b] if b > 1 else []
        ops = list(m.get("epilogue_ops", []))

        def mmf(a: Any, w: Any, bias: Any, res: Any) -> Any:
            out = a @ w
            for o in ops:
                out = out + bias if o == "bias" else out + res if o == "add" else act[o](out)
            return out
        return mmf, (torch.randn(*lead, mm, k), torch.randn(*lead, k, n), torch.randn(n), torch.randn(*lead, mm, n))
    if spec.kind == "attention":
        shape = (d["B"], d["H"], d["M"], d["D"])
        causal = bool(m.get("causal"))
        return (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                (torch.randn(shape), torch.randn(shape), torch.randn(shape)))
    if spec.kind == "gather":
        return (lambda w, i: w[i] * 2.0, (torch.randn(d["vocab"], d["dim"]), torch.randint(0, d["vocab"], (d["n"],))))
    if spec.kind == "scatter":
        return (lambda x, i, v: torch.index_put(x, (i,), v, accumulate=True),
                (torch.randn(d["rows"], d["dim"]), torch.randint(0, d["rows"], (d["n"],)), torch.randn(d["n"], d["dim"])))
    raise ValueError(f"no CPU program for kind {spec.kind!r}")


@contextlib.contextmanager
def cpu_target() -> Iterator[None]:
    """Compile for the native CPU target inside the block (Dynamo's cache reset on entry)."""
    import torch

    import tilewright

    old = tilewright.config.target
    tilewright.config.target = "cpu"
    torch._dynamo.reset()
    try:
        yield
    finally:
        tilewright.config.target = old


def kernels_of_spec(spec: ProblemSpec) -> list[Any]:
    """The tunable CPU kernels of ``spec``'s program (the one of its kind first; others follow)."""
    from ..frontend.api import tunable_kernels

    fn, inputs = _program(spec)
    with cpu_target():
        kernels = [k for k in tunable_kernels(fn, inputs) if k.problem.meta.get("target") == "cpu"]
    return sorted(kernels, key=lambda k: (k.problem.kind != spec.kind, -k.problem.bytes))


def cpu_specs(kinds: Sequence[str], per_kind: int, seed: int = 0) -> list[ProblemSpec]:
    """``per_kind`` random specs of each kind, kinds interleaved, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [cpu_spec(kind, rng) for _ in range(per_kind) for kind in kinds]


def suite_kernels(module: str = "tests.models.model_zoo") -> Iterator[tuple[str, Any]]:
    """``(source, kernel)`` for the CPU kernels of every model in ``module.MODELS`` (forward pass)."""
    import importlib

    from ..frontend.api import tunable_kernels

    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        zoo = importlib.import_module(module)
    except ImportError as exc:
        log.warning("model suite %s not importable (%s); collecting generated problems only", module, exc)
        return
    import torch

    for name, factory in getattr(zoo, "MODELS", {}).items():
        torch.manual_seed(0)
        try:
            model, inputs, _ = factory()
            with cpu_target():
                kernels = tunable_kernels(model.eval(), inputs)
        except Exception as exc:  # noqa: BLE001 - one model failing must not stop collection
            log.warning("model suite: %s skipped: %s", name, exc)
            continue
        for kernel in kernels:
            if kernel.problem.meta.get("target") == "cpu":
                yield f"cpu:model:{name}", kernel


def cpu_sample_configs(space: ScheduleSpace, n: int, rng: random.Random) -> list[Config]:
    """Default, per-parameter extremes (the rest at the default) and random feasible configs, up to ``n``.

    Small spaces (``<= n`` configs) are measured whole.
    """
    out: dict[str, Config] = {}
    try:
        default = space.default_config()
    except Exception:  # noqa: BLE001 - a space without a default is sampled at random only
        default = None
    if default is not None:
        out[config_hash(default)] = default
        for name, values in space.params.items():
            for value in (values[0], values[-1]):
                cand = {**default, name: value}
                if space.is_feasible(cand):
                    out.setdefault(config_hash(cand), cand)
    for config in sample_configs(space, n, rng):
        if len(out) >= n:
            break
        out.setdefault(config_hash(config), config)
    return list(out.values())[:n]


def clock_hz() -> float:
    """This CPU's nominal clock from /proc/cpuinfo ("cpu MHz"), 0.0 when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":")[1]) * 1e6
    except (OSError, ValueError):
        pass
    return 0.0


def device_extra(info: dict[str, Any]) -> dict[str, Any]:
    """What a CPU record keeps of the device info: the description features need, and the load."""
    keep = ("model", "cores", "simd_bytes", "machine", "l1d_bytes", "l2_bytes", "l3_bytes", "isa", "compiler", "native")
    extra = {k: info[k] for k in keep if k in info}
    extra["clock_hz"] = clock_hz()
    extra["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return extra


@dataclass
class CpuCollectSummary(CollectSummary):
    """What a CPU collection run did: :class:`CollectSummary` plus the load and the jobs measured."""

    loadavg: list[float] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)


def measure_kernel(kernel: Any, configs: Sequence[Config], measurer: Any, info: dict[str, Any],
                   source: str) -> list[Record]:
    """Records of ``configs`` of ``kernel`` (a failure is a record too)."""
    extra = device_extra(info)
    try:
        results = list(measurer.measure(kernel, list(configs)))
    except Exception as exc:  # noqa: BLE001 - a kernel that cannot be built: one failed record per config
        return [Record.measured(kernel.problem, c, info, failure=f"{type(exc).__name__}: {exc}"[:300],
                                triton_version="none", space_version=str(kernel.space.version), source=source,
                                device_extra=extra) for c in configs]
    rounds = getattr(measurer, "round_medians", {}) if getattr(measurer, "rounds", 1) > 1 else {}
    out = []
    for r in results:
        marks = {}
        if r.ok and rounds.get(r.config_hash):
            # the label is the smallest round median (robust to stalls); every round's median is kept
            marks = {"round_medians": rounds[r.config_hash], "label": "min_of_rounds",
                     "disturbed": r.config_hash in getattr(measurer, "disturbed", set())}
        rec = Record.measured(kernel.problem, dict(r.config), info, times_s=list(r.times or ()),
                              failure=r.error, triton_version="none", space_version=str(kernel.space.version),
                              source=source, device_extra={**extra, **marks})
        out.append(dataclasses.replace(rec, time_median_s=r.time_s) if marks else rec)
    return out


def collect_cpu(items: Iterator[tuple[str, Any, dict[str, Any] | None]], measurer: Any, out: str | Path, *,
                configs_per_kernel: int = 16, budget_s: float | None = None, seed: int = 0,
                on_kernel: Callable[[CpuCollectSummary, str], None] | None = None) -> CpuCollectSummary:
    """Measure sampled configs of each ``(source, kernel, spec-or-None)`` and append records to ``out``."""
    rng = random.Random(seed)
    info = dict(measurer.device_info())
    summary = CpuCollectSummary(loadavg=[round(x, 2) for x in os.getloadavg()])
    start = time.monotonic()
    for source, kernel, spec in items:
        elapsed = time.monotonic() - start
        if budget_s is not None and summary.kernels and elapsed * (1 + 1.2 / summary.kernels) > budget_s:
            summary.stopped_by_budget = True
            break
        configs = cpu_sample_configs(kernel.space, configs_per_kernel, rng)
        records = measure_kernel(kernel, configs, measurer, info, source)
        write_records(out, records, append=True)
        summary.kernels += 1
        summary.records += len(records)
        summary.failures += sum(not r.ok for r in records)
        summary.by_kind[kernel.problem.kind] = summary.by_kind.get(kernel.problem.kind, 0) + 1
        if spec is not None:
            ok = [r for r in records if r.ok]
            for rec in rng.sample(ok, min(2, len(ok))):
                summary.jobs.append({"spec": asdict(spec), "problem_key": rec.problem_key, "config": rec.config,
                                     "time_s": rec.time_median_s})
        if on_kernel:
            on_kernel(summary, f"{source} {kernel.problem.kind} {kernel.problem.dims}")
    summary.seconds = time.monotonic() - start
    summary.loadavg += [round(x, 2) for x in os.getloadavg()]
    return summary


def spec_items(specs: Sequence[ProblemSpec]) -> Iterator[tuple[str, Any, dict[str, Any] | None]]:
    """``(source, kernel, spec)`` for each spec's kernel of its own kind (specs that fail are skipped)."""
    for spec in specs:
        try:
            kernels = kernels_of_spec(spec)
        except Exception as exc:  # noqa: BLE001
            log.info("CPU %s %s not built: %s", spec.kind, spec.dims, exc)
            continue
        if kernels:
            yield f"cpu:random:{spec.kind}", kernels[0], spec


def remeasure(jobs: Sequence[dict[str, Any]], measurer: Any) -> list[dict[str, Any]]:
    """Measure each job's config again (in this process); rows with ``first`` and ``second`` time."""
    rows = []
    for job in jobs:
        spec = ProblemSpec(**job["spec"])
        try:
            kernels = [k for k in kernels_of_spec(spec) if k.problem.key() == job["problem_key"]]
        except Exception as exc:  # noqa: BLE001
            log.info("repeat: %s not rebuilt: %s", spec.dims, exc)
            continue
        if not kernels:
            continue
        res = measurer.measure(kernels[0], [job["config"]])[0]
        if res.ok:
            rows.append({"problem_key": job["problem_key"], "kind": spec.kind, "first": job["time_s"],
                         "second": res.time_s})
    return rows


def agreement(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How two measurements of the same configs agree: |log ratio| statistics and shares within 5/10/25%."""
    ratios = [r["second"] / r["first"] for r in rows if r["first"] and r["second"]]
    if not ratios:
        return {"pairs": 0}
    dev = [abs(math.log(x)) for x in ratios]
    return {"pairs": len(ratios), "median_ratio": statistics.median(ratios),
            "median_abs_log_ratio": statistics.median(dev),
            "within_5pct": sum(d <= math.log(1.05) for d in dev) / len(dev),
            "within_10pct": sum(d <= math.log(1.10) for d in dev) / len(dev),
            "within_25pct": sum(d <= math.log(1.25) for d in dev) / len(dev),
            "worst_ratio": max(ratios, key=lambda x: abs(math.log(x)))}


def repeatability(jobs: Sequence[dict[str, Any]], *, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Re-measure ``jobs`` in a fresh Python process and report the agreement with the first timings."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "jobs.json", Path(tmp) / "rows.json"
        src.write_text(json.dumps(list(jobs)))
        proc = subprocess.run([sys.executable, "-m", "tilewright.commands.collect_cpu", str(src), str(dst)],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0 or not dst.exists():
            return {"pairs": 0, "error": (proc.stderr or "no output")[-500:]}
        rows = json.loads(dst.read_text())
    report = agreement(rows)
    report["method"] = ("the same (kernel, config) measured again in a separate Python process "
                        "(kernel rebuilt from its problem spec) after the collection")
    report["rows"] = rows
    return report


def _main(argv: Sequence[str]) -> int:
    """``python -m tilewright.commands.collect_cpu JOBS OUT``: the second process of :func:`repeatability`."""
    from ..autotune.measure import CpuMeasurer

    jobs = json.loads(Path(argv[0]).read_text())
    rows = remeasure(jobs, CpuMeasurer(repeats=5, sample_s=1e-3))
    Path(argv[1]).write_text(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
