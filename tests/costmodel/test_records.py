"""Measurement records: schema validation, JSON Lines (and Parquet) round trips."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tilewright.schedule.problem import KernelProblem
from tilewright.costmodel.records import (SCHEMA_VERSION, Record, RecordError, read_records, validate,
                                          write_records)

P = KernelProblem("matmul", "fp1", {"B": 1, "M": 64, "N": 64, "K": 64}, "float16", flops=2 * 64 ** 3,
                  signature=(("a", (64, 64), "float16"), ("b", (64, 64), "float16")),
                  meta={"epilogue_ops": ("relu",)})
DEV = {"name": "NVIDIA H100 80GB HBM3", "capability": (9, 0), "sm_count": 132}
CFG = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}


def _rec(**kw) -> Record:
    return Record.measured(P, CFG, DEV, times_s=[3e-6, 1e-6, 2e-6, 4e-6], triton_version="3.6", **kw)


def test_measured_statistics_and_problem_round_trip() -> None:
    r = _rec()
    assert r.ok and r.time_median_s == pytest.approx(2.5e-6)
    assert r.time_p20_s == 1e-6 and r.time_p80_s == 4e-6  # sorted[int(q * n)]
    assert r.capability == "9.0" and r.schema_version == SCHEMA_VERSION
    assert r.problem().key() == P.key() == r.problem_key
    fail = Record.measured(P, CFG, DEV, failure="compile error: out of resources")
    assert not fail.ok and fail.time_median_s is None


def test_jsonl_round_trip_and_append(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    records = [_rec(), Record.measured(P, CFG, DEV, failure="timeout")]
    assert write_records(path, records) == 2
    write_records(path, [_rec(source="random")], append=True)
    back = read_records(path)
    assert back[:2] == records and back[2].source == "random"
    assert read_records(tmp_path) == back  # a directory reads every records file inside


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("device_name"), "missing fields"),
    (lambda d: d.update(extra=1), "unknown fields"),
    (lambda d: d.update(sm_count="132"), "sm_count"),
    (lambda d: d.update(synthetic=1), "synthetic"),
    (lambda d: d.update(schema_version=99), "schema_version"),
    (lambda d: d.update(time_median_s=None), "positive time"),
    (lambda d: d.update(time_median_s=-1.0), "positive time"),
    (lambda d: d["config"].update(num_warps=8), "config_hash"),
])
def test_validation_errors_are_clear(mutate, message: str) -> None:
    row = _rec().to_dict()
    mutate(row)
    with pytest.raises(RecordError, match=message):
        validate(row)


def test_bad_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps(_rec().to_dict())
    path.write_text(good + "\n\n" + "{not json\n")
    with pytest.raises(RecordError, match=r"bad.jsonl:3: not JSON"):
        read_records(path)
    with pytest.raises(RecordError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")


def test_parquet_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "r.parquet"
    records = [_rec(), Record.measured(P, CFG, DEV, failure="timeout")]
    write_records(path, records)
    assert read_records(path) == records
