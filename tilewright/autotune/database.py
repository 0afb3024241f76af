"""The tuning database: best configs and measurement records, on any SQLAlchemy URL.

A SQLite file (``config.cache_dir/tuning.db``) by default; any SQLAlchemy URL (PostgreSQL) to
share one between machines. Entries are keyed by :class:`TuningKey`: the kernel problem key
(fingerprint + shapes/dtypes/strides), GPU name and compute capability, Triton version and the
schedule-space version. Only configs and measurements are stored, never code.

Every entry read back is validated against the current :class:`ScheduleSpace`; a foreign entry
(another space version or kind, another key) or a corrupt one (JSON that does not parse, wrong
types, infeasible config) is ignored, logged and listed in :attr:`TuningDatabase.rejected`.

Provenance: every entry and measurement records its *timing source* (``cuda``,
``interpreter``, ``replay``; empty for entries written before sources were recorded).
:meth:`TuningDatabase.lookup` serves only entries whose source is the one real measurement of
the device looked up (``cuda`` on a GPU, ``interpreter`` on the CPU interpreter): replayed and
unknown-source entries are rejected as *untrusted*. Databases created before the column existed
get it on open (empty for old rows); :meth:`TuningDatabase.migrate_sources` fills it from the
stored timing labels when asked (``tilewright tuning migrate``).

Concurrency: SQLite runs in WAL mode with a busy timeout; best-config writes are single
``INSERT ... ON CONFLICT DO UPDATE`` statements (SQLite, PostgreSQL) that keep the faster
entry, so concurrent writers neither corrupt nor regress an entry. Instances are safe to use
from several threads (SQLAlchemy pools connections); each process should make its own.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from functools import partial
from typing import Any, Callable, Iterable, Mapping, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ..schedule.device import (CPU_CAPABILITY_PREFIX, CUDA_LABEL, INTERPRETER_LABEL, REPLAY_LABEL, SOURCE_CUDA,
                               SOURCE_INTERPRETER, SOURCE_REPLAY, SOURCE_UNKNOWN, TIMING_SOURCES, source_name,
                               trusted_source)
from ..schedule.problem import KernelProblem
from ..schedule.space import Config, ScheduleSpace, config_hash
# The tables, records and row helpers live in .schema; they are importable from here as before.
from .schema import (KEY_FIELDS, BestEntry, CorruptEntry, Rejection, TuningKey, best_configs, best_row,
                     claims, entry_from_row, import_row, make_engine, measurement_rows, measurements,
                     metadata, now_utc, parse_config, space_version)

__all__ = ["TuningDatabase", "TuningKey", "BestEntry", "Rejection", "CorruptEntry", "KEY_FIELDS",
           "best_configs", "measurements", "claims", "metadata", "make_engine", "parse_config",
           "space_version"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def _untrusted(entry: BestEntry, device: Mapping[str, Any], accept: tuple[str, ...]) -> str:
    """Why ``entry`` is not served for ``device``."""
    source = entry.timing_source
    wanted = " or ".join(repr(a) for a in accept) or "none"
    if source == SOURCE_UNKNOWN:
        why = "no timing source recorded (written before sources were; see `tilewright tuning migrate`)"
    elif source == SOURCE_REPLAY:
        why = "replayed timings, never measured on this device"
    else:
        why = f"timing source {source!r} is not a real measurement on {device.get('name')}"
    return f"untrusted: {why}; accepted: {wanted}"


class TuningDatabase:
    """Best configs and measurements for tuning keys (see module docstring).

    Args:
        url: SQLAlchemy URL; None means ``tilewright.config.tuning_url()``.
    """

    def __init__(self, url: str | None = None):
        if url is None:
            from ..config import config

            url = config.tuning_url()
        self.url = url
        self.engine = make_engine(url)
        self.rejected: list[Rejection] = []
        self._create_tables()
        self._add_source_columns()

    def _create_tables(self) -> None:
        # another process may create them meanwhile
        retry_raced(lambda: metadata.create_all(self.engine, checkfirst=True),
                     "create_all raced (%s); retrying")

    def _add_source_columns(self) -> None:
        """Schema upgrade of databases made before timing sources: add the column (empty).

        Old rows keep an empty source, which :meth:`lookup` does not trust; nothing is guessed
        here (see :meth:`migrate_sources`).
        """
        for table in (best_configs, measurements):
            # another process may add it meanwhile
            retry_raced(partial(self._add_source_column, table),
                         "adding timing_source raced (%s); checking again",
                         skip=partial(self._has_source_column, table))

    def _has_source_column(self, table: sa.Table) -> bool:
        columns = {c["name"] for c in sa.inspect(self.engine).get_columns(table.name)}
        return "timing_source" in columns

    def _add_source_column(self, table: sa.Table) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN timing_source "
                                 "VARCHAR(16) NOT NULL DEFAULT ''")
        log.warning("tuning database %s: added column timing_source to %s; its old "
                    "entries have no timing source and are not used at compile time "
                    "(`tilewright tuning migrate` fills it from their labels)",
                    self._safe_url(), table.name)

    def _safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    # -- rejection bookkeeping ----------------------------------------------------------------

    def _reject(self, row_id: int | None, problem_key: str, reason: str) -> None:
        log.warning("ignoring tuning entry %s (%s): %s", row_id, problem_key, reason)
        self.rejected.append(Rejection(row_id, problem_key, reason))

    # -- best configs -------------------------------------------------------------------------

    def lookup(self, problem: KernelProblem, space: ScheduleSpace, device: Mapping[str, Any], *,
               sources: Iterable[str] | None = None) -> BestEntry | None:
        """The validated, trusted best entry for ``problem`` on ``device``, or None.

        Entries for the same problem and device with another space version, kind or an
        infeasible/corrupt config are rejected (logged, added to :attr:`rejected`), and so are
        *untrusted* ones: a timing source other than ``sources``.

        Args:
            sources: timing sources to accept; None (compile time) accepts only the real
                measurement of ``device`` (:func:`~tilewright.schedule.device.trusted_source`:
                ``cuda`` on a GPU, ``interpreter`` on the CPU interpreter), so replayed
                timings and entries without a source are never served.
        """
        accept = (trusted_source(device),) if sources is None else tuple(sources)
        key = TuningKey.make(problem, space, device)
        query = sa.select(best_configs).where(
            best_configs.c.problem_key == key.problem_key,
            best_configs.c.device_name == key.device_name,
            best_configs.c.capability == key.capability,
            best_configs.c.triton_version == key.triton_version)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        found = None
        for row in rows:
            entry = self._validate_row(row, space, problem)
            if entry is None or entry.key != key:
                continue
            if entry.timing_source not in accept:
                self._reject(row.get("id"), entry.key.problem_key, _untrusted(entry, device, accept))
                continue
            found = entry
        return found

    def _validate_row(self, row: Mapping[str, Any], space: ScheduleSpace,
                      problem: KernelProblem | None = None) -> BestEntry | None:
        pkey = str(row.get("problem_key"))
        if row.get("space_version") != space_version(space):
            self._reject(row.get("id"), pkey, f"foreign: space version {row.get('space_version')!r} "
                                             f"!= current {space_version(space)!r}")
            return None
        if row.get("kind") != space.kind:
            self._reject(row.get("id"), pkey, f"foreign: kind {row.get('kind')!r} != {space.kind!r}")
            return None
        if problem is not None and pkey != problem.key():
            self._reject(row.get("id"), pkey, f"foreign: key {pkey} != {problem.key()}")
            return None
        try:
            config = parse_config(row.get("config_json"))
        except CorruptEntry as exc:
            self._reject(row.get("id"), pkey, f"corrupt: {exc}")
            return None
        if row.get("config_hash") != config_hash(config):
            self._reject(row.get("id"), pkey, "corrupt: config hash does not match config")
            return None
        reason = space.check(config)
        if reason:
            self._reject(row.get("id"), pkey, f"invalid in current space: {reason}")
            return None
        return entry_from_row(row, config)

    def put_best(self, problem: KernelProblem, space: ScheduleSpace, device: Mapping[str, Any],
                 config: Config, *, time_s: float | None, timing_source: str,
                 default_time_s: float | None = None, trials: int = 0, kernel_name: str = "",
                 timing_label: str = "", force: bool = False) -> bool:
        """Store ``config`` as the best for its key, unless a faster entry exists (or ``force``).

        An entry measured for real on its device (see :func:`trusted_source`) always replaces
        one that was not, and is never replaced by one that was not, ``force`` or not: replaying
        a timing file cannot overwrite a real measurement.

        Args:
            timing_source: where ``time_s`` came from, one of ``TIMING_SOURCES``.

        Returns:
            Whether the entry was written.

        Raises:
            InfeasibleConfig: when ``config`` is not a feasible member of ``space``.
            ValueError: for an unknown ``timing_source``.
        """
        if timing_source not in TIMING_SOURCES:
            raise ValueError(f"timing source {timing_source!r} is not one of {TIMING_SOURCES}")
        config = space.validate(config)
        key = TuningKey.make(problem, space, device)
        values = best_row(key, problem, space, config, time_s=time_s, timing_source=timing_source,
                          default_time_s=default_time_s, trials=trials, kernel_name=kernel_name,
                          timing_label=timing_label)
        written = self._upsert(values, force, trusted_source(device))
        if not written:
            log.info("not storing %s for %s: the stored entry is faster or better founded",
                     source_name(timing_source), kernel_name or key.problem_key)
        return written

    def _upsert(self, values: dict[str, Any], force: bool, trusted: str) -> bool:
        """Insert or update one best-config row; returns whether a row was written.

        ``trusted`` is the real timing source of the row's device: a row of that source and
        one of another source are never compared by time (the real one wins).
        """
        dialect = self.engine.dialect.name
        update_cols = {k: v for k, v in values.items() if k not in KEY_FIELDS}
        new_real = values["timing_source"] == trusted
        if dialect in ("sqlite", "postgresql"):
            if dialect == "sqlite":
                from sqlalchemy.dialects.sqlite import insert
            else:
                from sqlalchemy.dialects.postgresql import insert
            stmt = insert(best_configs).values(**values)
            old, new = best_configs.c.time_s, stmt.excluded.time_s
            faster = sa.true() if force else sa.or_(old.is_(None), sa.and_(new.is_not(None), new <= old))
            old_real = best_configs.c.timing_source == trusted
            where = sa.or_(sa.not_(old_real), faster) if new_real else sa.and_(sa.not_(old_real), faster)
            stmt = stmt.on_conflict_do_update(index_elements=list(KEY_FIELDS),
                                              set_=update_cols, where=where)
            with self.engine.begin() as conn:
                return conn.execute(stmt).rowcount > 0
        # Other dialects: select-then-write inside one transaction, retried on a race.
        cond = [best_configs.c[f] == values[f] for f in KEY_FIELDS]
        for _ in range(3):
            try:
                with self.engine.begin() as conn:
                    old = conn.execute(sa.select(best_configs.c.time_s, best_configs.c.timing_source)
                                       .where(*cond)).first()
                    if old is None:
                        conn.execute(sa.insert(best_configs).values(**values))
                        return True
                    faster = force or old[0] is None or (values["time_s"] is not None
                                                         and values["time_s"] <= old[0])
                    old_real = old[1] == trusted
                    if (not old_real or faster) if new_real else (not old_real and faster):
                        conn.execute(sa.update(best_configs).where(*cond).values(**update_cols))
                        return True
                return False
            except sa.exc.IntegrityError:
                continue
        return False

    # -- measurements -------------------------------------------------------------------------

    def add_measurements(self, problem: KernelProblem, space: ScheduleSpace,
                         device: Mapping[str, Any], results: Iterable[Any]) -> int:
        """Append measurement records (objects with config, time_s, error, label)."""
        rows = measurement_rows(TuningKey.make(problem, space, device), space.kind, results)
        if rows:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(measurements), rows)
        return len(rows)

    def measurements_for(self, problem_key: str) -> list[dict[str, Any]]:
        """Every measurement row of a problem key, oldest first."""
        query = (sa.select(measurements).where(measurements.c.problem_key == problem_key)
                 .order_by(measurements.c.id))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    # -- claims (shared studies) ---------------------------------------------------------------

    def claim(self, study_name: str, config_hash_: str, trial_number: int) -> int:
        """Claim measuring ``config_hash_`` in ``study_name`` for ``trial_number``.

        Returns:
            The trial number holding the claim: ``trial_number`` when it is ours.
        """
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(claims).values(study_name=study_name, config_hash=config_hash_,
                                                      trial_number=trial_number, claimed_at=now_utc()))
            return trial_number
        except sa.exc.IntegrityError:
            pass
        with self.engine.connect() as conn:
            holder = conn.execute(sa.select(claims.c.trial_number).where(
                claims.c.study_name == study_name, claims.c.config_hash == config_hash_)).scalar()
        return trial_number if holder is None else int(holder)

    def reclaim(self, study_name: str, config_hash_: str, old: int, new: int) -> bool:
        """Take over a claim held by a dead trial ``old``; True when ``new`` now holds it."""
        with self.engine.begin() as conn:
            result = conn.execute(sa.update(claims).where(
                claims.c.study_name == study_name, claims.c.config_hash == config_hash_,
                claims.c.trial_number == old).values(trial_number=new, claimed_at=now_utc()))
        return result.rowcount == 1

    # -- management (the ``tilewright tuning`` command) ---------------------------------------

    def entries(self, problem_key: str | None = None) -> list[dict[str, Any]]:
        """Raw best-config rows (unvalidated), optionally for keys starting with ``problem_key``."""
        query = sa.select(best_configs).order_by(best_configs.c.id)
        if problem_key:
            query = query.where(best_configs.c.problem_key.startswith(problem_key))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def export_entries(self, with_measurements: bool = False) -> dict[str, Any]:
        """Plain-data dump of the database (JSON-serialisable)."""
        def clean(row: dict[str, Any]) -> dict[str, Any]:
            row = {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()}
            row.pop("id", None)
            return row

        out: dict[str, Any] = {"format": "tilewright-tuning", "version": 1,
                               "best_configs": [clean(r) for r in self.entries()]}
        if with_measurements:
            with self.engine.connect() as conn:
                out["measurements"] = [clean(dict(r)) for r in
                                       conn.execute(sa.select(measurements)).mappings()]
        return out

    def import_entries(self, data: Mapping[str, Any], *, force: bool = False) -> tuple[int, list[Rejection]]:
        """Import an :meth:`export_entries` dump; corrupt rows are rejected, not imported.

        Configs cannot be checked against a space here (no kernel at hand); they are checked
        again when looked up. Each row keeps the timing source its export states (none: not
        trusted); an unknown source makes the row corrupt. The same precedence as
        :meth:`put_best` applies: an imported row never replaces a real measurement with one
        that is not.
        """
        if data.get("format") != "tilewright-tuning":
            raise ValueError("not a tilewright tuning export (missing format marker)")
        imported, rejected = 0, []
        for row in data.get("best_configs", []):
            try:
                values = import_row(row)
            except CorruptEntry as exc:
                rej = Rejection(None, str(row.get("problem_key", "?")) if isinstance(row, dict) else "?",
                                f"corrupt: {exc}")
                log.warning("not importing entry %s: %s", rej.problem_key, rej.reason)
                rejected.append(rej)
                continue
            capability = str(values["capability"])
            is_gpu = capability != "none" and not capability.startswith(CPU_CAPABILITY_PREFIX)
            trusted = trusted_source({"is_gpu": is_gpu, "capability": capability})
            if self._upsert(values, force, trusted):
                imported += 1
        return imported, rejected

    def prune(self, *, triton_version: str | None = None, device_name: str | None = None,
              older_than_days: float | None = None, corrupt: bool = False,
              source: str | None = None, everything: bool = False) -> int:
        """Delete entries: from Triton versions other than ``triton_version``, for
        ``device_name``, older than ``older_than_days``, unparseable ones (``corrupt``), of
        timing source ``source`` (``"unknown"`` for entries without one), or all.

        Returns:
            Number of best-config rows deleted (their measurements go with them).
        """
        doomed: list[dict[str, Any]] = []
        cutoff = now_utc() - dt.timedelta(days=older_than_days) if older_than_days is not None else None
        for row in self.entries():
            bad = everything
            bad |= triton_version is not None and row["triton_version"] != triton_version
            bad |= device_name is not None and row["device_name"] == device_name
            bad |= cutoff is not None and row["updated_at"] < cutoff
            bad |= source is not None and source_name(row.get("timing_source")) == source
            if corrupt and not bad:
                try:
                    cfg = parse_config(row["config_json"])
                    bad = row["config_hash"] != config_hash(cfg)
                except CorruptEntry:
                    bad = True
            if bad:
                doomed.append(row)
        with self.engine.begin() as conn:
            for row in doomed:
                conn.execute(sa.delete(best_configs).where(best_configs.c.id == row["id"]))
                conn.execute(sa.delete(measurements).where(
                    *[measurements.c[f] == row[f] for f in KEY_FIELDS]))
        return len(doomed)

    def migrate_sources(self, dry_run: bool = False) -> dict[str, int]:
        """Fill in the timing source of rows without one, from their stored timing label.

        Only the labels tilewright's own measurers wrote are recognised: exactly the CUDA-event
        label (``cuda``), exactly the interpreter label (``interpreter``), or one starting with
        ``replayed timings`` (``replay``). Other rows stay unknown (untrusted). Run it only on
        databases whose rows tilewright wrote (an imported label is taken at its word).

        Returns:
            Rows (best configs and measurements together) per source they got.
        """
        rules = {SOURCE_CUDA: lambda c: c == CUDA_LABEL,
                 SOURCE_INTERPRETER: lambda c: c == INTERPRETER_LABEL,
                 SOURCE_REPLAY: lambda c: c.startswith(REPLAY_LABEL)}
        counts = {s: 0 for s in rules}
        with self.engine.begin() as conn:
            for table in (best_configs, measurements):
                for source, rule in rules.items():
                    cond = sa.and_(table.c.timing_source == SOURCE_UNKNOWN, rule(table.c.timing_label))
                    if dry_run:
                        counts[source] += conn.execute(
                            sa.select(sa.func.count()).select_from(table).where(cond)).scalar() or 0
                    else:
                        counts[source] += conn.execute(
                            sa.update(table).where(cond).values(timing_source=source)).rowcount
        return counts

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()


def retry_raced(step: Callable[[], T], race_message: str, *, skip: Callable[[], bool] = lambda: False,
                backoff_s: float = 0.0) -> T | None:
    """Run a schema ``step`` that another process may race; up to three attempts; its result
    (None when ``skip`` said it is no longer needed).

    Each attempt first asks ``skip`` whether the step is no longer needed. A database error
    (the other process got there first) is logged at debug level with ``race_message`` and
    retried, after ``backoff_s`` times the attempt number; the third one is raised.
    """
    for attempt in range(3):
        if skip():
            return None
        try:
            return step()
        except sa.exc.DBAPIError as exc:
            if attempt == 2:
                raise
            log.debug(race_message, exc)
            if backoff_s:
                time.sleep(backoff_s * (attempt + 1))
    return None  # pragma: no cover - the loop returns or raises
