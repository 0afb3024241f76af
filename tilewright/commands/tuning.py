"""``tilewright tuning list|show|export|import|prune|migrate``: manage the tuning database.

``--storage URL`` may come before or after the action (``tilewright tuning list --storage URL``).
Every entry shows its timing source: ``cuda`` (CUDA events on that GPU), ``interpreter``
(Triton's CPU interpreter), ``replay`` (a timing file: never used at compile time) or
``unknown`` (written before sources were recorded: not used until ``tuning migrate``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._common import fail, one_line


def register(subparsers: Any) -> None:
    """Add the ``tuning`` sub-command and its actions."""
    p = subparsers.add_parser("tuning", help="manage the tuning database", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    storage_help = "SQLAlchemy URL (default: local SQLite)"
    p.add_argument("--storage", default=None, help=storage_help)
    # NOTE: the actions accept --storage too; SUPPRESS keeps a value given before the action.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--storage", default=argparse.SUPPRESS, help=storage_help)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", parents=[common], help="list best-config entries")
    ls.add_argument("--json", action="store_true")
    show = sub.add_parser("show", parents=[common],
                          help="show entries and measurements of a problem key (prefix)")
    show.add_argument("key")
    show.add_argument("--json", action="store_true")
    exp = sub.add_parser("export", parents=[common], help="write the database as JSON")
    exp.add_argument("file", help="output file ('-' for stdout)")
    exp.add_argument("--measurements", action="store_true", help="include measurement records")
    imp = sub.add_parser("import", parents=[common],
                         help="import a JSON export (corrupt entries are rejected)")
    imp.add_argument("file")
    imp.add_argument("--force", action="store_true", help="overwrite faster existing entries")
    pr = sub.add_parser("prune", parents=[common], help="delete entries")
    pr.add_argument("--other-triton", action="store_true",
                    help="entries from Triton versions other than the installed one")
    pr.add_argument("--device", default=None, help="entries for this GPU name")
    pr.add_argument("--older-than", type=float, default=None, metavar="DAYS")
    pr.add_argument("--corrupt", action="store_true", help="entries that do not parse")
    pr.add_argument("--source", choices=("cuda", "interpreter", "replay", "unknown"), default=None,
                    help="entries with this timing source")
    pr.add_argument("--all", action="store_true", help="everything")
    mig = sub.add_parser("migrate", parents=[common],
                         help="give entries without a timing source the one their label names")
    mig.add_argument("--dry-run", action="store_true", help="count, change nothing")
    p.set_defaults(func=run)


def _fmt(t: float | None) -> str:
    return "-" if t is None else f"{t * 1e6:.2f} us"


def _open(url: str | None) -> Any:
    from ..autotune.database import TuningDatabase

    return TuningDatabase(url)


def run(args: argparse.Namespace) -> int:
    """Dispatch the action; 0 on success."""
    import sqlalchemy

    try:
        db = _open(args.storage)
    except Exception as exc:  # a bad URL, an unreachable server, a file that is no database
        return fail(f"cannot open the tuning database: {exc}")
    try:
        return _dispatch(db, args)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return fail(f"tuning database: {exc}")
    finally:
        db.close()


def _dispatch(db: Any, args: argparse.Namespace) -> int:
    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True)
    # NOTE: piped output is not cut at 80 columns; cells wrap instead of being elided.
    out_console = Console(width=None if sys.stdout.isatty() else 220)
    if args.action in ("list", "show"):
        return _list_or_show(db, args, out_console)
    if args.action == "export":
        return _export(db, args, err)
    if args.action == "import":
        return _import(db, args, err)
    if args.action == "prune":
        return _prune(db, args, err)
    if args.action == "migrate":
        return _migrate(db, args, err)
    return 2


def _list_or_show(db: Any, args: argparse.Namespace, out_console: Any) -> int:
    """``list`` / ``show KEY``: the entries (and, for show, their measurements), as JSON or tables."""
    rows = db.entries(args.key if args.action == "show" else None)
    if args.action == "show" and not rows:
        return fail(f"no entry for key {args.key!r}", 1)
    if args.json:
        _print_json(db, args, rows)
        return 0
    out_console.print(_entries_table(rows))
    if args.action == "show":
        out_console.print(_measurements_table(db, rows))
    return 0


def _print_json(db: Any, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Print ``rows`` as JSON (``show``: with their measurements)."""
    out: Any = [{k: (str(v) if k == "updated_at" else v) for k, v in r.items()} for r in rows]
    if args.action == "show":
        out = {"entries": out, "measurements": [
            {k: str(v) if k == "created_at" else v for k, v in m.items()}
            for r in rows for m in db.measurements_for(r["problem_key"])]}
    print(json.dumps(out, indent=2, default=str))


def _entries_table(rows: list[dict[str, Any]]) -> Any:
    """A rich table of best-config rows."""
    from rich.table import Table

    from ..schedule.device import source_name

    table = Table(title=f"tuning entries ({len(rows)})")
    for col in ("key", "kernel", "kind", "device", "triton", "space", "time", "default", "trials",
                "source", "timing", "config"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["problem_key"], r["kernel_name"], r["kind"],
                      f"{r['device_name']} ({r['capability']})", r["triton_version"],
                      r["space_version"], _fmt(r["time_s"]), _fmt(r["default_time_s"]),
                      str(r["trials"]), source_name(r.get("timing_source")), r["timing_label"],
                      r["config_json"])
    return table


def _measurements_table(db: Any, rows: list[dict[str, Any]]) -> Any:
    """A rich table of the measurements of ``rows``' problem keys."""
    from rich.table import Table

    from ..schedule.device import source_name

    m = Table(title="measurements")
    for col in ("config", "time", "error", "source", "timing"):
        m.add_column(col, overflow="fold")
    for r in rows:
        for rec in db.measurements_for(r["problem_key"]):
            m.add_row(rec["config_json"], _fmt(rec["time_s"]), (rec["error"] or "")[:80],
                      source_name(rec.get("timing_source")), rec["timing_label"])
    return m


def _export(db: Any, args: argparse.Namespace, err: Any) -> int:
    """``export FILE``: the database as JSON, to a file or stdout (``-``)."""
    text = json.dumps(db.export_entries(args.measurements), indent=2, default=str)
    if args.file == "-":
        sys.stdout.write(text + "\n")
        return 0
    try:
        Path(args.file).write_text(text)
    except OSError as exc:
        return fail(f"cannot write {args.file}: {exc.strerror or exc}")
    err.print(f"wrote {len(db.entries())} entries to {args.file}")
    return 0


def _import(db: Any, args: argparse.Namespace, err: Any) -> int:
    """``import FILE``: load an export; corrupt entries are listed, not imported."""
    try:
        data = json.loads(Path(args.file).read_text())
    except OSError as exc:
        return fail(f"cannot import {args.file}: {exc.strerror or exc}")
    except ValueError as exc:
        return fail(f"cannot import {args.file}: not JSON ({exc})")
    if not isinstance(data, dict):
        return fail(f"cannot import {args.file}: not a tilewright tuning export")
    try:
        n, rejected = db.import_entries(data, force=args.force)
    except ValueError as exc:
        return fail(f"cannot import {args.file}: {exc}")
    err.print(f"imported {n} entries, rejected {len(rejected)}")
    for rej in rejected:
        err.print(f"  rejected {rej.problem_key}: {one_line(rej.reason)}")
    return 0


def _prune(db: Any, args: argparse.Namespace, err: Any) -> int:
    """``prune``: delete the entries the flags select (at least one flag is required)."""
    import triton

    if not (args.other_triton or args.device or args.older_than is not None or args.corrupt
            or args.source or args.all):
        return fail("say what to prune (--other-triton, --device, --older-than, --corrupt, "
                    "--source or --all)")
    n = db.prune(triton_version=triton.__version__ if args.other_triton else None,
                 device_name=args.device, older_than_days=args.older_than,
                 corrupt=args.corrupt, source=args.source, everything=args.all)
    err.print(f"pruned {n} entries")
    return 0


def _migrate(db: Any, args: argparse.Namespace, err: Any) -> int:
    """``migrate``: give rows without a timing source the one their label names."""
    counts = db.migrate_sources(dry_run=args.dry_run)
    verb = "would set" if args.dry_run else "set"
    err.print(f"{verb} the timing source of " + ", ".join(f"{n} rows to {s}" for s, n in counts.items())
              + "; rows whose label names no source stay unknown (never used at compile time)")
    return 0
