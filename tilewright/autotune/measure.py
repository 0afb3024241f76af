"""Measurers: how long one kernel takes under one config.

Every measurer takes a batch of configs and returns one :class:`MeasureResult` per config, in
order. A config that fails to compile or run gives a result whose ``error`` is set; measurers
never raise for a bad config. Three kinds:

* :class:`CudaMeasurer`: compiles candidates in parallel worker processes (with a timeout),
  then times on the GPU with CUDA events: warm-up, L2 flush before every repeat, fresh inputs,
  the median of repeats; leaders are re-measured interleaved (:meth:`Measurer.remeasure`).
* :class:`CpuMeasurer`: wall-clock time of the native CPU target's kernels: warm-up, samples of
  many launches each (so one sample is long against the clock and scheduler noise), optional
  cold caches, a re-measure when the spread says the run was disturbed.
* :class:`InterpreterMeasurer`: wall-clock time of the Triton CPU interpreter, labelled so.
* :class:`ReplayMeasurer`: answers from a recorded ``{config_hash: seconds | error}`` table
  (tests and the replay benchmark).
"""
from __future__ import annotations

import abc
import json
import logging
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..schedule.device import (CPU_LABEL, CUDA_LABEL, INTERPRETER_LABEL, REPLAY_LABEL, SOURCE_CPU, SOURCE_CUDA,
                               SOURCE_INTERPRETER, SOURCE_REPLAY, device_info)
from ..schedule.problem import TunableKernel
from ..schedule.space import Config, config_hash
from .compile_pool import CompilePool, active_pool

log = logging.getLogger(__name__)

__all__ = ["REPLAY_LABEL", "MeasureResult", "Measurer", "CudaMeasurer", "CpuMeasurer", "InterpreterMeasurer",
           "ReplayMeasurer", "CompilePool", "precompile", "load_record"]


@dataclass(frozen=True)
class MeasureResult:
    """The outcome of measuring one config.

    Attributes:
        config: the config measured.
        config_hash: its stable hash.
        time_s: median run time in seconds; None when it failed.
        times: every repeat's time in seconds.
        error: why it failed (compile error, launch error, timeout); None on success.
        label: what kind of timing this is (GPU, interpreter, replay), for people.
        source: where the time came from (``cuda``, ``interpreter``, ``replay``), for
            machines: compile time trusts only ``cuda`` on a GPU (see
            :func:`~tilewright.schedule.device.trusted_source`).
    """

    config: Config
    config_hash: str
    time_s: float | None
    times: tuple[float, ...] = ()
    error: str | None = None
    label: str = ""
    source: str = ""

    @property
    def ok(self) -> bool:
        """True when the config ran and was timed."""
        return self.error is None and self.time_s is not None

    @classmethod
    def failure(cls, config: Config, error: str, label: str = "", source: str = "") -> "MeasureResult":
        """A failed measurement of ``config``."""
        return cls(dict(config), config_hash(config), None, (), error, label, source)


def _short_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 2000 else text[:2000] + "..."


class Measurer(abc.ABC):
    """Times configs of one kernel. Subclasses implement :meth:`_time_one`."""

    #: What kind of timings this measurer produces (stored with every record).
    label: str = ""
    #: Where its timings come from: one of ``device.TIMING_SOURCES`` (stored with every record).
    source: str = ""
    #: Repeats per measurement (median taken) and warm-up launches before them.
    repeats: int = 5
    warmup: int = 1

    def device_info(self) -> dict[str, Any]:
        """The device this measurer times on (part of tuning keys)."""
        return device_info("cpu")

    def prepare(self, kernel: TunableKernel, configs: Sequence[Config]) -> dict[str, str]:
        """Compile ahead of timing; returns {config_hash: error} for configs that failed."""
        return {}

    @abc.abstractmethod
    def _time_one(self, kernel: TunableKernel, config: Config, repeats: int) -> list[float]:
        """Time ``repeats`` launches of ``kernel`` under ``config`` (may raise)."""

    def measure(self, kernel: TunableKernel, configs: Sequence[Config]) -> list[MeasureResult]:
        """Measure each config; failures become results with ``error`` set."""
        configs = [dict(c) for c in configs]
        failed = self.prepare(kernel, configs)
        results = []
        for config in configs:
            h = config_hash(config)
            if h in failed:
                results.append(MeasureResult.failure(config, failed[h], self.label, self.source))
                continue
            results.append(self._safe_time(kernel, config, self.repeats))
        return results

    def _safe_time(self, kernel: TunableKernel, config: Config, repeats: int) -> MeasureResult:
        try:
            times = self._time_one(kernel, config, repeats)
        except Exception as exc:  # NOTE: a bad config is data, never a crash of the tuner.
            log.debug("config %s failed: %s", config, exc)
            return MeasureResult.failure(config, _short_error(exc), self.label, self.source)
        return MeasureResult(config, config_hash(config), statistics.median(times), tuple(times),
                             None, self.label, self.source)

    def remeasure(self, kernel: TunableKernel, configs: Sequence[Config],
                  rounds: int = 3) -> list[MeasureResult]:
        """Re-measure leading configs interleaved: each round times every config once, in a
        shuffled order, so drift (clocks, temperature, other load) hits all of them alike.
        """
        configs = [dict(c) for c in configs]
        times: dict[str, list[float]] = {config_hash(c): [] for c in configs}
        errors: dict[str, str] = {}
        rng = random.Random(0)
        for _ in range(max(rounds, 1)):
            order = list(configs)
            rng.shuffle(order)
            for config in order:
                h = config_hash(config)
                if h in errors:
                    continue
                result = self._safe_time(kernel, config, max(1, self.repeats // 2))
                if result.ok:
                    times[h].extend(result.times)
                else:
                    errors[h] = result.error or "failed"
        out = []
        for config in configs:
            h = config_hash(config)
            if h in errors or not times[h]:
                out.append(MeasureResult.failure(config, errors.get(h, "no timing"), self.label,
                                                 self.source))
            else:
                out.append(MeasureResult(config, h, statistics.median(times[h]), tuple(times[h]),
                                         None, self.label, self.source))
        return out


# ---------------------------------------------------------------------------------------------
# Parallel compilation (see .compile_pool)
# ---------------------------------------------------------------------------------------------

def precompile(kernel: TunableKernel, configs: Sequence[Config], *, workers: int = 4,
               timeout_s: float = 120.0, target: str | None = None) -> dict[str, str]:
    """Compile ``configs`` in the session's :class:`CompilePool` (or a throw-away one);
    {config_hash: error}."""
    pool = active_pool()
    if pool is not None:
        return pool.compile(kernel, configs)
    pool = CompilePool(workers, timeout_s, target)
    try:
        return pool.compile(kernel, configs)
    finally:
        pool.close()


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------

class CudaMeasurer(Measurer):
    """GPU timing with CUDA events, warm-up, L2 flush, fresh inputs and median of repeats.

    Args:
        device: the CUDA device ("cuda", "cuda:1").
        repeats: timed launches per measurement (median reported).
        warmup: untimed launches before timing.
        compile_workers: processes compiling candidates ahead of timing (0: in-process, no
            timeout). Inside a :func:`~.compile_pool.compile_session` the session's pool is used.
        compile_timeout_s: how long one config's compile may take (its worker is then killed).
        input_sets: distinct fresh input sets rotated across repeats.
    """

    label = CUDA_LABEL
    source = SOURCE_CUDA

    def __init__(self, device: str = "cuda", *, repeats: int = 20, warmup: int = 3,
                 compile_workers: int = 4, compile_timeout_s: float = 120.0, input_sets: int = 2):
        self.device = device
        self.repeats = repeats
        self.warmup = warmup
        self.compile_workers = compile_workers
        self.compile_timeout_s = compile_timeout_s
        self.input_sets = input_sets
        self._flush: Any = None
        self._pool: CompilePool | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_flush"] = None  # a CUDA buffer: rebuilt where it is needed
        state["_pool"] = None  # worker processes stay with their owner
        return state

    def device_info(self) -> dict[str, Any]:
        return device_info(self.device)

    def prepare(self, kernel: TunableKernel, configs: Sequence[Config]) -> dict[str, str]:
        # NOTE: even a single config compiles in a worker: that is what gives it a timeout.
        if self.compile_workers <= 0:
            return {}
        pool = active_pool()
        if pool is None:
            if self._pool is None:
                self._pool = CompilePool(self.compile_workers, self.compile_timeout_s, self.device)
            pool = self._pool
        return pool.compile(kernel, configs)

    def _flush_l2(self) -> None:
        import torch

        if self._flush is None:
            l2 = device_info(self.device).get("l2_cache_bytes") or 64 * 2**20
            self._flush = torch.empty(int(2 * l2) // 4, dtype=torch.int32, device=self.device)
        self._flush.zero_()

    def _time_one(self, kernel: TunableKernel, config: Config, repeats: int) -> list[float]:
        import torch

        with torch.cuda.device(self.device):
            return self._time_on_device(kernel, config, repeats)

    def _time_on_device(self, kernel: TunableKernel, config: Config, repeats: int) -> list[float]:
        import torch

        launch = kernel.runner(config)
        inputs = [kernel.make_inputs(self.device) for _ in range(max(1, self.input_sets))]
        for i in range(self.warmup):
            launch(inputs[i % len(inputs)])
        torch.cuda.synchronize(self.device)
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for i in range(repeats):
            self._flush_l2()
            starts[i].record()
            launch(inputs[i % len(inputs)])
            ends[i].record()
        torch.cuda.synchronize(self.device)
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]


# ---------------------------------------------------------------------------------------------
# Native CPU kernels
# ---------------------------------------------------------------------------------------------

class CpuMeasurer(Measurer):
    """Wall-clock timing of the native CPU target's kernels on this machine.

    Each config: its launcher on one set of inputs, ``warmup`` launches, then ``repeats``
    samples; a sample times as many back-to-back launches as fill ``sample_s`` (a single launch
    when ``cold_cache``: a buffer twice the last-level cache is written before it, so the
    kernel's operands come from memory). When the samples' spread — (p80 − p20) / median — is
    above ``max_spread`` (another process took the cores), the config is sampled again, up to
    ``retries`` times, and the calmest batch is kept. The threads a kernel uses are part of its
    config, so a timing is that of the config as the runtime launches it.

    With ``rounds`` > 1 (robust labels on a shared machine) :meth:`measure` times every config
    once per round, rounds interleaved in a shuffled order, and reports the smallest round
    median: a stall (a descheduled OpenMP thread makes a launch 100-1000x slower for a while)
    spoils a round, rarely all of them. Configs whose round medians still differ by more than
    ``disturbed_ratio`` get up to ``retries`` extra rounds; those that still do are listed in
    :attr:`disturbed` (config hashes) and :attr:`round_medians` keeps every round's median.
    """

    label = CPU_LABEL
    source = SOURCE_CPU

    def __init__(self, *, repeats: int = 7, warmup: int = 2, sample_s: float = 2e-3, cold_cache: bool = False,
                 max_spread: float = 0.15, retries: int = 2, rounds: int = 1, disturbed_ratio: float = 1.5):
        self.rounds = rounds
        self.disturbed_ratio = disturbed_ratio
        self.disturbed: set[str] = set()
        self.round_medians: dict[str, list[float]] = {}
        self.repeats = repeats
        self.warmup = warmup
        self.sample_s = sample_s
        self.cold_cache = cold_cache
        self.max_spread = max_spread
        self.retries = retries
        self._flush: Any = None

    def device_info(self) -> dict[str, Any]:
        """This CPU as the native target describes it (model, ISA digest, compiler)."""
        from ..targets import native_cpu_target

        return native_cpu_target().device_info()

    def measure(self, kernel: TunableKernel, configs: Sequence[Config]) -> list[MeasureResult]:
        """Measure each config (interleaved rounds, smallest round median, when ``rounds`` > 1)."""
        if self.rounds <= 1:
            return super().measure(kernel, configs)
        configs = [dict(c) for c in configs]
        failed = dict(self.prepare(kernel, configs))
        medians: dict[str, list[float]] = {config_hash(c): [] for c in configs}
        samples: dict[str, list[float]] = {h: [] for h in medians}
        rng = random.Random(0)
        todo = [c for c in configs if config_hash(c) not in failed]
        for i in range(self.rounds + self.retries):
            if i >= self.rounds:
                todo = [c for c in todo if self._disagree(medians[config_hash(c)])]
            rng.shuffle(todo)
            for config in list(todo):
                h = config_hash(config)
                result = self._safe_time(kernel, config, self.repeats)
                if not result.ok:
                    failed[h] = result.error or "failed"
                    todo.remove(config)
                    continue
                medians[h].append(float(result.time_s))  # type: ignore[arg-type]
                samples[h].extend(result.times)
        self.round_medians = medians
        self.disturbed = {h for h, m in medians.items() if h not in failed and self._disagree(m)}
        return [MeasureResult.failure(c, failed[h], self.label, self.source) if h in failed else
                MeasureResult(c, h, min(medians[h]), tuple(samples[h]), None, self.label, self.source)
                for c, h in ((c, config_hash(c)) for c in configs)]

    def _disagree(self, medians: Sequence[float]) -> bool:
        return len(medians) > 1 and max(medians) > self.disturbed_ratio * min(medians)

    def _flush_caches(self) -> None:
        import torch

        if self._flush is None:
            from ..targets.cpu.toolchain import cpu_description

            cpu = cpu_description()
            last_level = cpu.get("l3_bytes") or cpu.get("l2_bytes") or 32 << 20
            self._flush = torch.empty(2 * int(last_level) // 4, dtype=torch.float32)
        self._flush.fill_(1.0)

    def _batch(self, launch: Any, inputs: Any, repeats: int, per_sample: int) -> list[float]:
        times = []
        for _ in range(repeats):
            if self.cold_cache:
                self._flush_caches()
            start = time.perf_counter()
            for _ in range(per_sample):
                launch(inputs)
            times.append((time.perf_counter() - start) / per_sample)
        return times

    def _time_one(self, kernel: TunableKernel, config: Config, repeats: int) -> list[float]:
        launch = kernel.runner(config)
        inputs = kernel.make_inputs("cpu")
        for _ in range(self.warmup):
            launch(inputs)
        start = time.perf_counter()
        launch(inputs)
        once = max(time.perf_counter() - start, 1e-7)
        per_sample = 1 if self.cold_cache else max(1, min(10_000, int(self.sample_s / once)))
        best = self._batch(launch, inputs, repeats, per_sample)
        for _ in range(self.retries):
            if spread(best) <= self.max_spread:
                break
            again = self._batch(launch, inputs, repeats, per_sample)
            log.debug("%s: disturbed run (spread %.2f), re-measured (spread %.2f)", kernel.name, spread(best),
                      spread(again))
            best = min(best, again, key=spread)
        return best


def spread(times: Sequence[float]) -> float:
    """(p80 − p20) / median of ``times``: how much a batch of samples disagrees (0 for one sample)."""
    if len(times) < 2:
        return 0.0
    ordered = sorted(times)
    low, high = ordered[round(0.2 * (len(ordered) - 1))], ordered[round(0.8 * (len(ordered) - 1))]
    median = statistics.median(ordered)
    return (high - low) / median if median > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# CPU interpreter
# ---------------------------------------------------------------------------------------------

class InterpreterMeasurer(Measurer):
    """Wall-clock timing of kernels in Triton's CPU interpreter (labelled as such).

    Interpreter timings say nothing about GPU speed; they let the whole loop run on a CPU.
    """

    label = INTERPRETER_LABEL
    source = SOURCE_INTERPRETER

    def __init__(self, *, repeats: int = 3, warmup: int = 1):
        self.repeats = repeats
        self.warmup = warmup

    def _time_one(self, kernel: TunableKernel, config: Config, repeats: int) -> list[float]:
        launch = kernel.runner(config)
        for _ in range(self.warmup):
            launch(kernel.make_inputs("cpu"))
        times = []
        for _ in range(repeats):
            inputs = kernel.make_inputs("cpu")  # fresh inputs every repeat
            start = time.perf_counter()
            launch(inputs)
            times.append(time.perf_counter() - start)
        return times


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------

@dataclass
class ReplayMeasurer(Measurer):
    """Answers from recorded timings: ``{config_hash: seconds, or an error string/None}``.

    Args:
        table: recorded outcome per config hash; a missing hash is a failure.
        by_kernel: per-kernel tables (by kernel name, or problem key), used before ``table``.
        delay_s: sleep per measured config (to test kill/resume and concurrency).
        info: device-info dict to report (defaults to the recorded GPU's, or the CPU's); it
            always says ``timing_source: replay``, whatever the file claims.
        label: timing label.

    Replayed results have source ``replay``: stored winners are never used at compile time.
    """

    table: Mapping[str, float | str | None] = field(default_factory=dict)
    by_kernel: Mapping[str, Mapping[str, float | str | None]] = field(default_factory=dict)
    delay_s: float = 0.0
    info: dict[str, Any] | None = None
    label: str = REPLAY_LABEL
    calls: list[str] = field(default_factory=list)
    source: str = SOURCE_REPLAY

    def device_info(self) -> dict[str, Any]:
        info = dict(self.info) if self.info else device_info("cpu")
        info.update(timing_source=SOURCE_REPLAY, timing_label=self.label)
        return info

    def _time_one(self, kernel: TunableKernel, config: Config, repeats: int) -> list[float]:
        h = config_hash(config)
        self.calls.append(h)
        if self.delay_s:
            time.sleep(self.delay_s)
        table = self.by_kernel.get(kernel.name) or self.by_kernel.get(kernel.problem.key()) or self.table
        value = table.get(h)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [float(value)]
        raise RuntimeError(value if isinstance(value, str) else f"no recorded timing for {h}")

    @classmethod
    def from_file(cls, path: str | Path, kernel_name: str | None = None, **kwargs: Any) -> "ReplayMeasurer":
        """Load recorded timings from a timing-record file (format in docs/autotune.md).

        Args:
            path: the JSON record file.
            kernel_name: load only this kernel's table; None loads every kernel's.
        """
        record = load_record(path)
        tables = {e["name"]: e["timings"] for e in record["kernels"]}
        for entry in record["kernels"]:
            if entry.get("problem_key"):
                tables.setdefault(entry["problem_key"], entry["timings"])
        label = f"{REPLAY_LABEL} ({record.get('source', 'unknown source')})"
        if kernel_name is not None:
            if kernel_name not in tables:
                raise KeyError(f"{path} has no timings for kernel {kernel_name!r}")
            return cls(table=tables[kernel_name], info=record.get("device"), label=label, **kwargs)
        return cls(by_kernel=tables, info=record.get("device"), label=label, **kwargs)


def load_record(path: str | Path) -> dict[str, Any]:
    """Read and check a timing-record file: ``{"source", "device", "kernels": [...]}``."""
    record = json.loads(Path(path).read_text())
    if not isinstance(record, dict) or not isinstance(record.get("kernels"), list):
        raise ValueError(f"{path} is not a timing-record file (no 'kernels' list)")
    for entry in record["kernels"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not isinstance(entry.get("timings"), dict):
            raise ValueError(f"{path}: every kernel needs a 'name' and a 'timings' object")
    return record
