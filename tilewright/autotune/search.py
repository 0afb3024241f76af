"""Optuna search over one kernel's schedule space.

Each kernel is one Optuna study named from its tuning key (problem key, device, Triton version,
space version), so the same command on another machine, or the same machine after a crash,
joins the same study. Parameters are suggested as ordinal indices into the space's choices for
numeric parameters (so TPE and CMA-ES see order) and as categoricals otherwise; the decoded
config is kept in the trial's user attributes.

The objective, per trial:

1. decode the proposal; an infeasible config is *pruned* (never compiled or measured);
2. a config the cost model ranks in its worst fraction is pruned (the cost-model filter);
3. a config already measured in this study is answered from that trial (not re-measured);
4. otherwise the measurer times it; a failure marks the trial FAIL with the error attached.

The default config and the cost model's top-k are enqueued first. Budgets count measured
trials only (``MaxTrials``-style callback over the shared storage), plus a wall-clock timeout
and an early stop when the best has not improved for ``patience`` measured trials. With RDB
storage a heartbeat marks trials of a killed process FAIL and re-enqueues them
(:class:`optuna.storages.RetryFailedTrialCallback`), so a restart re-runs exactly the trial that
was in flight and keeps every finished one.
"""
from __future__ import annotations

import logging
import math
import os
import random
import socket
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from .database import retry_raced, space_version
from ..schedule.device import SOURCE_REPLAY
from .measure import MeasureResult, Measurer
from ..schedule.problem import TunableKernel
from ..schedule.space import Config, ConfigValue, ScheduleSpace, config_hash

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "cmaes", "random")
#: Spaces with more feasible configs than this are not enumerated for cost-model ranking.
MAX_ENUMERATE = 50_000


class MeasurementFailed(RuntimeError):
    """Raised inside the objective so Optuna records a FAIL trial (caught by ``optimize``)."""


@dataclass
class SearchSettings:
    """Knobs of one kernel's search.

    Attributes:
        sampler: "tpe" (multivariate, default), "cmaes" or "random".
        trials: budget of measured trials (duplicates and pruned proposals do not count).
        timeout_s: wall-clock budget of this process's search (None: unlimited), counted
            on ``clock`` and checked after every trial.
        patience: stop when the best has not improved for this many measured trials.
        topk: cost-model favourites enqueued first (plus the default config).
        filter_keep: fraction of the space (by cost-model rank) that may be measured.
        remeasure_top: leaders re-measured interleaved before declaring a winner.
        remeasure_rounds: rounds of that re-measurement.
        seed: sampler seed.
        heartbeat_s / grace_s: RDB heartbeat interval and the silence after which a RUNNING
            trial counts as dead (its process was killed) and is retried.
        max_proposals_factor: cap on proposals (pruned included) as a multiple of ``trials``.
        clock: seconds counter for ``timeout_s`` (``time.monotonic``; tests pass a fake one).
    """

    sampler: str = "tpe"
    trials: int = 50
    timeout_s: float | None = None
    patience: int | None = None
    topk: int = 5
    filter_keep: float = 0.75
    remeasure_top: int = 3
    remeasure_rounds: int = 3
    seed: int | None = None
    heartbeat_s: int = 10
    grace_s: int = 30
    max_proposals_factor: int = 10
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)


@dataclass
class SearchResult:
    """Outcome of one kernel's search (plain data)."""

    kernel: str
    study_name: str
    best_config: Config | None
    best_time_s: float | None
    default_config: Config
    default_time_s: float | None
    measured: int
    failed: int
    pruned: int
    history: list[float] = field(default_factory=list)
    timing_label: str = ""
    remeasured: list[MeasureResult] = field(default_factory=list)

    @property
    def speedup(self) -> float | None:
        """Default time / best time, when both are known."""
        if self.best_time_s and self.default_time_s:
            return self.default_time_s / self.best_time_s
        return None


# -- encoding ----------------------------------------------------------------------------------

def _ordinal(choices: Sequence[ConfigValue]) -> bool:
    return all(isinstance(c, int) and not isinstance(c, bool) for c in choices)


def encode(space: ScheduleSpace, config: Mapping[str, ConfigValue]) -> dict[str, Any]:
    """Optuna params of ``config`` (ordinal index for numeric parameters)."""
    out: dict[str, Any] = {}
    for name, choices in space.params.items():
        out[name] = choices.index(config[name]) if _ordinal(choices) else config[name]
    return out


def decode(space: ScheduleSpace, params: Mapping[str, Any]) -> Config:
    """Inverse of :func:`encode`."""
    return {name: (choices[int(params[name])] if _ordinal(choices) else params[name])
            for name, choices in space.params.items()}


def suggest(trial: optuna.Trial, space: ScheduleSpace) -> Config:
    """Ask ``trial`` for every parameter of ``space`` and decode to a config."""
    config: Config = {}
    for name, choices in space.params.items():
        if _ordinal(choices):
            config[name] = choices[trial.suggest_int(name, 0, len(choices) - 1)]
        else:
            config[name] = trial.suggest_categorical(name, list(choices))
    return config


# -- construction ------------------------------------------------------------------------------

def study_name(kernel: TunableKernel, device: Mapping[str, Any]) -> str:
    """Study name from the tuning key: same kernel, device and space -> same study.

    Replayed timings get a study of their own (suffix ``-replay``): a later real search on the
    device a timing file names must not resume from, or be answered by, replayed trials.
    """
    dev = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(device["name"]))
    name = (f"tw-{kernel.problem.kind}-{kernel.problem.key()}-{dev}-cc{device['capability']}"
            f"-triton{device['triton_version']}-{space_version(kernel.space)}")
    return name + "-replay" if device.get("timing_source") == SOURCE_REPLAY else name


def make_sampler(name: str, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler for ``name`` ("tpe", "cmaes", "random")."""
    if name == "tpe":
        return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed,
                                          n_startup_trials=8)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False,
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")


def make_storage(url: str | None, settings: SearchSettings | None = None) -> optuna.storages.BaseStorage:
    """Optuna storage on ``url`` (RDB with heartbeat and retry of dead trials), or in memory."""
    if url is None:
        return optuna.storages.InMemoryStorage()
    settings = settings or SearchSettings()
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry_cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry_cls is not None:  # Optuna >= 4.9
            retry = {"heartbeat_stale_trial_callback": retry_cls(max_retry=3)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=3)}
        # NOTE: two processes opening a fresh database race on Optuna's schema (CREATE TYPE /
        # CREATE TABLE); the loser's error means the schema now exists, so open it again.
        storage = retry_raced(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                                 heartbeat_interval=settings.heartbeat_s,
                                                                 grace_period=settings.grace_s, **retry),
                              "creating Optuna's schema raced (%s); opening again", backoff_s=0.2)
    assert storage is not None  # no skip: retry_raced returns the step's value or raises
    return storage


def rank_space(kernel: TunableKernel, cost_model: Any, device: Mapping[str, Any]) -> list[Config] | None:
    """Feasible configs from predicted fastest to slowest, or None when impossible."""
    if cost_model is None:
        return None
    configs = []
    for config in kernel.space.enumerate():
        configs.append(config)
        if len(configs) > MAX_ENUMERATE:
            log.info("%s: space too large to rank exhaustively; no cost-model filter", kernel.name)
            return None
    try:
        scores = list(cost_model.predict(kernel.problem, configs, device))
    except Exception as exc:
        log.warning("%s: cost model failed (%s); searching without it", kernel.name, exc)
        return None
    order = sorted(range(len(configs)), key=lambda i: (not math.isfinite(scores[i]), scores[i]))
    return [configs[i] for i in order]


def create_study(kernel: TunableKernel, storage: optuna.storages.BaseStorage | str | None,
                 settings: SearchSettings, device: Mapping[str, Any],
                 ranked: list[Config] | None = None, seed_offset: int = 0) -> optuna.Study:
    """Create or load the kernel's study and enqueue the default + cost-model favourites."""
    if storage is None or isinstance(storage, str):
        storage = make_storage(storage, settings)
    seed = None if settings.seed is None else settings.seed + seed_offset
    study = optuna.create_study(storage=storage, sampler=make_sampler(settings.sampler, seed),
                                study_name=study_name(kernel, device), direction="minimize",
                                load_if_exists=True)
    if not study.user_attrs.get("tw_initialised"):
        space = kernel.space
        first = [space.default_config()] + list((ranked or [])[: settings.topk])
        seen = set()
        for config in first:
            h = config_hash(config)
            if h not in seen and space.is_feasible(config):
                seen.add(h)
                study.enqueue_trial(encode(space, config), skip_if_exists=True)
        study.set_user_attr("tw_initialised", True)
        study.set_user_attr("kernel", kernel.name)
        study.set_user_attr("problem", kernel.problem.to_dict())
    return study


# -- trial bookkeeping ---------------------------------------------------------------------------

def is_measured(t: FrozenTrial) -> bool:
    """A trial that really measured a config (success or failure), not a duplicate/pruned one."""
    return bool(t.user_attrs.get("measured")) and t.state in (TrialState.COMPLETE, TrialState.FAIL)


def measured_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Measured trials in trial-number order."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
    return sorted((t for t in trials if is_measured(t)), key=lambda t: t.number)


def best_so_far(trials: Sequence[FrozenTrial]) -> list[float]:
    """Best time after each measured trial (inf until the first success)."""
    out, best = [], math.inf
    for t in trials:
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = min(best, t.value)
        out.append(best)
    return out


class _Stopper:
    """Optuna callback: stop on the measured-trial budget, the seconds budget, patience or an
    exhausted space."""

    def __init__(self, settings: SearchSettings, candidates: set[str] | None):
        self.settings = settings
        self.candidates = candidates
        self.start = settings.clock()

    def done(self, study: optuna.Study) -> str | None:
        timeout = self.settings.timeout_s
        if timeout is not None and self.settings.clock() - self.start >= timeout:
            return f"{timeout:g} s budget spent"
        trials = measured_trials(study)
        if len(trials) >= self.settings.trials:
            return "trial budget reached"
        if self.candidates is not None:
            seen = {t.user_attrs.get("config_hash") for t in trials}
            if self.candidates <= seen:
                return "every candidate measured"
        patience = self.settings.patience
        if patience:
            curve = best_so_far(trials)
            if len(curve) > patience and curve[-1] >= curve[-1 - patience] and math.isfinite(curve[-1]):
                return f"no improvement in {patience} trials"
        return None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = self.done(study)
        if reason:
            log.debug("stopping %s: %s", study.study_name, reason)
            study.stop()


def _find_previous(study: optuna.Study, h: str, number: int, wait_s: float,
                   claims: Any = None) -> FrozenTrial | None:
    """A finished measured trial of config ``h``, or None when this trial should measure it.

    Waits while another trial is measuring ``h``. With ``claims`` (a database with
    ``claim``/``reclaim``), the decision is atomic across processes and machines: exactly one
    trial holds the claim on a config; a claim held by a dead trial is taken over.
    """
    deadline = time.monotonic() + wait_s
    while True:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        for t in trials.values():
            if t.number != number and t.user_attrs.get("config_hash") == h and is_measured(t):
                return t
        if claims is not None:
            holder = claims.claim(study.study_name, h, number)
            if holder == number:
                return None
            other = trials.get(holder)
            dead = other is None or other.state in (TrialState.FAIL, TrialState.PRUNED,
                                                    TrialState.COMPLETE)
            if dead and claims.reclaim(study.study_name, h, holder, number):
                return None
        else:
            running = any(t.number != number and t.state == TrialState.RUNNING
                          and t.user_attrs.get("config_hash") == h and t.user_attrs.get("measuring")
                          for t in trials.values())
            if not running:
                return None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)
        if isinstance(study._storage, optuna.storages.RDBStorage):
            optuna.storages.fail_stale_trials(study)  # the other measurer may have been killed


def _distance(space: ScheduleSpace, a: Mapping[str, ConfigValue], b: Mapping[str, ConfigValue]) -> int:
    """Steps between two configs: ordinal index distance, 1 per differing categorical."""
    total = 0
    for name, choices in space.params.items():
        if _ordinal(choices):
            total += abs(choices.index(a[name]) - choices.index(b[name]))
        else:
            total += int(a[name] != b[name])
    return total


def _enqueue_fresh(study: optuna.Study, space: ScheduleSpace, pool: Sequence[Config],
                   near: Mapping[str, ConfigValue]) -> None:
    """The sampler proposed a measured config again: queue the unmeasured config of ``pool``
    nearest to it (ties: ``pool`` order, i.e. cost-model rank), unless something is already
    queued, so a converged or small search keeps refining instead of spinning on duplicates."""
    taken = set()
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            return
        if t.user_attrs.get("config_hash"):
            taken.add(t.user_attrs["config_hash"])
    best: tuple[int, int] | None = None
    choice = None
    for i, config in enumerate(pool):
        if config_hash(config) in taken:
            continue
        key = (_distance(space, near, config), i)
        if best is None or key < best:
            best, choice = key, config
    if choice is not None:
        study.enqueue_trial(encode(space, choice))


# -- the search ----------------------------------------------------------------------------------

def run_search(kernel: TunableKernel, measurer: Measurer, *,
               storage: optuna.storages.BaseStorage | str | None = None,
               settings: SearchSettings | None = None, cost_model: Any = None,
               device: Mapping[str, Any] | None = None,
               on_result: Callable[[MeasureResult], None] | None = None,
               on_trial: Callable[[int, float], None] | None = None,
               seed_offset: int = 0, finalize: bool = True, n_jobs: int = 1,
               claims: Any = None) -> SearchResult:
    """Search ``kernel``'s space with Optuna; see the module docstring.

    Args:
        kernel: the kernel to tune.
        measurer: times configs (failures come back as data).
        storage: Optuna storage or URL (None: in memory); the same URL resumes and shares.
        settings: budgets, sampler and the rest (defaults: :class:`SearchSettings`).
        cost_model: object with ``predict(problem, configs, device)``; None disables ranking.
        device: device-info dict (default: the measurer's).
        on_result: called with every fresh measurement (e.g. to store it in the database).
        on_trial: called after each measured trial with (measured count, best time so far).
        seed_offset: added to the seed (distinct per worker process).
        finalize: re-measure the leaders and build the result (False in extra workers).
        n_jobs: Optuna worker threads in this process.
        claims: a :class:`~tilewright.autotune.database.TuningDatabase` on the shared URL, so
            that concurrent workers never measure the same config twice.

    Returns:
        The :class:`SearchResult` (only partially filled when ``finalize`` is False).
    """
    settings = settings or SearchSettings()
    device = dict(device or measurer.device_info())
    space = kernel.space
    ranked = rank_space(kernel, cost_model, device)
    candidates, filtered = _candidate_hashes(space, ranked, settings)
    pool = _fallback_pool(space, ranked, candidates, filtered, settings.seed)
    if candidates is not None and not candidates:
        log.warning("%s: the schedule space has no feasible config; nothing to tune", kernel.name)
    study = create_study(kernel, storage, settings, device, ranked, seed_offset)
    if isinstance(study._storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)  # trials of a killed process -> FAIL + retry
    stopper = _Stopper(settings, candidates)
    objective = _Objective(kernel, measurer, filtered, pool, stopper, on_result, claims)
    if not stopper.done(study):
        with _quiet_optuna():
            study.optimize(objective, n_trials=settings.trials * settings.max_proposals_factor + 20,
                           catch=(MeasurementFailed,), n_jobs=n_jobs,
                           callbacks=[stopper, _progress_callback(on_trial)])
    return summarize(kernel, study, measurer, settings) if finalize else _partial(kernel, study)


def _candidate_hashes(space: ScheduleSpace, ranked: list[Config] | None,
                      settings: SearchSettings) -> tuple[set[str] | None, set[str]]:
    """Hashes of the configs worth measuring (None: unknown, too many to enumerate) and of the
    configs the cost model filters out (its slowest ranks, never the default config)."""
    candidates: set[str] | None = None
    filtered: set[str] = set()
    if ranked is not None:
        keep = max(1, math.ceil(len(ranked) * settings.filter_keep), settings.topk)
        filtered = {config_hash(c) for c in ranked[keep:]} - {config_hash(space.default_config())}
        candidates = {config_hash(c) for c in ranked} - filtered
    else:
        n = sum(1 for _ in zip(range(MAX_ENUMERATE + 1), space.enumerate()))
        if n <= MAX_ENUMERATE:
            candidates = {config_hash(c) for c in space.enumerate()}
    return candidates, filtered


def _fallback_pool(space: ScheduleSpace, ranked: list[Config] | None, candidates: set[str] | None,
                   filtered: set[str], seed: int | None) -> list[Config]:
    """Unmeasured configs to fall back on when the sampler repeats itself: best-ranked first
    (without a ranking: the enumerated space, shuffled; too large to enumerate: none)."""
    if ranked is not None:
        return [c for c in ranked if config_hash(c) not in filtered]
    if candidates is not None:
        pool = list(space.enumerate())
        random.Random(seed).shuffle(pool)
        return pool
    return []


class _Objective:
    """The Optuna objective of one kernel's search (the steps of the module docstring)."""

    def __init__(self, kernel: TunableKernel, measurer: Measurer, filtered: set[str],
                 pool: Sequence[Config], stopper: _Stopper,
                 on_result: Callable[[MeasureResult], None] | None, claims: Any) -> None:
        self.kernel, self.measurer, self.space = kernel, measurer, kernel.space
        self.filtered, self.pool, self.stopper = filtered, pool, stopper
        self.on_result, self.claims = on_result, claims

    def __call__(self, trial: optuna.Trial) -> float:
        config = suggest(trial, self.space)
        h = config_hash(config)
        trial.set_user_attr("config", config)
        trial.set_user_attr("config_hash", h)
        self._screen(trial, config, h)
        previous = _find_previous(trial.study, h, trial.number, wait_s=600.0, claims=self.claims)
        if previous is not None:
            trial.set_user_attr("duplicate_of", previous.number)
            _enqueue_fresh(trial.study, self.space, self.pool, config)
            if previous.state == TrialState.COMPLETE and previous.value is not None:
                return float(previous.value)
            raise optuna.TrialPruned(f"config already failed in trial {previous.number}")
        if self.stopper.done(trial.study):  # another worker finished the budget meanwhile
            raise optuna.TrialPruned("budget reached")
        return self._measure(trial, config)

    def _screen(self, trial: optuna.Trial, config: Config, h: str) -> None:
        """Prune an infeasible config, or one the cost model filters out."""
        reason = self.space.check(config)
        if reason:
            trial.set_user_attr("infeasible", reason)
            raise optuna.TrialPruned(f"infeasible: {reason}")
        if h in self.filtered:
            trial.set_user_attr("filtered", "cost model ranks it in the slowest part of the space")
            raise optuna.TrialPruned("filtered by the cost model")

    def _measure(self, trial: optuna.Trial, config: Config) -> float:
        """Time ``config``; a failure raises :class:`MeasurementFailed` (a FAIL trial)."""
        trial.set_user_attr("measuring", True)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        result = self.measurer.measure(self.kernel, [config])[0]
        if self.on_result is not None:
            self.on_result(result)
        trial.set_user_attr("measured", True)
        trial.set_user_attr("label", result.label)
        if not result.ok:
            trial.set_user_attr("error", result.error)
            log.info("%s: config %s failed: %s", self.kernel.name, config, result.error)
            raise MeasurementFailed(result.error or "measurement failed")
        trial.set_user_attr("times", [float(x) for x in result.times[:64]])
        return float(result.time_s)  # type: ignore[arg-type]


def _progress_callback(on_trial: Callable[[int, float], None] | None
                       ) -> Callable[[optuna.Study, FrozenTrial], None]:
    """The Optuna callback reporting (measured count, best time so far) after measured trials."""
    def progress(study: optuna.Study, trial: FrozenTrial) -> None:
        if on_trial is not None and is_measured(trial):
            trials = measured_trials(study)
            on_trial(len(trials), best_so_far(trials)[-1] if trials else math.inf)

    return progress


class _quiet_optuna:
    """Context manager: Optuna's per-trial INFO lines off (our own progress reports instead)."""

    def __enter__(self) -> None:
        self.level = optuna.logging.get_verbosity()
        if not log.isEnabledFor(logging.DEBUG):
            # NOTE: failed trials are data; Optuna would log each with a traceback.
            optuna.logging.set_verbosity(optuna.logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        optuna.logging.set_verbosity(self.level)


def _partial(kernel: TunableKernel, study: optuna.Study) -> SearchResult:
    trials = measured_trials(study)
    return SearchResult(kernel.name, study.study_name, None, None, kernel.space.default_config(),
                        None, len(trials), sum(t.state == TrialState.FAIL for t in trials), 0,
                        best_so_far(trials))


def summarize(kernel: TunableKernel, study: optuna.Study, measurer: Measurer,
              settings: SearchSettings) -> SearchResult:
    """Re-measure the leaders interleaved and build the :class:`SearchResult`."""
    trials = measured_trials(study)
    all_trials = study.get_trials(deepcopy=False)
    pruned = sum(t.state == TrialState.PRUNED for t in all_trials)
    default = kernel.space.default_config()
    default_h = config_hash(default)
    ok = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    default_time = next((t.value for t in ok if t.user_attrs.get("config_hash") == default_h), None)
    leaders: list[FrozenTrial] = []
    for t in sorted(ok, key=lambda t: t.value):  # type: ignore[arg-type, return-value]
        if t.user_attrs.get("config_hash") not in {x.user_attrs.get("config_hash") for x in leaders}:
            leaders.append(t)
        if len(leaders) >= max(1, settings.remeasure_top):
            break
    best_config, best_time, remeasured = None, None, []
    if leaders:
        best_config = dict(leaders[0].user_attrs["config"])
        best_time = float(leaders[0].value)  # type: ignore[arg-type]
        candidates = [dict(t.user_attrs["config"]) for t in leaders]
        if default_time is not None and default_h not in {t.user_attrs.get("config_hash") for t in leaders}:
            # the default joins the interleaved re-measurement: the reported speedup over it compares
            # two timings taken under the same conditions, never a trial against a later re-measure
            candidates.append(dict(default))
        if len(candidates) > 1 and settings.remeasure_rounds > 0:
            remeasured = measurer.remeasure(kernel, candidates, settings.remeasure_rounds)
            good = [r for r in remeasured if r.ok]
            if good:
                winner = min(good, key=lambda r: r.time_s)  # type: ignore[arg-type, return-value]
                best_config, best_time = dict(winner.config), winner.time_s
                again = next((r.time_s for r in good if r.config_hash == default_h), None)
                default_time = again if again is not None else default_time
    label = next((str(t.user_attrs.get("label")) for t in trials if t.user_attrs.get("label")), "")
    return SearchResult(kernel.name, study.study_name, best_config, best_time, default,
                        default_time, len(trials), sum(t.state == TrialState.FAIL for t in trials),
                        pruned, best_so_far(trials), label or measurer.label, remeasured)
