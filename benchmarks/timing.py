"""Timers and the run budget.

GPU timing follows ``triton.testing.do_bench``: CUDA events around every call, the L2 cache
flushed (a 256 MiB buffer zeroed) before each, a warm-up sized from a first estimate, and the
median reported with its 20th/80th percentiles. CPU timing uses wall clock the same way.

:class:`Budget` tracks a wall-clock budget for the whole run, learns how far the per-item cost
estimates are off, and says whether the next item still fits. :func:`deadline` stops a single
item that runs far past its estimate (SIGALRM; main thread, POSIX only).
"""
from __future__ import annotations

import contextlib
import math
import signal
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

import torch


@dataclass(frozen=True)
class Timing:
    """Summary of repeated measurements of one callable, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    n: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for the JSON results."""
        return asdict(self)


def _quantile(xs: list[float], q: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, max(0, int(round(q * (len(ys) - 1)))))]


def _summary(times_ms: list[float], method: str) -> Timing:
    return Timing(statistics.median(times_ms), _quantile(times_ms, 0.2), _quantile(times_ms, 0.8),
                  len(times_ms), method)


_L2_FLUSH: dict[int, torch.Tensor] = {}


def _flush_buffer(device: torch.device) -> torch.Tensor:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _L2_FLUSH:
        _L2_FLUSH[index] = torch.empty(256 * 1024 * 1024 // 4, dtype=torch.int32, device=device)
    return _L2_FLUSH[index]


def bench_gpu(fn: Callable[[], Any], device: torch.device, warmup_ms: float = 25.0, rep_ms: float = 100.0,
              max_reps: int = 1000, flush_l2: bool = True) -> Timing:
    """Time ``fn`` on a CUDA device with CUDA events (see module docstring)."""
    cache = _flush_buffer(device) if flush_l2 else None
    fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        if cache is not None:
            cache.zero_()
        fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate = max(start.elapsed_time(end) / 3, 1e-3)
    n_warmup = max(1, int(warmup_ms / estimate))
    n_rep = max(5, min(max_reps, int(rep_ms / estimate)))
    for _ in range(n_warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n_rep)]
    for i in range(n_rep):
        if cache is not None:
            cache.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize(device)
    return _summary([s.elapsed_time(e) for s, e in zip(starts, ends)], "cuda_events")


def bench_cpu(fn: Callable[[], Any], warmup: int = 1, rep_ms: float = 200.0, min_reps: int = 3,
              max_reps: int = 50) -> Timing:
    """Time ``fn`` on CPU with wall clock: ``warmup`` calls, then at least ``min_reps``."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    t_end = time.perf_counter() + rep_ms / 1000
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return _summary(times, "wall")


def bench(fn: Callable[[], Any], device: torch.device, quick: bool = False) -> Timing:
    """Time ``fn`` with the timer that suits ``device``; ``quick`` shortens the repetitions."""
    if device.type == "cuda":
        return bench_gpu(fn, device, warmup_ms=10 if quick else 25, rep_ms=40 if quick else 100)
    return bench_cpu(fn, warmup=2, rep_ms=100 if quick else 300, min_reps=5)


def sync(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """Run ``fn`` once and return ``(result, seconds)``, synchronizing the device."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


class Budget:
    """A wall-clock budget that learns how optimistic the cost estimates are.

    Args:
        total_s: seconds for the whole run, counted from ``start`` (default: now);
            ``math.inf`` for no budget (every item runs, with no deadline).
        reserve_s: seconds kept back for writing results and the table.
        start: a ``clock()`` value (e.g. ``time.monotonic()`` taken when the process started).
        clock: the seconds counter (``time.monotonic``; tests pass a fake one).
    """

    def __init__(self, total_s: float, reserve_s: float = 10.0, start: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total_s = total_s
        self.reserve_s = reserve_s
        self.clock = clock
        self.start = clock() if start is None else start
        #: Observed/estimated cost ratio, smoothed; scales later estimates of unseen kinds.
        self.ratio = 1.0
        #: The same ratio per kind of item (e.g. "model/correctness"), learned separately.
        self.ratios: dict[str, float] = {}

    @property
    def unlimited(self) -> bool:
        """No budget: nothing is skipped for time, no item has a deadline."""
        return math.isinf(self.total_s)

    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def remaining(self) -> float:
        """Seconds left for items (the reserve excluded)."""
        return self.total_s - self.reserve_s - self.elapsed()

    def expected(self, estimate_s: float, kind: str | None = None) -> float:
        """The estimate scaled by what past items (of the same kind, when known) taught."""
        return estimate_s * self.ratios.get(kind or "", self.ratio)

    def allows(self, estimate_s: float, kind: str | None = None) -> bool:
        """Whether an item estimated at ``estimate_s`` is expected to fit."""
        return self.expected(estimate_s, kind) <= self.remaining()

    def observe(self, estimate_s: float, actual_s: float, kind: str | None = None) -> None:
        """Learn from one finished item (ratios are kept within [0.25, 8])."""
        if estimate_s <= 0:
            return
        sample = min(8.0, max(0.25, actual_s / estimate_s))
        self.ratio = 0.7 * self.ratio + 0.3 * sample
        if kind:
            self.ratios[kind] = 0.5 * self.ratios.get(kind, 1.0) + 0.5 * sample

    def item_limit(self, estimate_s: float, kind: str | None = None, slack: float = 4.0,
                   floor_s: float = 45.0) -> float:
        """Hard limit for one item: generous against its estimate, never past the budget
        (``math.inf`` without a budget)."""
        if self.unlimited:
            return math.inf
        return max(1.0, min(self.remaining(), max(floor_s, slack * self.expected(estimate_s, kind))))


class ItemTimeout(BaseException):
    """Raised inside an item that ran past its hard limit.

    NOTE: a BaseException, like KeyboardInterrupt, so that the broad ``except Exception`` in
    compilers (e.g. autotuning that skips failing choices) cannot swallow it.
    """


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`ItemTimeout` in the main thread after ``seconds`` (no-op where unsupported,
    and for ``seconds`` that are not positive and finite)."""
    if not hasattr(signal, "setitimer") or not 0 < seconds < math.inf:
        yield
        return

    def _handler(signum: int, frame: Any) -> None:
        raise ItemTimeout(f"item exceeded its {seconds:.0f} s limit")

    try:
        previous = signal.signal(signal.SIGALRM, _handler)
    except ValueError:  # not the main thread
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
