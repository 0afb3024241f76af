"""The tuning database's storage layer: SQLAlchemy tables, key and entry records, row (de)serialisation.

:mod:`tilewright.autotune.database` builds :class:`~tilewright.autotune.database.TuningDatabase`
on these; everything here is plain data and pure functions (no queries, no logging). A stored
row holds only configs and measurements, never code.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..schedule.device import SOURCE_UNKNOWN, TIMING_SOURCES
from ..schedule.problem import KernelProblem
from ..schedule.space import Config, ScheduleSpace, config_hash

metadata = sa.MetaData()

#: Best config per key.
best_configs = sa.Table(
    "tw_best_configs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("problem_key", sa.String(64), nullable=False),
    sa.Column("device_name", sa.String(128), nullable=False),
    sa.Column("capability", sa.String(32), nullable=False),
    sa.Column("triton_version", sa.String(32), nullable=False),
    sa.Column("space_version", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("kernel_name", sa.String(256), nullable=False, default=""),
    sa.Column("config_json", sa.Text, nullable=False),
    sa.Column("config_hash", sa.String(32), nullable=False),
    sa.Column("time_s", sa.Float, nullable=True),
    sa.Column("default_time_s", sa.Float, nullable=True),
    sa.Column("trials", sa.Integer, nullable=False, default=0),
    sa.Column("timing_label", sa.String(128), nullable=False, default=""),
    sa.Column("timing_source", sa.String(16), nullable=False, default="", server_default=""),
    sa.Column("problem_json", sa.Text, nullable=False, default="{}"),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.UniqueConstraint("problem_key", "device_name", "capability", "triton_version",
                        "space_version", name="uq_tw_best_key"),
)

#: One row per measurement (successful or failed).
measurements = sa.Table(
    "tw_measurements", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("problem_key", sa.String(64), nullable=False, index=True),
    sa.Column("device_name", sa.String(128), nullable=False),
    sa.Column("capability", sa.String(32), nullable=False),
    sa.Column("triton_version", sa.String(32), nullable=False),
    sa.Column("space_version", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("config_json", sa.Text, nullable=False),
    sa.Column("config_hash", sa.String(32), nullable=False),
    sa.Column("time_s", sa.Float, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("timing_label", sa.String(128), nullable=False, default=""),
    sa.Column("timing_source", sa.String(16), nullable=False, default="", server_default=""),
    sa.Column("created_at", sa.DateTime, nullable=False),
)

#: Which trial of a shared study measures a config (so two workers never measure the same one).
claims = sa.Table(
    "tw_claims", metadata,
    sa.Column("study_name", sa.String(512), primary_key=True),
    sa.Column("config_hash", sa.String(32), primary_key=True),
    sa.Column("trial_number", sa.Integer, nullable=False),
    sa.Column("claimed_at", sa.DateTime, nullable=False),
)

KEY_FIELDS = ("problem_key", "device_name", "capability", "triton_version", "space_version")


def space_version(space: ScheduleSpace) -> str:
    """The schedule-space version stored in keys: declared version + parameter fingerprint."""
    return f"{space.kind}-v{space.version}-{space.fingerprint()[:8]}"


@dataclass(frozen=True)
class TuningKey:
    """Everything a tuning entry is valid for."""

    problem_key: str
    device_name: str
    capability: str
    triton_version: str
    space_version: str

    @classmethod
    def make(cls, problem: KernelProblem, space: ScheduleSpace,
             device: Mapping[str, Any]) -> "TuningKey":
        """The key of ``problem`` under ``space`` on ``device`` (a device-info dict)."""
        return cls(problem.key(), str(device["name"]), str(device["capability"]),
                   str(device["triton_version"]), space_version(space))

    def as_dict(self) -> dict[str, str]:
        """Column name -> value."""
        return {f: getattr(self, f) for f in KEY_FIELDS}


@dataclass(frozen=True)
class BestEntry:
    """A validated best-config entry."""

    key: TuningKey
    kind: str
    kernel_name: str
    config: Config
    time_s: float | None
    default_time_s: float | None
    trials: int
    timing_label: str
    updated_at: dt.datetime
    timing_source: str = SOURCE_UNKNOWN


@dataclass(frozen=True)
class Rejection:
    """An entry that was ignored, and why."""

    row_id: int | None
    problem_key: str
    reason: str


class CorruptEntry(ValueError):
    """A stored entry whose fields do not parse or have the wrong types."""


def parse_config(text: Any) -> Config:
    """Parse a stored config; raises :class:`CorruptEntry` on bad JSON or wrong types."""
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except (TypeError, ValueError) as exc:
        raise CorruptEntry(f"config is not JSON: {exc}") from exc
    if not isinstance(value, dict) or not value:
        raise CorruptEntry("config is not a non-empty object")
    for name, item in value.items():
        if not isinstance(name, str) or not isinstance(item, (int, str, bool)):
            raise CorruptEntry(f"config field {name!r} has type {type(item).__name__}")
    return value


def now_utc() -> dt.datetime:
    """The current UTC time as a naive datetime (the columns' convention)."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def finite_or_none(value: float | None) -> float | None:
    """``value`` when it is a finite number, else None (inf/nan are not stored)."""
    return value if value is not None and math.isfinite(value) else None


def make_engine(url: str) -> Engine:
    """A SQLAlchemy engine for ``url``; SQLite gets WAL mode and a busy timeout."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


# -- rows ------------------------------------------------------------------------------------


def entry_from_row(row: Mapping[str, Any], config: Config) -> BestEntry:
    """The :class:`BestEntry` of a best-config row whose ``config`` was parsed and checked."""
    key = TuningKey(*(str(row[f]) for f in KEY_FIELDS))
    return BestEntry(key, str(row["kind"]), str(row.get("kernel_name") or ""), config,
                     row.get("time_s"), row.get("default_time_s"), int(row.get("trials") or 0),
                     str(row.get("timing_label") or ""), row["updated_at"],
                     str(row.get("timing_source") or SOURCE_UNKNOWN))


def best_row(key: TuningKey, problem: KernelProblem, space: ScheduleSpace, config: Config, *,
             time_s: float | None, timing_source: str, default_time_s: float | None, trials: int,
             kernel_name: str, timing_label: str) -> dict[str, Any]:
    """Column values of the best-config row storing ``config`` for ``key``."""
    return dict(key.as_dict(), kind=space.kind, kernel_name=kernel_name,
                config_json=json.dumps(config, sort_keys=True), config_hash=config_hash(config),
                time_s=finite_or_none(time_s), default_time_s=finite_or_none(default_time_s),
                trials=int(trials), timing_label=timing_label, timing_source=timing_source,
                problem_json=json.dumps(problem.to_dict(), sort_keys=True, default=str),
                updated_at=now_utc())


def measurement_rows(key: TuningKey, kind: str, results: Iterable[Any]) -> list[dict[str, Any]]:
    """Column values of one measurement row per result (objects with config, time_s, error, label)."""
    columns = key.as_dict()
    return [dict(columns, kind=kind, config_json=json.dumps(r.config, sort_keys=True),
                 config_hash=config_hash(r.config), time_s=finite_or_none(r.time_s),
                 error=r.error, timing_label=r.label or "",
                 timing_source=getattr(r, "source", "") or SOURCE_UNKNOWN, created_at=now_utc())
            for r in results]


def _number_or_none(row: Mapping[str, Any], name: str) -> Any:
    """``row[name]`` when it is a number or missing; raises :class:`CorruptEntry` otherwise."""
    value = row.get(name)
    if value is not None and not isinstance(value, (int, float)):
        raise CorruptEntry(f"{name} is not a number")
    return value


def import_row(row: Any) -> dict[str, Any]:
    """Column values of a best-config row from an export; raises :class:`CorruptEntry`."""
    if not isinstance(row, dict):
        raise CorruptEntry("entry is not an object")
    for f in KEY_FIELDS + ("kind",):
        if not isinstance(row.get(f), str) or not row[f]:
            raise CorruptEntry(f"field {f!r} missing or not a string")
    config = parse_config(row.get("config_json"))
    if row.get("config_hash") not in (None, config_hash(config)):
        raise CorruptEntry("config hash does not match config")
    time_s = _number_or_none(row, "time_s")
    default_time_s = _number_or_none(row, "default_time_s")
    source = row.get("timing_source") or SOURCE_UNKNOWN
    if source != SOURCE_UNKNOWN and source not in TIMING_SOURCES:
        raise CorruptEntry(f"unknown timing source {source!r}")
    values = {f: row[f] for f in KEY_FIELDS}
    values.update(kind=row["kind"], kernel_name=str(row.get("kernel_name") or ""),
                  config_json=json.dumps(config, sort_keys=True), config_hash=config_hash(config),
                  time_s=finite_or_none(time_s), default_time_s=finite_or_none(default_time_s),
                  trials=int(row.get("trials") or 0), timing_label=str(row.get("timing_label") or ""),
                  timing_source=source,
                  problem_json=str(row.get("problem_json") or "{}"), updated_at=now_utc())
    return values
