"""``tilewright train-costmodel DATA... --out MODEL``: train and evaluate the learned cost model.

Cross-validates grouped by kernel (whole kernels and all their shapes held out), prints
Spearman ρ, top-1 regret and top-5 recall for the trained model, the roofline model and a
random ranker (overall, by kernel kind, and device transfer when the data spans two GPU
families), writes the final model (JSON, no pickle), optional ``--json`` report and PNG plots.

Exit codes: 0 success; 1 unreadable or invalid records; 3 not enough data; 4 synthetic
records without ``--allow-synthetic``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path
from typing import Any

from ._common import fail

log = logging.getLogger(__name__)

#: Targets from the cost-model issue (held-out kernels).
TARGET_SPEARMAN = 0.85
TARGET_TOP5 = 0.90


def register(subparsers: Any) -> None:
    """Add the ``train-costmodel`` sub-command."""
    p = subparsers.add_parser(
        "train-costmodel", help="train the learned cost model from measured records",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="record files (.jsonl/.parquet) or directories of them")
    p.add_argument("--out", required=True, help="where to write the trained model (JSON)")
    p.add_argument("--json", metavar="PATH", help="write the evaluation report as JSON")
    p.add_argument("--plots", metavar="DIR", help="directory for PNG plots (default: next to --out)")
    p.add_argument("--no-plots", action="store_true", help="do not write plots")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    p.add_argument("--holdout", choices=("problem", "fingerprint", "model"), default="problem",
                   help="unit held out together: a kernel with its shapes (problem, default), "
                        "every shape of a kernel template (fingerprint) or every kernel of a model (model)")
    p.add_argument("--objective", choices=("auto", "logtime", "rank"), default=None,
                   help="training objective; auto cross-validates both and keeps the better "
                        "(default: auto on native-CPU records, logtime otherwise)")
    p.add_argument("--feature-set", choices=("gpu", "cpu"), default=None,
                   help="which records to train on when a file mixes GPU and native-CPU records")
    p.add_argument("--ship-to", metavar="PATH",
                   help="also write the model here, only when it beats the roofline on held-out kernels "
                        "(Spearman ρ, mean and median top-1 regret, top-5 recall not worse)")
    p.add_argument("--noise-ceiling", metavar="JSON",
                   help="report of benchmarks.cpu_noise_ceiling: its figures (what ranking by one measurement "
                        "reaches against another) are printed and stored next to the model's")
    p.add_argument("--no-cv", action="store_true", help="skip evaluation, only train the model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--estimators", type=int, default=300, help="boosting rounds (default 300)")
    p.add_argument("--max-depth", type=int, default=5)
    p.add_argument("--learning-rate", type=float, default=0.05)
    p.add_argument("--min-samples-leaf", type=int, default=5, help="smallest leaf of a tree (default 5)")
    p.add_argument("--disturbed-weight", type=float, default=1.0,
                   help="training weight of records marked disturbed (stalled rounds, a spread the measurer "
                        "never calmed); they are always kept and counted in the report (default 1)")
    p.add_argument("--allow-synthetic", action="store_true",
                   help="accept synthetic records (tests only; the model is marked synthetic)")
    p.set_defaults(func=run)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, private keys dropped."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{report['rows']} measurements, {report['groups']} kernel problems, "
                  f"{report['kernels']} kernels, devices {', '.join(report['devices'])}"
                  + (" [bold red](SYNTHETIC records)[/]" if report["synthetic"] else ""))
    cv = report.get("cv")
    if not cv:
        return
    table = Table(title=f"held-out kernels ({cv['folds']}-fold CV, unit held out: {cv['holdout']}, "
                        f"objective: {report.get('objective', 'logtime')})")
    for col in ("model", "Spearman ρ", "top-1 regret", "top-5 recall"):
        table.add_column(col)
    for model in ("gbm", "roofline", "random"):
        o = cv[model]["overall"]
        table.add_row(model, _fmt(o["spearman"]), _fmt(o["top1_regret"], True), _fmt(o["top5_recall"], True))
    console.print(table)
    marked = cv.get("disturbed")
    if marked:
        console.print(f"disturbed measurements: {marked['rows']} of {marked['of_rows']} rows in "
                      f"{marked['groups_with_any']} kernel problems (kept); scored without them: " + " | ".join(
                          f"{m} ρ {_fmt(cv['calm'][m]['spearman'])} top-5 {_fmt(cv['calm'][m]['top5_recall'], True)}"
                          for m in ("gbm", "roofline")))
    by_model = report.get("cv_by_model")
    if by_model:
        console.print("held out by model (gbm / roofline / random): " + " | ".join(
            f"{m} ρ {_fmt(by_model[m]['overall']['spearman'])} regret {_fmt(by_model[m]['overall']['top1_regret'], True)}"
            f" top-5 {_fmt(by_model[m]['overall']['top5_recall'], True)}" for m in ("gbm", "roofline", "random")))
    kinds = Table(title="by kernel kind (gbm / roofline / random)")
    for col in ("kind", "problems", "Spearman ρ", "top-1 regret", "top-5 recall"):
        kinds.add_column(col)
    for kind, o in cv["gbm"]["by_kind"].items():
        r, x = cv["roofline"]["by_kind"][kind], cv["random"]["by_kind"][kind]
        kinds.add_row(kind, str(int(o["groups"])),
                      " / ".join(_fmt(v["spearman"]) for v in (o, r, x)),
                      " / ".join(_fmt(v["top1_regret"], True) for v in (o, r, x)),
                      " / ".join(_fmt(v["top5_recall"], True) for v in (o, r, x)))
    console.print(kinds)
    for tr in report.get("transfer", []):
        t = Table(title=f"transfer {tr['source']} -> {tr['target']} (gbm; roofline for reference)")
        for col in ("target kernels in training", "Spearman ρ", "top-1 regret", "top-5 recall"):
            t.add_column(col)
        for k, res in tr["shots"].items():
            g, r = res["gbm"], res["roofline"]
            t.add_row(k, f"{_fmt(g['spearman'])} ({_fmt(r['spearman'])})",
                      f"{_fmt(g['top1_regret'], True)} ({_fmt(r['top1_regret'], True)})",
                      f"{_fmt(g['top5_recall'], True)} ({_fmt(r['top5_recall'], True)})")
        console.print(t)
    for label, c in report.get("noise_ceiling", {}).items():
        console.print(f"noise ceiling ({label} labels, one measurement ranked against another over "
                      f"{c['groups_compared']} problems): ρ {_fmt(c['spearman'])} (perfect model ≈ "
                      f"{_fmt(c['spearman_perfect_estimate'])}), top-5 {_fmt(c['top5_recall'], True)}")
    verdict = report["targets"]
    line = (f"targets (ρ ≥ {TARGET_SPEARMAN}, top-5 recall ≥ {TARGET_TOP5:.0%}, beat roofline): "
            + ("[green]met[/]" if verdict["met"] else "[red]not met[/]"))
    if not verdict["counts"]:
        line += " [bold red]— synthetic records: this does not count[/]"
    console.print(line)


def _targets(cv: dict[str, Any], synthetic: bool) -> dict[str, Any]:
    g, r = cv["gbm"]["overall"], cv["roofline"]["overall"]
    checks = {
        "spearman": g["spearman"] >= TARGET_SPEARMAN,
        "top5_recall": g["top5_recall"] >= TARGET_TOP5,
        "beats_roofline_spearman": g["spearman"] > r["spearman"],
        "beats_roofline_top5": g["top5_recall"] > r["top5_recall"] or g["top5_recall"] == 1.0,
    }
    return {"checks": checks, "met": all(checks.values()), "counts": not synthetic}


def run(args: argparse.Namespace) -> int:
    """Train, evaluate, save; returns the exit code."""
    from ..costmodel.records import RecordError, read_records
    from ..costmodel.train import train_model, write_plots

    try:
        records = read_records(*args.data)
    except RecordError as exc:
        return fail(exc, 1)
    if any(r.synthetic for r in records) and not args.allow_synthetic:
        return fail("the data contains synthetic records; pass --allow-synthetic (tests only)", 4)
    from ..costmodel.cpu import is_cpu_device

    objective = args.objective
    if objective is None:
        cpu = args.feature_set == "cpu" or (args.feature_set is None and records
                                             and all(is_cpu_device(r.device()) for r in records))
        objective = "auto" if cpu else "logtime"
    try:
        model, report = train_model(records, seed=args.seed, n_splits=args.folds, holdout=args.holdout,
                                    evaluate=not args.no_cv, objective=objective, feature_set=args.feature_set,
                                    n_estimators=args.estimators, max_depth=args.max_depth,
                                    learning_rate=args.learning_rate, min_samples_leaf=args.min_samples_leaf,
                                    disturbed_weight=args.disturbed_weight)
    except ValueError as exc:
        return fail(f"not enough data to train: {exc}", 3)
    out = Path(args.out)
    try:
        model.save(out)
    except OSError as exc:
        return fail(f"cannot write the model to {out}: {exc.strerror or exc}", 1)
    report["model"] = str(out)
    if args.noise_ceiling:
        try:
            doc = json.loads(Path(args.noise_ceiling).read_text())
            report["noise_ceiling"] = {label: {**c["overall"], "spearman_perfect_estimate": c["spearman_perfect_estimate"],
                                               "groups_compared": c["groups"]} for label, c in doc["a_vs_b"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return fail(f"cannot read the noise-ceiling report {args.noise_ceiling}: {exc}", 1)
    if "cv" in report:
        report["targets"] = _targets(report["cv"], report["synthetic"])
        g, r = report["cv"]["gbm"]["overall"], report["cv"]["roofline"]["overall"]
        report["beats_roofline"] = bool(g["spearman"] > r["spearman"] and g["top1_regret"] < r["top1_regret"]
                                        and g["top1_regret_median"] <= r["top1_regret_median"]
                                        and g["top5_recall"] >= r["top5_recall"])
        if args.ship_to:
            if report["beats_roofline"] and not report["synthetic"]:
                model.save(args.ship_to)
                report["shipped"] = str(args.ship_to)
            else:
                report["shipped"] = None
                log.warning("model not shipped to %s: it does not beat the roofline on held-out kernels",
                            args.ship_to)
        if not args.no_plots:
            plot_dir = Path(args.plots) if args.plots else out.parent / (out.stem + "_plots")
            report["plots"] = [str(p) for p in write_plots(report["_data"], report["_oof"], report["cv"], plot_dir)]
    _print_report(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(_clean(report), indent=1, sort_keys=True))
    return 0
