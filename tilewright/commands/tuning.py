"""``tilewright tuning list|show|export|import|prune``: manage the tuning database."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``tuning`` sub-command and its actions."""
    p = subparsers.add_parser("tuning", help="manage the tuning database")
    p.add_argument("--storage", default=None, help="SQLAlchemy URL (default: local SQLite)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="list best-config entries")
    ls.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="show entries and measurements of a problem key (prefix)")
    show.add_argument("key")
    show.add_argument("--json", action="store_true")
    exp = sub.add_parser("export", help="write the database as JSON")
    exp.add_argument("file", help="output file ('-' for stdout)")
    exp.add_argument("--measurements", action="store_true", help="include measurement records")
    imp = sub.add_parser("import", help="import a JSON export (corrupt entries are rejected)")
    imp.add_argument("file")
    imp.add_argument("--force", action="store_true", help="overwrite faster existing entries")
    pr = sub.add_parser("prune", help="delete entries")
    pr.add_argument("--other-triton", action="store_true",
                    help="entries from Triton versions other than the installed one")
    pr.add_argument("--device", default=None, help="entries for this GPU name")
    pr.add_argument("--older-than", type=float, default=None, metavar="DAYS")
    pr.add_argument("--corrupt", action="store_true", help="entries that do not parse")
    pr.add_argument("--all", action="store_true", help="everything")
    p.set_defaults(func=run)


def _fmt(t: float | None) -> str:
    return "-" if t is None else f"{t * 1e6:.2f} us"


def run(args: argparse.Namespace) -> int:
    """Dispatch the action; 0 on success."""
    from rich.console import Console
    from rich.table import Table

    from ..autotune.database import TuningDatabase

    err = Console(stderr=True)
    try:
        db = TuningDatabase(args.storage)
    except Exception as exc:
        err.print(f"[red]error:[/red] cannot open the tuning database: {exc}")
        return 2
    if args.action in ("list", "show"):
        rows = db.entries(args.key if args.action == "show" else None)
        if args.action == "show" and not rows:
            err.print(f"no entry for key {args.key!r}")
            return 1
        if args.json:
            out: Any = [{k: (str(v) if k == "updated_at" else v) for k, v in r.items()} for r in rows]
            if args.action == "show":
                out = {"entries": out, "measurements": [
                    {k: str(v) if k == "created_at" else v for k, v in m.items()}
                    for r in rows for m in db.measurements_for(r["problem_key"])]}
            print(json.dumps(out, indent=2, default=str))
            return 0
        table = Table(title=f"tuning entries ({len(rows)})")
        for col in ("key", "kernel", "kind", "device", "triton", "space", "time", "default", "trials", "config"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["problem_key"], r["kernel_name"], r["kind"],
                          f"{r['device_name']} ({r['capability']})", r["triton_version"],
                          r["space_version"], _fmt(r["time_s"]), _fmt(r["default_time_s"]),
                          str(r["trials"]), r["config_json"])
        Console().print(table)
        if args.action == "show":
            m = Table(title="measurements")
            for col in ("config", "time", "error", "label"):
                m.add_column(col)
            for r in rows:
                for rec in db.measurements_for(r["problem_key"]):
                    m.add_row(rec["config_json"], _fmt(rec["time_s"]), (rec["error"] or "")[:80],
                              rec["timing_label"])
            Console().print(m)
        return 0
    if args.action == "export":
        text = json.dumps(db.export_entries(args.measurements), indent=2, default=str)
        if args.file == "-":
            sys.stdout.write(text + "\n")
        else:
            Path(args.file).write_text(text)
            err.print(f"wrote {len(db.entries())} entries to {args.file}")
        return 0
    if args.action == "import":
        try:
            data = json.loads(Path(args.file).read_text())
            n, rejected = db.import_entries(data, force=args.force)
        except (OSError, ValueError) as exc:
            err.print(f"[red]error:[/red] cannot import {args.file}: {exc}")
            return 2
        err.print(f"imported {n} entries, rejected {len(rejected)}")
        for rej in rejected:
            err.print(f"  rejected {rej.problem_key}: {rej.reason}")
        return 0
    if args.action == "prune":
        import triton

        if not (args.other_triton or args.device or args.older_than is not None or args.corrupt or args.all):
            err.print("[red]error:[/red] say what to prune (--other-triton, --device, --older-than, "
                      "--corrupt or --all)")
            return 2
        n = db.prune(triton_version=triton.__version__ if args.other_triton else None,
                     device_name=args.device, older_than_days=args.older_than,
                     corrupt=args.corrupt, everything=args.all)
        err.print(f"pruned {n} entries")
        return 0
    return 2
