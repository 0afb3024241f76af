"""Measurement records: one row per (kernel problem, config, device) measurement.

Records are plain data with a versioned schema (:data:`SCHEMA_VERSION`). They are stored as
JSON Lines (``.jsonl``, always available) or Parquet (``.parquet``, needs ``pyarrow``; nested
fields are stored as JSON strings). Reading validates every row and raises
:class:`RecordError` naming the file and line of the first bad row.

A failed measurement is a record too: ``failure`` holds the reason and the times are None.
Records made up for tests carry ``synthetic=True``; training refuses to ship a default model
trained on them.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ..schedule.problem import KernelProblem
from ..schedule.space import Config, config_hash

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class RecordError(ValueError):
    """A record (or a records file) does not follow the schema."""


@dataclass(frozen=True)
class Record:
    """One measurement of one config of one kernel problem on one GPU.

    Attributes:
        kind, fingerprint, dims, dtype, signature, flops, bytes, meta: the
            :class:`~tilewright.schedule.problem.KernelProblem` measured.
        problem_key: ``KernelProblem.key()`` (kernel + shapes), the grouping unit.
        config: the schedule config; ``config_hash`` its stable hash.
        space_version: version of the schedule space the config came from.
        device_name, capability, sm_count: the GPU (``torch.cuda.get_device_name`` etc.).
        triton_version: Triton used to compile.
        time_median_s: median run time in seconds (None on failure).
        time_p20_s, time_p80_s: 20th/80th percentile run times (the spread).
        repeats: number of timed runs behind the statistics.
        failure: None on success, else a short reason (compile error, launch error, timeout).
        source: where the kernel came from ("random", "model:gpt2", ...).
        synthetic: True for made-up records (tests); never used for shipped models.
        timestamp: UNIX time of the measurement.
        schema_version: :data:`SCHEMA_VERSION` of the writer.
        device_extra: for native CPU records, the CPU's description (cores, SIMD width, cache
            sizes, ISA flags, compiler, clock) and the load average when measured; empty for GPUs.
            Optional (older files lack it), so the schema version is unchanged.
    """

    kind: str
    fingerprint: str
    problem_key: str
    dims: dict[str, int]
    dtype: str
    config: dict[str, Any]
    config_hash: str
    device_name: str
    capability: str
    sm_count: int
    triton_version: str
    time_median_s: float | None
    time_p20_s: float | None = None
    time_p80_s: float | None = None
    repeats: int = 0
    failure: str | None = None
    signature: list[Any] = field(default_factory=list)
    flops: float = 0.0
    bytes: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    space_version: str = "1"
    source: str = ""
    synthetic: bool = False
    timestamp: float = 0.0
    schema_version: int = SCHEMA_VERSION
    device_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the measurement succeeded and has a positive time."""
        return self.failure is None and self.time_median_s is not None and self.time_median_s > 0

    def problem(self) -> KernelProblem:
        """The :class:`KernelProblem` this record measured."""
        return KernelProblem(kind=self.kind, fingerprint=self.fingerprint, dims=dict(self.dims),
                             dtype=self.dtype, signature=tuple(self.signature), flops=self.flops,
                             bytes=self.bytes, meta=dict(self.meta))

    def device(self) -> dict[str, object]:
        """The device-info dict features are computed from (CPU records add their description)."""
        return {**self.device_extra, "name": self.device_name, "capability": self.capability,
                "sm_count": self.sm_count}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def measured(cls, problem: KernelProblem, config: Config, device: Mapping[str, object], *,
                 times_s: Iterable[float] | None = None, failure: str | None = None,
                 triton_version: str = "", space_version: str = "1", source: str = "",
                 synthetic: bool = False, device_extra: Mapping[str, Any] | None = None) -> "Record":
        """Build a record from a problem, a config, device info and raw timings (or a failure)."""
        ts = sorted(float(t) for t in (times_s or ()))
        if not ts and failure is None:
            failure = "no timings"

        def q(frac: float) -> float | None:
            return ts[min(int(frac * len(ts)), len(ts) - 1)] if ts else None

        median = (ts[(len(ts) - 1) // 2] + ts[len(ts) // 2]) / 2 if ts else None
        return cls(kind=problem.kind, fingerprint=problem.fingerprint, problem_key=problem.key(),
                   dims=_plain(dict(problem.dims)), dtype=problem.dtype, config=_plain(dict(config)),
                   config_hash=config_hash(config), device_name=str(device.get("name", "")),
                   capability=_cap(device.get("capability")),
                   sm_count=int(device.get("sm_count", 0) or 0), triton_version=triton_version,
                   time_median_s=None if failure else median,
                   time_p20_s=None if failure else q(0.2), time_p80_s=None if failure else q(0.8),
                   repeats=len(ts), failure=failure, signature=_plain(list(problem.signature)),
                   flops=float(problem.flops), bytes=float(problem.bytes), meta=_plain(dict(problem.meta)),
                   space_version=space_version, source=source, synthetic=synthetic,
                   timestamp=time.time(), device_extra=_plain(dict(device_extra or {})))


def _plain(value: Any) -> Any:
    """The JSON round-trip form of ``value`` (tuples become lists), so records compare equal
    before and after being written."""
    return json.loads(json.dumps(value, default=str))


def _cap(value: object) -> str:
    if isinstance(value, (tuple, list)) and len(value) >= 2:
        return f"{int(value[0])}.{int(value[1])}"
    return "" if value is None else str(value)


_FIELDS = {f.name: f for f in fields(Record)}
_REQUIRED = [f.name for f in fields(Record) if f.default is MISSING and f.default_factory is MISSING]
_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "fingerprint": (str,), "problem_key": (str,), "dims": (dict,),
    "dtype": (str,), "config": (dict,), "config_hash": (str,), "device_name": (str,),
    "capability": (str,), "sm_count": (int,), "triton_version": (str,),
    "time_median_s": (int, float, type(None)), "time_p20_s": (int, float, type(None)),
    "time_p80_s": (int, float, type(None)), "repeats": (int,), "failure": (str, type(None)),
    "signature": (list,), "flops": (int, float), "bytes": (int, float), "meta": (dict,),
    "space_version": (str,), "source": (str,), "synthetic": (bool,), "timestamp": (int, float),
    "schema_version": (int,), "device_extra": (dict,),
}


def validate(row: Mapping[str, Any]) -> Record:
    """Check one plain row against schema v1 and return it as a :class:`Record`.

    Raises:
        RecordError: wrong schema version, missing or unknown field, wrong type, or an
            inconsistent row (no time and no failure, non-positive time, bad config hash).
    """
    if not isinstance(row, Mapping):
        raise RecordError(f"a record must be an object, got {type(row).__name__}")
    version = row.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise RecordError(f"schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    missing = [name for name in _REQUIRED if name not in row]
    if missing:
        raise RecordError(f"missing fields {missing}")
    unknown = sorted(set(row) - set(_FIELDS))
    if unknown:
        raise RecordError(f"unknown fields {unknown}")
    for name, value in row.items():
        allowed = _TYPES[name]
        if isinstance(value, bool) and bool not in allowed:
            raise RecordError(f"field {name!r} must be {allowed[0].__name__}, got bool")
        if not isinstance(value, allowed):
            raise RecordError(f"field {name!r} must be {'/'.join(t.__name__ for t in allowed)}, "
                              f"got {type(value).__name__}")
    if row.get("failure") is None:
        median = row["time_median_s"]
        if median is None or median <= 0:
            raise RecordError("a record without failure needs a positive time_median_s")
    if config_hash(row["config"]) != row["config_hash"]:
        raise RecordError(f"config_hash {row['config_hash']!r} does not match config {row['config']}")
    return Record(**dict(row))


def write_records(path: str | Path, records: Iterable[Record], append: bool = False) -> int:
    """Write records to ``path`` (``.jsonl`` or ``.parquet``); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [r.to_dict() for r in records]
    if path.suffix == ".parquet":
        if append and path.exists():
            rows = [r.to_dict() for r in read_records(path)] + rows
        _write_parquet(path, rows)
        return len(rows)
    with path.open("a" if append else "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n")
    return len(rows)


def iter_records(path: str | Path) -> Iterator[Record]:
    """Validated records of one file, in order; see :func:`read_records`."""
    path = Path(path)
    if path.suffix == ".parquet":
        for i, row in enumerate(_read_parquet(path), 1):
            try:
                yield validate(row)
            except RecordError as exc:
                raise RecordError(f"{path}: row {i}: {exc}") from None
        return
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
            try:
                yield validate(row)
            except RecordError as exc:
                raise RecordError(f"{path}:{lineno}: {exc}") from None


def read_records(*paths: str | Path) -> list[Record]:
    """Read and validate records from files or directories (``*.jsonl``/``*.parquet`` inside).

    Raises:
        RecordError: a file is missing, unreadable or has a row that breaks the schema.
    """
    out: list[Record] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted([*path.glob("*.jsonl"), *path.glob("*.parquet")])
        elif path.exists():
            files = [path]
        else:
            raise RecordError(f"{path}: no such file or directory")
        for file in files:
            out.extend(iter_records(file))
    log.info("read %d records from %d path(s)", len(out), len(paths))
    return out


_NESTED = ("dims", "config", "meta", "signature", "device_extra")


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RecordError("writing .parquet needs pyarrow (pip install pyarrow); use .jsonl") from exc
    flat = [{k: (json.dumps(v, sort_keys=True) if k in _NESTED else v) for k, v in row.items()}
            for row in rows]
    table = pa.Table.from_pylist(flat)
    pq.write_table(table, path)


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RecordError(f"{path}: reading .parquet needs pyarrow (pip install pyarrow)") from exc
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        for key in _NESTED:
            if isinstance(row.get(key), str):
                row[key] = json.loads(row[key])
    return rows
