"""Search logic against the replay measurer, and the interpreter loop end to end."""
from __future__ import annotations

import math

import pytest
from optuna.trial import TrialState

from .tw_test_kernels import OracleCostModel, TinyMatmul, VectorAdd, replay_table
from tilewright.autotune import tuner
from tilewright.autotune.database import TuningDatabase
from tilewright.autotune.measure import InterpreterMeasurer, ReplayMeasurer, precompile
from tilewright.autotune.search import (SearchSettings, create_study, make_sampler,
                                        measured_trials, run_search)
from tilewright.schedule.space import config_hash


def _best(table):
    return min(v for v in table.values() if isinstance(v, float))


@pytest.mark.parametrize("cost_model", [None, OracleCostModel()])
def test_tpe_finds_recorded_best_within_budget(mm_kernel, cost_model):
    table = replay_table(mm_kernel.space)
    result = run_search(mm_kernel, ReplayMeasurer(table), cost_model=cost_model,
                        settings=SearchSettings(trials=60, seed=0))
    assert result.best_time_s == pytest.approx(_best(table))
    assert result.measured <= 60
    assert result.default_time_s == table[config_hash(mm_kernel.space.default_config())]
    assert result.speedup and result.speedup > 1


def test_cost_model_top_k_is_measured_first(mm_kernel):
    table = replay_table(mm_kernel.space)
    replay = ReplayMeasurer(table)
    result = run_search(mm_kernel, replay, cost_model=OracleCostModel(),
                        settings=SearchSettings(trials=6, topk=5, seed=0, remeasure_rounds=0))
    # default first, then the oracle's favourite, which is the recorded best
    assert replay.calls[0] == config_hash(mm_kernel.space.default_config())
    assert table[replay.calls[1]] == _best(table)
    assert result.history[1] == _best(table)


def test_infeasible_configs_are_never_measured(mm_kernel):
    replay = ReplayMeasurer(replay_table(mm_kernel.space))
    result = run_search(mm_kernel, replay, settings=SearchSettings(sampler="random", trials=30, seed=1))
    feasible = {config_hash(c) for c in mm_kernel.space.enumerate()}
    assert set(replay.calls) <= feasible
    assert result.pruned > 0  # the random sampler proposes infeasible configs; they are pruned


def test_failed_trials_are_recorded_not_raised(mm_kernel, sqlite_url):
    table = replay_table(mm_kernel.space, fail_every=3)
    db = TuningDatabase(sqlite_url)
    results = tuner.tune_kernels([mm_kernel], trials=25, storage_url=sqlite_url, sampler="random",
                                 measurer=ReplayMeasurer(table), cost_model=None, progress=False,
                                 seed=3, db=db)
    assert results[0].failed > 0 and results[0].config is not None
    rows = db.measurements_for(mm_kernel.problem.key())
    errors = [r for r in rows if r["error"]]
    assert len(errors) == results[0].failed
    assert all("out of resources" in r["error"] and r["time_s"] is None for r in errors)
    import optuna
    study = optuna.load_study(study_name=results[0].study_name, storage=sqlite_url)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert failed and all("error" in t.user_attrs for t in failed)


def test_budget_counts_measured_trials_and_duplicates_are_not_remeasured(mm_kernel):
    replay = ReplayMeasurer(replay_table(mm_kernel.space))
    result = run_search(mm_kernel, replay, settings=SearchSettings(trials=20, seed=0,
                                                                   remeasure_rounds=0))
    assert result.measured == 20
    assert len(replay.calls) == len(set(replay.calls)) == 20


def test_patience_stops_early(add_kernel):
    table = {config_hash(c): 1e-5 for c in add_kernel.space.enumerate()}  # flat: nothing improves
    result = run_search(add_kernel, ReplayMeasurer(table),
                        settings=SearchSettings(trials=15, patience=3, seed=0, remeasure_rounds=0))
    assert result.measured == 4


class FakeClock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_seconds_budget(mm_kernel):
    clock = FakeClock()

    class Ticking(ReplayMeasurer):
        def _time_one(self, kernel, config, repeats):
            clock.now += 0.125  # every measurement "takes" 1/8 s
            return super()._time_one(kernel, config, repeats)

    replay = Ticking(replay_table(mm_kernel.space))
    result = run_search(mm_kernel, replay, settings=SearchSettings(trials=500, timeout_s=0.5, seed=0,
                                                                   remeasure_rounds=0, clock=clock))
    assert result.measured == 4 and len(replay.calls) == 4


def test_small_space_stops_when_exhausted(add_kernel):
    table = replay_table(add_kernel.space)
    result = run_search(add_kernel, ReplayMeasurer(table), settings=SearchSettings(trials=100, seed=0))
    assert result.measured == add_kernel.space.size()
    assert result.best_time_s == pytest.approx(_best(table))


@pytest.mark.parametrize("sampler", ["cmaes", "random"])
def test_other_samplers(mm_kernel, sampler):
    table = replay_table(mm_kernel.space)
    result = run_search(mm_kernel, ReplayMeasurer(table), settings=SearchSettings(sampler=sampler,
                                                                                  trials=25, seed=0))
    assert result.best_time_s is not None and result.best_time_s <= table[
        config_hash(mm_kernel.space.default_config())]
    with pytest.raises(ValueError):
        make_sampler("grid")


def test_resume_in_process_keeps_finished_trials(mm_kernel, sqlite_url):
    table = replay_table(mm_kernel.space)
    settings = SearchSettings(trials=8, seed=0, remeasure_rounds=0)
    run_search(mm_kernel, ReplayMeasurer(table), storage=sqlite_url, settings=settings)
    replay = ReplayMeasurer(table)
    settings.trials = 12
    result = run_search(mm_kernel, replay, storage=sqlite_url, settings=settings)
    assert result.measured == 12 and len(replay.calls) == 4


def test_remeasure_is_interleaved_and_failure_is_data(add_kernel):
    m = InterpreterMeasurer(repeats=2, warmup=0)
    configs = [add_kernel.space.default_config(), {"BLOCK_SIZE": 512, "num_warps": 2}]
    out = m.remeasure(add_kernel, configs + [{"BLOCK_SIZE": 7, "num_warps": 1}], rounds=2)
    assert [r.ok for r in out] == [True, True, False]
    assert all(len(r.times) == 2 for r in out[:2])


def test_precompile_in_worker_processes(add_kernel):
    bad = {"BLOCK_SIZE": 32, "num_warps": 8}  # infeasible: runner raises in the worker
    errors = precompile(add_kernel, [add_kernel.space.default_config(), bad], workers=1, timeout_s=120)
    assert list(errors) == [config_hash(bad)]


def test_interpreter_end_to_end_and_choose_config(sqlite_url):
    kernel = VectorAdd(n=700)
    db = TuningDatabase(sqlite_url)
    measurer = InterpreterMeasurer(repeats=1, warmup=0)
    assert tuner.choose_config(kernel, db=db, measurer=measurer, cost_model=None) == (
        kernel.space.default_config(), "default")
    cfg, source = tuner.choose_config(kernel, db=db, measurer=measurer, cost_model=OracleCostModel())
    assert source == "costmodel" and cfg == {"BLOCK_SIZE": 512, "num_warps": 4}
    import tilewright.config as twc
    old = twc.config.autotune_trials
    twc.config.autotune_trials = 4
    try:
        cfg, source = tuner.choose_config(kernel, tune=True, db=db, measurer=measurer, cost_model=None)
    finally:
        twc.config.autotune_trials = old
    assert source == "tuned" and kernel.space.is_feasible(cfg)
    entry = db.lookup(kernel.problem, kernel.space, measurer.device_info())
    assert entry.config == cfg and "interpreter" in entry.timing_label
    assert tuner.choose_config(kernel, db=db, measurer=measurer) == (cfg, "database")


def test_roofline_is_the_default_cost_model_where_no_trained_model_fits(mm_kernel):
    from tilewright.costmodel.roofline import RooflineModel

    h100 = {"name": "NVIDIA H100", "capability": "9.0"}
    model = tuner.default_cost_model(h100)
    assert isinstance(model, RooflineModel), model  # no GPU model is shipped
    cfg = tuner.cost_model_pick(mm_kernel, h100, "auto")
    assert mm_kernel.space.is_feasible(cfg)


def test_study_is_shared_by_key(mm_kernel, sqlite_url):
    settings = SearchSettings()
    info = ReplayMeasurer({}).device_info()
    a = create_study(mm_kernel, sqlite_url, settings, info)
    b = create_study(TinyMatmul(), sqlite_url, settings, info)
    assert a.study_name == b.study_name
    assert len(a.trials) == 1  # the default config, enqueued once
    assert measured_trials(a) == []
    c = create_study(TinyMatmul(m=128), sqlite_url, settings, info)
    assert c.study_name != a.study_name
    assert math.isfinite(len(c.trials))


def test_compile_timeout_is_a_failure_and_the_pool_recovers():
    from .tw_test_kernels import SlowVectorAdd
    from tilewright.autotune.measure import CompilePool

    pool = CompilePool(workers=1, timeout_s=1.0)
    try:
        slow = SlowVectorAdd(n=64, delay=30.0)
        errors = pool.compile(slow, [slow.space.default_config()])
        assert "compile timeout" in errors[config_hash(slow.space.default_config())]
        fast = VectorAdd(n=64)
        pool.timeout_s = 3600.0  # a hang guard only: the compile must succeed however slow
        assert pool.compile(fast, [fast.space.default_config()]) == {}
    finally:
        pool.close()


def test_storage_open_retries_a_schema_race(monkeypatch, tmp_path) -> None:
    """Two processes opening a fresh database race on Optuna's schema (PostgreSQL: CREATE TYPE
    studydirection); the loser's database error is retried, and a persistent one still raises."""
    import optuna
    import sqlalchemy as sa

    from tilewright.autotune import database, search

    real = optuna.storages.RDBStorage
    calls = []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise sa.exc.IntegrityError("CREATE TYPE studydirection", {}, Exception("duplicate key value"))
        return real(*args, **kwargs)

    monkeypatch.setattr(database.time, "sleep", lambda s: None)
    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage = search.make_storage(f"sqlite:///{tmp_path / 'race.db'}")
    assert isinstance(storage, real) and len(calls) == 2

    def always(*args, **kwargs):
        raise sa.exc.OperationalError("connect", {}, Exception("server down"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", always)
    with pytest.raises(sa.exc.OperationalError):
        search.make_storage(f"sqlite:///{tmp_path / 'down.db'}")
