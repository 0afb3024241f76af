"""Top-level tuning: pick a config for a kernel (database, cost model, default) or tune it.

:func:`choose_config` is what the backend calls per kernel: a tuning-database hit returns the
stored config with no tuning; a miss takes the cost model's pick (or the space default), or is
tuned when asked (``tune=True`` or ``tilewright.config.autotune``). :func:`tune_kernels` runs
an Optuna search per kernel (:mod:`.search`), optionally with extra worker processes on the
same study, re-measures the leaders and stores the winner and every measurement.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import pickle
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

from .compile_pool import compile_session
from .database import TuningDatabase
from .measure import CpuMeasurer, CudaMeasurer, InterpreterMeasurer, Measurer
from ..schedule.problem import TunableKernel
from .search import SearchResult, SearchSettings, create_study, rank_space, run_search, summarize
from ..schedule.space import Config

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    """What tuning one kernel gave (plain data; ``to_dict`` for JSON)."""

    kernel: str
    problem_key: str
    config: Config | None
    time_s: float | None
    default_time_s: float | None
    trials: int
    failed: int
    timing_label: str
    study_name: str
    history: list[float] = field(default_factory=list)
    #: Where the timings came from (``cuda``, ``interpreter``, ``replay``).
    timing_source: str = ""
    #: Whether the winner was written to the database (a replayed or interpreter winner never
    #: replaces a real measurement of the same key).
    stored: bool = False

    @property
    def speedup(self) -> float | None:
        """Default config's time / best time."""
        if self.time_s and self.default_time_s:
            return self.default_time_s / self.time_s
        return None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (infinities in the history become None)."""
        d = asdict(self)
        d["history"] = [x if math.isfinite(x) else None for x in self.history]
        d["speedup"] = self.speedup
        return d


_DATABASES: dict[str, TuningDatabase] = {}


def default_database() -> TuningDatabase:
    """The database at ``config.tuning_url()``, opened once per URL and process."""
    from ..config import config as tw_config

    url = tw_config.tuning_url()
    if url not in _DATABASES:
        _DATABASES[url] = TuningDatabase(url)
    return _DATABASES[url]


def default_cost_model(device: Mapping[str, Any] | None = None) -> Any:
    """The cost model that seeds a search on ``device``: the shipped trained model where one fits the
    device (on a native CPU: the CPU model, shipped because it beat the roofline on held-out kernels),
    else the roofline model (see :func:`tilewright.costmodel.load_default_model`)."""
    from ..costmodel import load_default_model

    return load_default_model(device)


def default_measurer(device: str | None = None, kernel: TunableKernel | None = None) -> Measurer:
    """CUDA timing when a GPU is there; on a CPU, wall-clock timing of native C++ kernels (``kernel``
    is one, or ``device`` is "cpu-native"), else interpreter timing."""
    import torch

    if device == "cpu-native" or (kernel is not None and kernel.problem.meta.get("target") == "cpu"):
        return CpuMeasurer()
    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return CudaMeasurer(device or "cuda")
    return InterpreterMeasurer()


def cost_model_pick(kernel: TunableKernel, device: Mapping[str, Any], cost_model: Any = "auto") -> Config | None:
    """The cost model's fastest feasible config, or None without a usable model."""
    model = default_cost_model(device) if cost_model == "auto" else cost_model
    ranked = rank_space(kernel, model, device)
    return ranked[0] if ranked else None


def choose_config(kernel: TunableKernel, *, tune: bool | None = None, device: str | None = None,
                  db: TuningDatabase | None = None, measurer: Measurer | None = None,
                  cost_model: Any = "auto") -> tuple[dict, str]:
    """Pick the config to compile ``kernel`` with.

    Args:
        kernel: the kernel.
        tune: tune a database miss now (None: ``tilewright.config.autotune``).
        device: torch device string of the kernel ("cuda", "cpu"); default: CUDA if present.
        db: tuning database (default: ``config.tuning_url()``).
        measurer: measurer for tuning (default: CUDA or interpreter).
        cost_model: cost model instance, None, or "auto" (:func:`default_cost_model` for the device).

    Returns:
        (config, source) with source "database", "tuned", "costmodel" or "default".

    Only database entries measured for real on this device are served ("cuda" timings on a
    GPU, "interpreter" timings on the CPU interpreter): replayed timings and entries without a
    recorded timing source are rejected (logged, ``db.rejected``) like corrupt ones.
    """
    from ..config import config as tw_config

    measurer = measurer or default_measurer(device, kernel)
    info = measurer.device_info()
    if tune is None:
        tune = bool(tw_config.autotune)
    try:
        db = db or default_database()
        entry = db.lookup(kernel.problem, kernel.space, info)
    except Exception as exc:  # an unreadable database must not break compilation
        log.warning("tuning database unavailable (%s); not using it", exc)
        db, entry = None, None
    if entry is not None:
        return dict(entry.config), "database"
    if tune and db is not None:
        results = tune_kernels([kernel], trials=tw_config.autotune_trials, storage_url=db.url,
                               measurer=measurer, cost_model=cost_model, progress=False, db=db)
        if results and results[0].config is not None:
            return dict(results[0].config), "tuned"
    pick = cost_model_pick(kernel, info, cost_model)
    if pick is not None:
        return pick, "costmodel"
    return kernel.space.default_config(), "default"


# -- worker processes ---------------------------------------------------------------------------

def load_kernels(source: str) -> list[TunableKernel]:
    """Kernels of a ``module:factory`` target (see ``tilewright autotune``)."""
    from .model_kernels import kernels_of, load_target

    return kernels_of(load_target(source))


def _worker(kernel: TunableKernel | str, measurer: Measurer, storage_url: str, settings: SearchSettings,
            cost_model: Any, device: dict[str, Any], index: int) -> None:
    """Extra worker process: join the kernel's study and search until it is done.

    ``kernel`` is the kernel itself, or "problem_key@module:factory" to rebuild it here.
    """
    logging.basicConfig(level=logging.WARNING)
    if isinstance(kernel, str):
        key, _, source = kernel.partition("@")
        kernel = next(k for k in load_kernels(source) if k.problem.key() == key)
    db = TuningDatabase(storage_url)

    def record(result: Any) -> None:
        db.add_measurements(kernel.problem, kernel.space, device, [result])

    run_search(kernel, measurer, storage=storage_url, settings=settings, cost_model=cost_model,
               device=device, on_result=record, seed_offset=index, finalize=False, claims=db)


def _spawn_workers(n: int, args: tuple[Any, ...], source: str | None) -> list[Any] | None:
    """Start ``n`` worker processes; None when the kernel cannot be sent to them."""
    if n <= 0:
        return []
    try:
        pickle.dumps(args)
    except Exception as exc:
        if source is None:
            log.warning("cannot send %s to worker processes (%s); using threads",
                        getattr(args[0], "name", "kernel"), exc)
            return None
        args = (f"{args[0].problem.key()}@{source}",) + args[1:]  # workers rebuild it
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=args + (i + 1,), daemon=True) for i in range(n)]
    for p in procs:
        p.start()
    return procs


# -- tuning ---------------------------------------------------------------------------------------

def tune_kernels(kernels: list[TunableKernel], *, trials: int | None = None,
                 timeout_s: float | None = None, storage_url: str | None = None, workers: int = 1,
                 sampler: str = "tpe", measurer: Measurer | None = None, cost_model: Any = "auto",
                 progress: bool = True, patience: int | None = None, seed: int | None = None,
                 db: TuningDatabase | None = None, settings: SearchSettings | None = None,
                 on_trial: Callable[[str, int, float], None] | None = None,
                 kernel_source: str | None = None) -> list[TuneResult]:
    """Tune every kernel with an Optuna study on ``storage_url`` and store the winners.

    Args:
        kernels: kernels to tune (duplicates by problem key are tuned once).
        trials: measured-trial budget per kernel (default: ``config.autotune_trials``).
        timeout_s: wall-clock budget per kernel.
        storage_url: SQLAlchemy URL for the tuning database and the Optuna studies
            (default ``config.tuning_url()``); the same URL resumes and shares work.
        workers: local processes searching each kernel's study together.
        sampler: "tpe", "cmaes" or "random".
        measurer: default: CUDA timing on a GPU; on a CPU, wall-clock timing of native C++ kernels
            (interpreter timing for Triton kernels).
        cost_model: instance, None, or "auto" (:func:`default_cost_model` for the device).
        progress: show a rich progress bar per kernel (on stderr).
        patience: early stop after this many measured trials without improvement.
        seed: sampler seed.
        db: an open database on ``storage_url`` (opened when None).
        settings: full search settings (overrides trials/timeout/sampler/patience/seed).
        on_trial: called with (kernel name, measured trials, best time) after each trial.
        kernel_source: "module:factory" the kernels came from; worker processes rebuild kernels
            from it when they cannot be pickled (else they fall back to threads).

    Returns:
        One :class:`TuneResult` per distinct kernel, in order.
    """
    from ..config import config as tw_config

    measurer = measurer or default_measurer(None, kernels[0] if kernels else None)
    model = default_cost_model(measurer.device_info()) if cost_model == "auto" else cost_model
    if settings is None:
        settings = SearchSettings(sampler=sampler, trials=trials or tw_config.autotune_trials,
                                  timeout_s=timeout_s, patience=patience, seed=seed)
    storage_url = storage_url or (db.url if db is not None else tw_config.tuning_url())
    db = db or TuningDatabase(storage_url)
    info = measurer.device_info()
    if not info.get("is_gpu"):
        log.info("tuning with %s", info.get("timing_label", "non-GPU timings"))
    unique: dict[str, TunableKernel] = {}
    for kernel in kernels:
        unique.setdefault(kernel.problem.key(), kernel)
    bar = _Progress(list(unique.values()), settings.trials) if progress else None
    results = []
    # NOTE: one compile pool (one set of worker processes) for the whole run, not one per kernel
    session = compile_session(max(1, int(getattr(measurer, "compile_workers", 4) or 1)),
                              float(getattr(measurer, "compile_timeout_s", 120.0)), getattr(measurer, "device", None))
    try:
        session.__enter__()
        for kernel in unique.values():
            summary = _tune_one(kernel, measurer, model, info, db, storage_url, settings, workers,
                                kernel_source, bar, on_trial)
            results.append(_store(db, kernel, info, summary, measurer.source))
            if bar is not None:
                bar.finish(kernel.name, summary)
    finally:
        session.__exit__(None, None, None)
        if bar is not None:
            bar.close()
    return results


def _tune_one(kernel: TunableKernel, measurer: Measurer, model: Any, info: Mapping[str, Any],
              db: TuningDatabase, storage_url: str, settings: SearchSettings, workers: int,
              kernel_source: str | None, bar: Any, on_trial: Callable[[str, int, float], None] | None
              ) -> SearchResult:
    """Search ``kernel``'s study (with ``workers`` processes) and summarize it; every measurement
    is recorded in ``db`` as it arrives (a killed run keeps them)."""
    def record(result: Any) -> None:
        db.add_measurements(kernel.problem, kernel.space, info, [result])

    def tick(n: int, best: float) -> None:
        if bar is not None:
            bar.update(kernel.name, n, best)
        if on_trial is not None:
            on_trial(kernel.name, n, best)

    # NOTE: create the study before workers start so they all load the same one.
    create_study(kernel, storage_url, settings, info, rank_space(kernel, model, info))
    procs = _spawn_workers(workers - 1, (kernel, measurer, storage_url, settings, model, info), kernel_source)
    run_search(kernel, measurer, storage=storage_url, settings=settings, cost_model=model,
               device=info, on_result=record, on_trial=tick, finalize=False,
               n_jobs=workers if procs is None else 1, claims=db)
    for p in procs or []:
        p.join()
        if p.exitcode:
            log.warning("worker process for %s exited with %s", kernel.name, p.exitcode)
    study = create_study(kernel, storage_url, settings, info, None)
    return summarize(kernel, study, measurer, settings)


def _store(db: TuningDatabase, kernel: TunableKernel, info: Mapping[str, Any],
           summary: SearchResult, source: str) -> TuneResult:
    stored = False
    if summary.best_config is not None:
        stored = db.put_best(kernel.problem, kernel.space, info, summary.best_config,
                             time_s=summary.best_time_s, timing_source=source,
                             default_time_s=summary.default_time_s, trials=summary.measured,
                             kernel_name=kernel.name, timing_label=summary.timing_label, force=True)
        if not stored:
            log.warning("%s: the winner (%s) is not stored: the database holds a real measurement "
                        "of this key", kernel.name, source)
    else:
        log.warning("%s: no config ran successfully in %d trials", kernel.name, summary.measured)
    return TuneResult(kernel.name, kernel.problem.key(), summary.best_config, summary.best_time_s,
                      summary.default_time_s, summary.measured, summary.failed,
                      summary.timing_label, summary.study_name, summary.history, source, stored)


class _Progress:
    """A rich progress bar per kernel (stderr)."""

    def __init__(self, kernels: Sequence[TunableKernel], trials: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[best]}"), TimeElapsedColumn(),
                                 console=Console(stderr=True))
        self.tasks = {k.name: self.progress.add_task(k.name, total=trials, best="") for k in kernels}
        self.progress.start()

    def update(self, name: str, n: int, best: float) -> None:
        text = f"best {best * 1e6:.1f} us" if math.isfinite(best) else "no success yet"
        self.progress.update(self.tasks[name], completed=n, best=text)

    def finish(self, name: str, summary: SearchResult) -> None:
        self.progress.update(self.tasks[name], completed=self.progress.tasks[self.tasks[name]].total)

    def close(self) -> None:
        self.progress.stop()
