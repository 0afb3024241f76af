"""Collect cost-model training records on a GPU within a time budget.

Kernels come from two places, both handed in by the caller: random problem shapes of every
kernel kind (built from a :class:`ProblemSpec` by the kind's builder) and the kernels of a model
suite (``tilewright collect`` takes both from :mod:`tilewright.autotune.kernel_zoo`).
For each kernel a spread of configs is sampled across its whole schedule space (not only the
good ones, the default always included), compiled in parallel worker processes while the
previous kernel is being timed, measured with the autotuner's measurer and appended to a
JSON Lines file kernel by kernel, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol, Sequence

from ..schedule.problem import TunableKernel
from ..schedule.space import Config, ScheduleSpace, config_hash
from .records import Record, write_records

log = logging.getLogger(__name__)

#: Upper bound on configs enumerated when sampling a space.
MAX_ENUMERATE = 50_000


@dataclass(frozen=True)
class ProblemSpec:
    """A random problem to build a kernel for: kind, dims, dtype and kind-specific meta."""

    kind: str
    dims: dict[str, int]
    dtype: str
    meta: dict[str, Any] = field(default_factory=dict)


class MeasurerLike(Protocol):
    """What collection needs from :class:`tilewright.autotune.measure.Measurer`."""

    def device_info(self) -> dict[str, Any]:
        """The device timings are taken on."""
        ...

    def measure(self, kernel: TunableKernel, configs: Sequence[Config]) -> list[Any]:
        """One result per config with ``config``, ``times``, ``time_s`` and ``error``."""
        ...


def _loguniform_int(rng: random.Random, lo: int, hi: int, odd_prob: float = 0.2, multiple: int = 1) -> int:
    value = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    if rng.random() >= odd_prob and multiple > 1:
        value = max(multiple, value // multiple * multiple)
    return max(lo, min(hi, value))


_DTYPES = ("float16", "bfloat16", "float32")


def random_spec(kind: str, rng: random.Random) -> ProblemSpec:
    """A random problem of ``kind`` with realistic and odd sizes (not only powers of two)."""
    dtype = rng.choice(_DTYPES)
    if kind == "pointwise":
        return ProblemSpec(kind, {"numel": _loguniform_int(rng, 1 << 10, 1 << 26, multiple=128)}, dtype,
                           {"n_inputs": rng.randint(1, 3), "op": rng.choice(["add", "mul", "gelu", "silu"])})
    if kind == "reduction":
        rnumel = _loguniform_int(rng, 32, 32768, multiple=32)
        return ProblemSpec(kind, {"rows": _loguniform_int(rng, 1, 32768, multiple=8), "rnumel": rnumel},
                           dtype, {"op": rng.choice(["sum", "max", "softmax", "layernorm"])})
    if kind == "matmul":
        dims = {"B": rng.choice([1, 1, 1, 2, 8]), "M": _loguniform_int(rng, 16, 8192, multiple=16),
                "N": _loguniform_int(rng, 16, 8192, multiple=64), "K": _loguniform_int(rng, 16, 8192, multiple=64)}
        ops = rng.sample(["bias", "relu", "gelu", "add", "mul"], rng.randint(0, 2))
        return ProblemSpec(kind, dims, rng.choice(["float16", "bfloat16", "float16", "float32"]),
                           {"epilogue_ops": ops})
    if kind == "attention":
        seq = _loguniform_int(rng, 64, 8192, multiple=64)
        dims = {"B": rng.choice([1, 2, 4, 8]), "H": rng.choice([4, 8, 12, 16, 32]), "M": seq,
                "N": seq, "D": rng.choice([32, 64, 64, 128])}
        return ProblemSpec(kind, dims, rng.choice(["float16", "bfloat16"]), {"causal": rng.random() < 0.5})
    if kind == "conv":
        hw = rng.choice([7, 14, 28, 56, 112])
        r = rng.choice([1, 3, 3, 5, 7]) if hw > 7 else rng.choice([1, 3])
        c, k = rng.choice([3, 32, 64, 128, 256, 512]), rng.choice([32, 64, 128, 256, 512])
        groups = 1
        if rng.random() < 0.15:  # depthwise
            c = k = groups = rng.choice([32, 64, 128, 256])
        dims = {"N": rng.choice([1, 8, 32]), "C": c, "H": hw, "W": hw, "K": k, "R": r, "S": r,
                "stride": rng.choice([1, 1, 2]), "padding": r // 2, "dilation": 1, "groups": groups}
        return ProblemSpec(kind, dims, rng.choice(["float16", "float32"]),
                           {"bias": rng.random() < 0.5, "channels_last": rng.random() < 0.5})
    raise ValueError(f"no random problem generator for kind {kind!r}")


def sample_configs(space: ScheduleSpace, n: int, rng: random.Random) -> list[Config]:
    """Up to ``n`` distinct feasible configs spread over ``space``, the default first.

    Enumerates the space when it is small enough and samples uniformly; otherwise draws
    random parameter combinations and keeps the feasible ones.
    """
    out: dict[str, Config] = {}
    try:
        default = space.default_config()
        out[config_hash(default)] = default
    except Exception as exc:  # a space without a feasible default still gets sampled
        log.debug("space %s has no default: %s", space.kind, exc)
    pool: list[Config] = []
    for config in space.enumerate():
        pool.append(config)
        if len(pool) > MAX_ENUMERATE:
            pool = []
            break
    if pool:
        rng.shuffle(pool)
        for config in pool:
            if len(out) >= n:
                break
            out.setdefault(config_hash(config), config)
    else:
        for _ in range(n * 50):
            if len(out) >= n:
                break
            config = {k: rng.choice(v) for k, v in space.params.items()}
            if space.is_feasible(config):
                out.setdefault(config_hash(config), config)
    return list(out.values())[:n]


def random_kernels(kinds: Sequence[str], per_kind: int, builders: Mapping[str, Callable[[ProblemSpec], TunableKernel]],
                   seed: int = 0) -> Iterator[tuple[str, TunableKernel]]:
    """``(source, kernel)`` for ``per_kind`` random problems of each kind, kinds interleaved.

    ``builders`` maps a kind to the function building its kernel from a :class:`ProblemSpec`
    (:data:`tilewright.autotune.kernel_zoo.SPEC_BUILDERS`). Kinds without a builder are skipped
    with a log line; a spec the builder rejects is skipped too.
    """
    rng = random.Random(seed)
    resolved: dict[str, Callable[[ProblemSpec], TunableKernel]] = {}
    for kind in kinds:
        fn = builders.get(kind)
        if fn is None:
            log.warning("no kernel builder for kind %r; skipping it", kind)
        else:
            resolved[kind] = fn
    for _ in range(per_kind):
        for kind, fn in resolved.items():
            spec = random_spec(kind, rng)
            try:
                yield f"random:{kind}", fn(spec)
            except Exception as exc:
                log.info("builder for %s rejected %s: %s", kind, spec.dims, exc)


@dataclass
class CollectSummary:
    """What a collection run did."""

    kernels: int = 0
    records: int = 0
    failures: int = 0
    seconds: float = 0.0
    stopped_by_budget: bool = False
    by_kind: dict[str, int] = field(default_factory=dict)
    device: dict[str, Any] = field(default_factory=dict)


def results_to_records(kernel: TunableKernel, results: Iterable[Any], device: Mapping[str, Any],
                       source: str) -> list[Record]:
    """Convert measurer results (``config``, ``times``, ``error``) into records."""
    records = []
    for res in results:
        times = list(getattr(res, "times", ()) or ())
        if not times and getattr(res, "time_s", None) is not None:
            times = [res.time_s]
        error = getattr(res, "error", None)
        records.append(Record.measured(
            kernel.problem, dict(res.config), device, times_s=times, failure=error,
            triton_version=str(device.get("triton_version", "")),
            space_version=str(getattr(kernel.space, "version", "1")), source=source))
    return records


def collect(kernels: Iterable[tuple[str, TunableKernel]], measurer: MeasurerLike, out: str | Path, *,
            configs_per_kernel: int = 24, budget_s: float | None = 600.0, seed: int = 0,
            precompile: Callable[[TunableKernel, Sequence[Config]], Mapping[str, str]] | None = None,
            on_kernel: Callable[[CollectSummary, str], None] | None = None,
            clock: Callable[[], float] = time.monotonic) -> CollectSummary:
    """Measure sampled configs of each kernel and append records to ``out`` until the budget ends.

    Args:
        kernels: ``(source, kernel)`` pairs, consumed lazily.
        measurer: times configs (``tilewright.autotune.measure.CudaMeasurer`` on a GPU).
        out: JSON Lines file to append to.
        configs_per_kernel: configs sampled per kernel.
        budget_s: wall-clock budget; no new kernel starts when the expected time of one more
            kernel would exceed it (None: no budget, every kernel is measured).
        seed: config sampling seed.
        precompile: ``(kernel, configs) -> {config_hash: error}``; when given, the next
            kernel compiles in the background while the current one is timed.
        on_kernel: progress callback after each kernel.
        clock: seconds source for the budget (tests pass a fake one).
    """
    rng = random.Random(seed)
    device = dict(measurer.device_info())
    summary = CollectSummary(device=device)
    start = clock()
    iterator = iter(kernels)
    pool = cf.ThreadPoolExecutor(max_workers=1) if precompile else None

    def next_job() -> tuple[str, TunableKernel, list[Config], cf.Future[Any] | None] | None:
        for source, kernel in iterator:
            configs = sample_configs(kernel.space, configs_per_kernel, rng)
            if configs:
                fut = pool.submit(precompile, kernel, configs) if pool and precompile else None
                return source, kernel, configs, fut
        return None

    try:
        job = next_job()
        while job is not None:
            elapsed = clock() - start
            per_kernel = elapsed / summary.kernels if summary.kernels else 0.0
            if budget_s is not None and elapsed + 1.2 * per_kernel > budget_s:
                summary.stopped_by_budget = True
                break
            source, kernel, configs, fut = job
            failed: Mapping[str, str] = fut.result() if fut is not None else {}
            job = next_job()  # starts compiling the next kernel while this one is timed
            todo = [c for c in configs if config_hash(c) not in failed]
            results = list(measurer.measure(kernel, todo)) if todo else []
            records = results_to_records(kernel, results, device, source)
            for c in configs:
                if config_hash(c) in failed:
                    records.append(Record.measured(kernel.problem, c, device, failure=failed[config_hash(c)],
                                                   triton_version=str(device.get("triton_version", "")),
                                                   space_version=str(kernel.space.version), source=source))
            write_records(out, records, append=True)
            summary.kernels += 1
            summary.records += len(records)
            summary.failures += sum(1 for r in records if not r.ok)
            summary.by_kind[kernel.problem.kind] = summary.by_kind.get(kernel.problem.kind, 0) + 1
            if on_kernel:
                on_kernel(summary, getattr(kernel, "name", kernel.problem.kind))
    finally:
        if pool:
            pool.shutdown(wait=False, cancel_futures=True)
    summary.seconds = clock() - start
    log.info("collected %d records from %d kernels in %.0fs", summary.records, summary.kernels, summary.seconds)
    return summary
