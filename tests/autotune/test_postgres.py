"""The tuning database and shared Optuna studies on a real PostgreSQL server.

Needs ``TILEWRIGHT_TEST_PG_URL`` (``eval "$(bash .ci/postgres.sh)"``); skipped without it,
failed without it under CI.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import random
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from .conftest import subprocess_env
from .test_database import GPU, _writer
from .tw_test_kernels import SlowVectorAdd, TinyMatmul, replay_table
from tilewright.autotune.database import TuningDatabase
from tilewright.schedule.device import device_info
from tilewright.autotune.measure import ReplayMeasurer
from tilewright.autotune.search import SearchSettings, study_name
from tilewright.autotune.tuner import tune_kernels

pytestmark = pytest.mark.postgres


def _check_study(url: str, name: str, trials: int, workers: int) -> list:
    study = optuna.load_study(study_name=name, storage=url)
    all_trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in all_trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    # nothing left running; a WAITING trial (queued, never started) may be left when the budget ran out
    assert not [t for t in all_trials if t.state == TrialState.RUNNING]
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in all_trials
               if t.user_attrs.get("measured"))
    measured = [t for t in all_trials if t.user_attrs.get("measured")]
    hashes = [t.user_attrs["config_hash"] for t in measured]
    assert len(hashes) == len(set(hashes)), "a config was measured twice"
    assert trials <= len(measured) <= trials + workers - 1
    return measured


def test_database_round_trip_and_concurrent_writers(pg_url):
    db = TuningDatabase(pg_url)
    k = TinyMatmul(m=16 + random.randrange(10_000))  # a key of its own on the shared server
    db.put_best(k.problem, k.space, GPU, k.space.default_config(), timing_source="cuda", time_s=2e-5)
    assert db.lookup(k.problem, k.space, GPU).config == k.space.default_config()
    newer = TinyMatmul(m=k.m)
    newer.space.version = "99"
    assert db.lookup(newer.problem, newer.space, GPU) is None and db.rejected


def test_concurrent_upserts(pg_url):
    # NOTE: threads with an engine each are concurrent connections for the server, and start
    # much faster than processes (SQLite's multi-process case is in test_database).
    TuningDatabase(pg_url)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda w: _writer(pg_url, w, 20), range(3)))
    db = TuningDatabase(pg_url)
    k = TinyMatmul()
    rows = db.measurements_for(k.problem.key())
    entry = db.lookup(k.problem, k.space, GPU)
    assert entry.time_s == pytest.approx(min(r["time_s"] for r in rows))


def test_two_worker_processes_share_one_study(pg_url, caplog):
    kernel = TinyMatmul(m=32 + random.randrange(10_000))
    measurer = ReplayMeasurer(replay_table(kernel.space, fail_every=9), delay_s=0.1)
    settings = SearchSettings(trials=16, seed=0, heartbeat_s=2, grace_s=6)
    results = tune_kernels([kernel], storage_url=pg_url, workers=2, measurer=measurer,
                           cost_model=None, progress=False, settings=settings)
    assert results[0].config is not None
    assert "exited with" not in caplog.text  # the worker process finished cleanly
    _check_study(pg_url, results[0].study_name, 16, 2)


def test_two_machines_running_the_same_command(pg_url, tmp_path):
    # Two independent `tilewright autotune` processes (as on two machines) on one PostgreSQL URL.
    tag = f"pg-{random.randrange(10**9)}"  # a study of its own on the shared server
    (tmp_path / "pgfactory.py").write_text(
        "from autotune.tw_test_kernels import SlowVectorAdd\n"
        f"def make():\n    return [SlowVectorAdd(n=256, fingerprint={tag!r}, delay=0.2)]\n")
    env = subprocess_env()
    env["PYTHONPATH"] = f"{tmp_path}:{env['PYTHONPATH']}"
    cmd = [sys.executable, "-m", "tilewright.cli", "autotune", "pgfactory:make", "--trials", "10",
           "--storage", pg_url, "--heartbeat", "2", "--no-progress", "--json",
           "--no-costmodel"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=3600) for p in procs]  # a hang guard, not a speed test
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    kernel = SlowVectorAdd(n=256, fingerprint=tag, delay=0.2)
    measured = _check_study(pg_url, study_name(kernel, device_info("cpu")), 10, 2)
    assert all(t.user_attrs["worker"] for t in measured)
