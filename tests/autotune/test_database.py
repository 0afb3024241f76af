"""The tuning database: round trips, validation against the space, concurrency, management.

Every test taking ``db_url`` runs against each database kind (SQLite, PostgreSQL).
"""
from __future__ import annotations

import json
import multiprocessing

import pytest
import sqlalchemy as sa

from .tw_test_kernels import TinyMatmul, VectorAdd
from tilewright.autotune.database import TuningDatabase, best_configs, space_version
from tilewright.schedule.device import device_info
from tilewright.autotune.measure import MeasureResult
from tilewright.schedule.space import InfeasibleConfig

GPU = {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "triton_version": "3.6.0",
       "sm_count": 132, "is_gpu": True}


def _best_config(kernel):
    return dict(kernel.space.default_config(), BLOCK_M=64)


def test_put_and_lookup_round_trip(db_url):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    assert db.lookup(k.problem, k.space, GPU) is None
    db.put_best(k.problem, k.space, GPU, _best_config(k), timing_source="cuda", time_s=1e-5,
                default_time_s=2e-5, trials=7, kernel_name=k.name, timing_label="gpu timings")
    entry = db.lookup(k.problem, k.space, GPU)
    assert entry is not None and entry.config == _best_config(k)
    assert entry.time_s == 1e-5 and entry.trials == 7
    # another device or Triton version does not hit
    assert db.lookup(k.problem, k.space, dict(GPU, name="NVIDIA A100")) is None
    assert db.lookup(k.problem, k.space, dict(GPU, triton_version="3.9.0")) is None
    assert db.lookup(k.problem, k.space, device_info("cpu")) is None
    assert not db.rejected


def test_slower_entry_does_not_replace_faster(db_url):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    db.put_best(k.problem, k.space, GPU, _best_config(k), timing_source="cuda", time_s=1e-5)
    db.put_best(k.problem, k.space, GPU, k.space.default_config(), timing_source="cuda", time_s=3e-5)
    assert db.lookup(k.problem, k.space, GPU).config == _best_config(k)
    db.put_best(k.problem, k.space, GPU, k.space.default_config(), timing_source="cuda", time_s=3e-5,
                force=True)
    assert db.lookup(k.problem, k.space, GPU).config == k.space.default_config()


def test_infeasible_config_is_never_stored(db_url):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    with pytest.raises(InfeasibleConfig):
        db.put_best(k.problem, k.space, GPU, dict(k.space.default_config(), BLOCK_M=48),
                    timing_source="cuda", time_s=1.0)


def test_foreign_space_version_is_rejected_and_reported(db_url):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    db.put_best(k.problem, k.space, GPU, _best_config(k), timing_source="cuda", time_s=1e-5)
    newer = TinyMatmul()
    newer.space.version = "2"
    assert db.lookup(newer.problem, newer.space, GPU) is None
    assert any("foreign" in r.reason and "space version" in r.reason for r in db.rejected)


def _tamper(db, **values):
    with db.engine.begin() as conn:
        conn.execute(sa.update(best_configs).values(**values))


@pytest.mark.parametrize("values, reason", [
    ({"config_json": "{not json"}, "corrupt"),
    ({"config_json": json.dumps({"BLOCK_M": [64]})}, "corrupt"),
    ({"config_json": json.dumps([1, 2])}, "corrupt"),
    ({"config_hash": "0000"}, "hash"),
    ({"kind": "pointwise"}, "foreign"),
    ({"problem_key": "someone-elses-key"}, None),  # another key: simply not found
])
def test_corrupt_or_foreign_entries_are_rejected(db_url, values, reason):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    db.put_best(k.problem, k.space, GPU, _best_config(k), timing_source="cuda", time_s=1e-5)
    _tamper(db, **values)
    assert db.lookup(k.problem, k.space, GPU) is None
    if reason:
        assert db.rejected and reason in db.rejected[-1].reason


def test_config_invalid_in_current_space_is_rejected(db_url):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    db.put_best(k.problem, k.space, GPU, _best_config(k), timing_source="cuda", time_s=1e-5)
    bad = dict(_best_config(k), BLOCK_M=48)
    from tilewright.schedule.space import config_hash
    _tamper(db, config_json=json.dumps(bad), config_hash=config_hash(bad))
    assert db.lookup(k.problem, k.space, GPU) is None
    assert "invalid in current space" in db.rejected[-1].reason


def test_measurements_keep_failures(db_url):
    db = TuningDatabase(db_url)
    k = VectorAdd()
    cfg = k.space.default_config()
    db.add_measurements(k.problem, k.space, GPU, [
        MeasureResult(cfg, "h", 1e-5, (1e-5,), None, "gpu"),
        MeasureResult.failure(cfg, "CompilationError: boom", "gpu")])
    rows = db.measurements_for(k.problem.key())
    assert [r["error"] for r in rows] == [None, "CompilationError: boom"]
    assert rows[1]["time_s"] is None


def test_export_import_round_trip_rejects_corrupt_rows(db_url, tmp_path):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    db.put_best(k.problem, k.space, GPU, _best_config(k), timing_source="cuda", time_s=1e-5,
                kernel_name="mm")
    dump = db.export_entries()
    json.dumps(dump)  # plain data
    dump["best_configs"].append(dict(dump["best_configs"][0], config_json="{oops"))
    dump["best_configs"].append({"problem_key": 3})
    other = TuningDatabase(f"sqlite:///{tmp_path / 'other.db'}")
    n, rejected = other.import_entries(dump)
    assert n == 1 and len(rejected) == 2
    assert other.lookup(k.problem, k.space, GPU).config == _best_config(k)
    with pytest.raises(ValueError):
        other.import_entries({"best_configs": []})


def test_prune(db_url):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    db.put_best(k.problem, k.space, GPU, _best_config(k), timing_source="cuda", time_s=1e-5)
    db.put_best(k.problem, k.space, dict(GPU, triton_version="3.9.0"), _best_config(k),
                timing_source="cuda", time_s=1e-5)
    assert db.prune(triton_version="3.9.0") == 1
    assert len(db.entries()) == 1
    _tamper(db, config_json="{broken")
    assert db.prune(corrupt=True) == 1
    assert db.entries() == []


def _writer(url: str, worker: int, n: int) -> None:
    db = TuningDatabase(url)
    k = TinyMatmul()
    configs = list(k.space.enumerate())
    for i in range(n):
        cfg = configs[(worker * 31 + i) % len(configs)]
        t = 1e-5 * (1 + ((worker * 7 + i * 13) % 50))
        db.put_best(k.problem, k.space, GPU, cfg, timing_source="cuda", time_s=t)
        db.add_measurements(k.problem, k.space, GPU, [MeasureResult(cfg, "h", t, (t,), None, "x")])


def test_concurrent_writers_do_not_corrupt(sqlite_url):
    TuningDatabase(sqlite_url)  # create tables first
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(sqlite_url, w, 25)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)  # NOTE: generous: spawned writers import torch, slow on a loaded machine
        assert p.exitcode == 0, f"writer exit code {p.exitcode}"
    db = TuningDatabase(sqlite_url)
    k = TinyMatmul()
    rows = db.measurements_for(k.problem.key())
    assert len(rows) == 75
    entry = db.lookup(k.problem, k.space, GPU)
    assert entry.time_s == pytest.approx(min(r["time_s"] for r in rows))
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    assert space_version(k.space) == entry.key.space_version
