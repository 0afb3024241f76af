"""Where a tuning entry's timing came from, and what compile time trusts.

Every test taking ``db_url`` runs on SQLite and on the PostgreSQL test server.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from .tw_test_kernels import TinyMatmul, VectorAdd, replay_table
from tilewright.autotune import tuner
from tilewright.autotune.database import KEY_FIELDS, TuningDatabase, best_configs, measurements
from tilewright.schedule.device import CUDA_LABEL, INTERPRETER_LABEL, device_info
from tilewright.autotune.measure import Measurer, ReplayMeasurer
from tilewright.autotune.search import SearchSettings, study_name
from tilewright.schedule.space import config_hash
from tilewright.cli import main

H100 = {"name": "NVIDIA H100", "capability": "9.0", "triton_version": "3.6.0", "sm_count": 132,
        "is_gpu": True}


class GpuLookalike(Measurer):
    """What the backend's measurer reports on a real H100; it never measures anything here."""

    label = CUDA_LABEL
    source = "cuda"

    def device_info(self) -> dict[str, Any]:
        return dict(H100, timing_source="cuda", timing_label=CUDA_LABEL)

    def _time_one(self, kernel: Any, config: Any, repeats: int) -> list[float]:
        raise AssertionError("choose_config must not measure without tune=True")


def _cfg(kernel: Any, **changes: Any) -> dict[str, Any]:
    return dict(kernel.space.default_config(), **changes)


def test_only_real_measurements_are_served(db_url):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    db.put_best(k.problem, k.space, H100, _cfg(k, BLOCK_M=64), time_s=1e-9, timing_source="replay")
    assert db.lookup(k.problem, k.space, H100) is None
    assert "untrusted: replayed timings" in db.rejected[-1].reason
    # asked for explicitly (tools, tests), the replayed entry is there and says what it is
    entry = db.lookup(k.problem, k.space, H100, sources=("replay",))
    assert entry is not None and entry.timing_source == "replay"
    # an interpreter timing filed under a GPU's name is not a GPU measurement either
    db.put_best(k.problem, k.space, H100, _cfg(k, BLOCK_M=64), time_s=1e-9, timing_source="interpreter")
    assert db.lookup(k.problem, k.space, H100) is None
    assert "'interpreter' is not a real measurement on NVIDIA H100" in db.rejected[-1].reason
    with pytest.raises(ValueError):
        db.put_best(k.problem, k.space, H100, _cfg(k), time_s=1e-5, timing_source="made-up")


def test_cpu_interpreter_serves_interpreter_timings_only(db_url):
    db = TuningDatabase(db_url)
    k = VectorAdd()
    cpu = device_info("cpu")
    db.put_best(k.problem, k.space, cpu, k.space.default_config(), time_s=1e-3, timing_source="replay")
    assert db.lookup(k.problem, k.space, cpu) is None
    db.put_best(k.problem, k.space, cpu, k.space.default_config(), time_s=2e-3,
                timing_source="interpreter")
    entry = db.lookup(k.problem, k.space, cpu)
    assert entry is not None and entry.timing_source == "interpreter"


def test_replay_never_overwrites_a_real_measurement(db_url):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    real, fake = _cfg(k, BLOCK_M=64), _cfg(k, BLOCK_N=64)
    assert db.put_best(k.problem, k.space, H100, real, time_s=2e-5, timing_source="cuda")
    # faster and forced, as the tuner writes: still refused
    assert not db.put_best(k.problem, k.space, H100, fake, time_s=1e-9, timing_source="replay", force=True)
    entry = db.lookup(k.problem, k.space, H100)
    assert entry.config == real and entry.timing_source == "cuda"


def test_real_measurement_replaces_a_replayed_one_even_when_slower(db_url):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    db.put_best(k.problem, k.space, H100, _cfg(k, BLOCK_N=64), time_s=1e-9, timing_source="replay")
    assert db.put_best(k.problem, k.space, H100, _cfg(k, BLOCK_M=64), time_s=3e-5, timing_source="cuda")
    entry = db.lookup(k.problem, k.space, H100)
    assert entry.config == _cfg(k, BLOCK_M=64) and entry.time_s == 3e-5


def test_replay_file_naming_a_gpu_is_not_trusted_at_compile_time(db_url, tmp_path, cli_isolation,
                                                                 capsys):
    kernel = VectorAdd(n=2000)
    record = {"source": "synthetic (test)", "device": dict(H100),
              "kernels": [{"name": kernel.name, "timings": replay_table(kernel.space)}]}
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    assert main(["autotune", "autotune.tw_test_kernels:factory", "--trials", "6", "--storage", db_url,
                 "--replay", str(path), "--json", "--no-costmodel", "--seed", "0"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["timing_source"] == "replay" and out["kernels"][0]["timing_source"] == "replay"
    assert "never used at compile time" in captured.err
    # the entry is stored, labelled as replayed ...
    assert main(["tuning", "list", "--storage", db_url, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["device_name"] == "NVIDIA H100" and row["timing_source"] == "replay"
    assert row["timing_label"].startswith("replayed timings")
    assert main(["tuning", "show", row["problem_key"][:10], "--storage", db_url]) == 0
    table = capsys.readouterr().out
    assert "replay" in table and "source" in table
    # ... and a compile on a real H100 does not use it
    db = TuningDatabase(db_url)
    config, source = tuner.choose_config(kernel, db=db, measurer=GpuLookalike(), cost_model=None)
    assert source == "default" and config == kernel.space.default_config()
    assert any(r.reason.startswith("untrusted: replayed") for r in db.rejected)


def test_replayed_studies_are_kept_apart_from_real_ones(mm_kernel):
    replay = ReplayMeasurer(replay_table(mm_kernel.space), info=dict(H100))
    assert study_name(mm_kernel, replay.device_info()).endswith("-replay")
    assert study_name(mm_kernel, dict(H100, timing_source="cuda")) == \
        study_name(mm_kernel, replay.device_info())[:-len("-replay")]


def test_tuner_stores_the_measurer_source(sqlite_url, mm_kernel):
    db = TuningDatabase(sqlite_url)
    replay = ReplayMeasurer(replay_table(mm_kernel.space), info=dict(H100))
    (result,) = tuner.tune_kernels([mm_kernel], storage_url=sqlite_url, measurer=replay, cost_model=None,
                                   progress=False, db=db, settings=SearchSettings(trials=5, seed=0))
    assert result.timing_source == "replay" and result.stored
    rows = db.measurements_for(mm_kernel.problem.key())
    assert rows and {r["timing_source"] for r in rows} == {"replay"}
    assert db.lookup(mm_kernel.problem, mm_kernel.space, H100) is None


def _legacy_schema(url: str) -> None:
    """The tables as they were before timing sources (no timing_source column)."""
    md = sa.MetaData()
    for table in (best_configs, measurements):
        cols = [sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                for c in table.columns if c.name != "timing_source"]
        extra = [sa.UniqueConstraint(*KEY_FIELDS, name="uq_tw_best_key")] if table is best_configs else []
        sa.Table(table.name, md, *cols, *extra)
    engine = sa.create_engine(url)
    md.create_all(engine)
    k = TinyMatmul()
    now = dt.datetime(2025, 1, 1)
    base = {"problem_key": k.problem.key(), "capability": "9.0", "triton_version": "3.6.0",
            "space_version": f"{k.space.kind}-v{k.space.version}-{k.space.fingerprint()[:8]}",
            "kind": k.space.kind, "kernel_name": "mm", "time_s": 1e-5, "default_time_s": 2e-5,
            "trials": 3, "problem_json": "{}", "updated_at": now}
    config = _cfg(k, BLOCK_M=64)
    with engine.begin() as conn:
        for device, label in (("NVIDIA H100", CUDA_LABEL), ("NVIDIA A100", "replayed timings (gpu)"),
                              ("NVIDIA L4", "hand-written")):
            conn.execute(sa.insert(md.tables["tw_best_configs"]).values(
                **base, device_name=device, config_json=json.dumps(config, sort_keys=True),
                config_hash=config_hash(config), timing_label=label))
        conn.execute(sa.insert(md.tables["tw_measurements"]).values(
            problem_key=k.problem.key(), device_name="cpu-interpreter", capability="none",
            triton_version="3.6.0", space_version=base["space_version"], kind=k.space.kind,
            config_json="{}", config_hash="h", time_s=1.0, timing_label=INTERPRETER_LABEL,
            created_at=now))
    engine.dispose()


def test_legacy_entries_are_untrusted_until_migrated(db_url, capsys):
    _legacy_schema(db_url)
    db = TuningDatabase(db_url)  # adds the column: old rows have no source
    k = TinyMatmul()
    a100, l4 = dict(H100, name="NVIDIA A100", capability="9.0"), dict(H100, name="NVIDIA L4")
    assert db.lookup(k.problem, k.space, H100) is None
    assert "no timing source recorded" in db.rejected[-1].reason
    assert main(["tuning", "migrate", "--dry-run", "--storage", db_url]) == 0
    assert "would set the timing source of 1 rows to cuda, 1 rows to interpreter, 1 rows to replay" \
        in capsys.readouterr().err
    assert db.lookup(k.problem, k.space, H100) is None  # a dry run changes nothing
    assert main(["tuning", "--storage", db_url, "migrate"]) == 0
    capsys.readouterr()
    entry = db.lookup(k.problem, k.space, H100)
    assert entry is not None and entry.timing_source == "cuda"
    assert db.lookup(k.problem, k.space, a100) is None  # its label says replay
    assert db.lookup(k.problem, k.space, l4) is None  # its label names no source: still unknown
    assert {r["device_name"]: r["timing_source"] for r in db.entries()} == {
        "NVIDIA H100": "cuda", "NVIDIA A100": "replay", "NVIDIA L4": ""}
    assert [r["timing_source"] for r in db.measurements_for(k.problem.key())] == ["interpreter"]
    assert db.prune(source="unknown") == 1
    assert {r["device_name"] for r in db.entries()} == {"NVIDIA H100", "NVIDIA A100"}
    # opening the upgraded database again changes nothing
    assert len(TuningDatabase(db_url).entries()) == 2


def test_import_keeps_sources_and_rejects_unknown_ones(db_url, tmp_path: Path):
    db = TuningDatabase(db_url)
    k = TinyMatmul()
    db.put_best(k.problem, k.space, H100, _cfg(k, BLOCK_M=64), time_s=1e-5, timing_source="cuda")
    dump = db.export_entries()
    assert dump["best_configs"][0]["timing_source"] == "cuda"
    dump["best_configs"].append(dict(dump["best_configs"][0], device_name="NVIDIA B200",
                                     timing_source="gpu-ish"))
    without = {key: v for key, v in dump["best_configs"][0].items() if key != "timing_source"}
    dump["best_configs"].append(dict(without, device_name="NVIDIA L40S"))
    other = TuningDatabase(f"sqlite:///{tmp_path / 'other.db'}")
    n, rejected = other.import_entries(dump)
    assert n == 2 and len(rejected) == 1 and "unknown timing source" in rejected[0].reason
    assert other.lookup(k.problem, k.space, H100).timing_source == "cuda"
    assert other.lookup(k.problem, k.space, dict(H100, name="NVIDIA L40S")) is None  # no source
