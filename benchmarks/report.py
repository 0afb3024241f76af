"""Render suite results as Markdown tables and PNG charts.

Usage::

    python -m benchmarks.report benchmarks/results/            # every *.json in the folder
    python -m benchmarks.report a.json b.json --out-dir docs/img --no-charts

Each results file becomes one section naming its card, driver, torch and Triton versions. Every
speedup is printed beside the two times it divides, and the geomean speedups of tilewright over
eager stand next to Inductor's from the same run, over the same cases.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

#: Column order of the timing tables (vendor columns follow).
SYSTEM_ORDER = ("eager", "tilewright", "tilewright_tuned", "inductor", "inductor_max_autotune")
SHORT = {"eager": "eager", "tilewright": "tilewright", "tilewright_tuned": "tw tuned",
         "inductor": "inductor", "inductor_max_autotune": "max-autotune"}

RowKey = tuple[str, str, str, str]  # (category, case, dtype, mode)


def load(paths: Iterable[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Results documents from files and folders (``*.json`` directly inside a folder)."""
    docs: list[tuple[Path, dict[str, Any]]] = []
    for raw in paths:
        p = Path(raw)
        files = sorted(p.glob("*.json")) if p.is_dir() else [p]
        for f in files:
            try:
                doc = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("skipping %s: %s", f, exc)
                continue
            if isinstance(doc, dict) and str(doc.get("schema", "")).startswith("tilewright-bench/"):
                docs.append((f, doc))
    return docs


def _mode(rec: dict[str, Any]) -> str:
    return "train" if rec.get("train") else "infer"


def timings(doc: dict[str, Any]) -> dict[RowKey, dict[str, float]]:
    """Median milliseconds by row and system, from successful timing records."""
    table: dict[RowKey, dict[str, float]] = defaultdict(dict)
    for rec in doc.get("records", []):
        if rec.get("phase") == "timing" and rec.get("status") == "ok" and rec.get("median_ms"):
            key = (rec["category"], rec["case"], rec["dtype"], _mode(rec))
            table[key][rec["system"]] = float(rec["median_ms"])
    return dict(table)


def systems_in(rows: dict[RowKey, dict[str, float]]) -> list[str]:
    """Systems present, in table order (vendor variants last)."""
    present = {s for row in rows.values() for s in row}
    ordered = [s for s in SYSTEM_ORDER if s in present]
    return ordered + sorted(s for s in present if s not in SYSTEM_ORDER)


def geomean(values: Sequence[float]) -> float | None:
    """Geometric mean, None when empty."""
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def speedups(rows: dict[RowKey, dict[str, float]], system: str, baseline: str,
             category: str | None = None) -> dict[RowKey, float]:
    """``baseline_ms / system_ms`` for the rows that have both."""
    return {k: r[baseline] / r[system] for k, r in rows.items()
            if system in r and baseline in r and (category is None or k[0] == category)}


def geomean_summary(rows: dict[RowKey, dict[str, float]], category: str, dtype: str | None = None,
                    mode: str | None = None) -> list[tuple[str, float, int]]:
    """Geomean speedup over eager per system, each over the rows where tilewright was also timed
    (optionally only rows of one dtype and/or mode).

    NOTE: restricting every system to tilewright's rows makes the geomeans comparable.
    """
    shared = {k for k, r in rows.items() if k[0] == category and "eager" in r and "tilewright" in r
              and dtype in (None, k[2]) and mode in (None, k[3])}
    out = []
    for system in systems_in({k: rows[k] for k in shared}):
        if system == "eager":
            continue
        sp = [v for k, v in speedups(rows, system, "eager", category).items() if k in shared]
        g = geomean(sp)
        if g is not None:
            out.append((system, g, len(sp)))
    return out


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def header(doc: dict[str, Any], path: Path | None = None) -> str:
    """One section heading naming the card and versions."""
    env = doc.get("env", {})
    card = env.get("gpu_name") or f"CPU ({env.get('cpu') or 'unknown'}, {env.get('cpu_count')} cores)"
    lines = [f"### {card} — {doc.get('mode', '?')} mode, {env.get('date', '?')[:10]}", ""]
    bits = [f"driver {env['driver']}" if env.get("driver") else None,
            f"CUDA {env['cuda']}" if env.get("cuda") else None,
            f"torch {env.get('torch')}", f"Triton {env.get('triton')}",
            f"transformers {env.get('transformers')}" if env.get("transformers") else None]
    lines.append(", ".join(b for b in bits if b) + (f" — `{path.name}`" if path else ""))
    sut = doc.get("sut", {})
    if sut.get("substitute"):
        lines += ["", f"> **Substitute run:** `{sut.get('backend')}` stood in for tilewright; "
                      "the tilewright columns are not tilewright's numbers."]
    if doc.get("mode") == "cpu":
        load = env.get("load_avg_1m")
        lines += ["", "> CPU mode: tilewright kernels run in Triton's interpreter; its times are not "
                      "performance numbers (correctness and compile time are the point)."
                  + (f" Load average at the start: {load} on {env.get('cpu_count')} cores." if load is not None else "")]
    return "\n".join(lines)


def timing_table(doc: dict[str, Any], category: str) -> str:
    """Markdown table: each system's median ms with its speedup over eager; tilewright vs Inductor."""
    rows = {k: v for k, v in timings(doc).items() if k[0] == category}
    if not rows:
        return ""
    cols = systems_in(rows)
    head = ["case", "dtype", "mode"] + [f"{SHORT.get(c, c)} ms" + ("" if c == "eager" else " (× eager)")
                                        for c in cols]
    if "tilewright" in cols and "inductor" in cols:
        head.append("tilewright × inductor")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (cat, case, dtype, mode), r in sorted(rows.items()):
        cells = [case, dtype, mode]
        for c in cols:
            if c not in r:
                cells.append("—")
            elif c == "eager" or "eager" not in r:
                cells.append(_fmt_ms(r[c]))
            else:
                cells.append(f"{_fmt_ms(r[c])} ({r['eager'] / r[c]:.2f}×)")
        if "tilewright" in cols and "inductor" in cols:
            cells.append(f"{r['inductor'] / r['tilewright']:.2f}×" if "tilewright" in r and "inductor" in r else "—")
        lines.append("| " + " | ".join(cells) + " |")
    notes = doc.get("cases", {})
    if doc.get("mode") == "gpu" and notes:
        shown = sorted({case for (_, case, _, _) in rows})
        lines += ["", "Sizes: " + "; ".join(f"{c}: {notes[c]}" for c in shown if notes.get(c)) + "."]
    all_rows = timings(doc)
    groups = sorted({(k[2], k[3]) for k in rows})
    summaries = [(f"{dtype} {mode}", geomean_summary(all_rows, category, dtype, mode)) for dtype, mode in groups]
    if len(groups) > 1:
        summaries.append(("all", geomean_summary(all_rows, category)))
    for label, summary in summaries:
        if summary:
            parts = [f"{SHORT.get(s, s)} **{g:.2f}×** (n={n})" for s, g, n in summary]
            lines += ["", f"Geomean speedup over eager, {category}s {label} (same cases for every system): "
                      + ", ".join(parts)]
    return "\n".join(lines)


def correctness_table(doc: dict[str, Any]) -> str:
    """Pass counts, and a row for every check that did not pass."""
    recs = [r for r in doc.get("records", []) if r.get("phase") == "correctness"]
    if not recs:
        return ""
    counts: dict[str, int] = defaultdict(int)
    for r in recs:
        counts[r.get("status", "?")] += 1
    lines = ["Correctness vs float64 (" + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + ")"]
    bad = [r for r in recs if r.get("status") != "ok"]
    if bad:
        lines += ["", "| case | dtype | mode | status | rel. error | eager's | tol | error |", "|---|---|---|---|---|---|---|---|"]
        for r in bad:
            err = r.get("error", "")
            lines.append(f"| {r['case']} | {r['dtype']} | {_mode(r)} | {r.get('status')} | "
                         f"{_sci(r.get('max_rel_err'))} | {_sci(r.get('eager_rel_err'))} | {_sci(r.get('tol'))} | "
                         f"{str(err)[:80].replace('|', '/')} |")
    return "\n".join(lines)


def _sci(x: Any) -> str:
    return f"{x:.1e}" if isinstance(x, (int, float)) else "—"


EXCLUDED_PHASES = ("triton_compile",)


def backend_pipeline_s(rec: dict[str, Any]) -> float | None:
    """tilewright's own pipeline time from its phase timings, Triton's compile excluded."""
    phases = rec.get("phases_s")
    if isinstance(phases, dict) and phases:
        return sum(float(v) for k, v in phases.items() if k not in EXCLUDED_PHASES)
    return None


def compile_table(doc: dict[str, Any]) -> str:
    """Compile times of the models: first-call seconds by cache state, the end-to-end compile
    (first call minus second, Dynamo capture included) for every system, and tilewright's own
    phase timings."""
    by: dict[tuple[str, str, str, str], dict[str, Any]] = defaultdict(dict)
    for r in doc.get("records", []):
        if r.get("status") not in ("ok", "mismatch") or r.get("category") != "model" or "first_call_s" not in r:
            continue
        if r.get("system") == "eager" or str(r.get("system", "")).startswith("vendor:"):
            continue
        v = by[(r["case"], r["dtype"], _mode(r), r["system"])]
        cache = r.get("cache", "cold")
        v.setdefault(f"first_{cache}", r["first_call_s"])
        if isinstance(r.get("pipeline_s"), (int, float)):
            v.setdefault(f"e2e_{cache}", r["pipeline_s"])
        if backend_pipeline_s(r) is not None and "phases" not in v:
            v["phases"], v["backend"] = r["phases_s"], backend_pipeline_s(r)
    if not by:
        return ""
    lines = ["| model | dtype | mode | system | first call s (cold / warm cache) | compile s, 1st − 2nd call "
             "(cold / warm) | tilewright phases s (Triton compile excluded) |", "|---|---|---|---|---|---|---|"]
    for (case, dtype, mode, system), v in sorted(by.items()):
        phases = ", ".join(f"{k} {float(t):.2f}" for k, t in v.get("phases", {}).items())
        backend = f"{v['backend']:.2f} ({phases})" if "backend" in v else "—"
        lines.append(f"| {case} | {dtype} | {mode} | {system} | {_num(v.get('first_cold'))} / "
                     f"{_num(v.get('first_warm'))} | {_num(v.get('e2e_cold'))} / {_num(v.get('e2e_warm'))} | "
                     f"{backend} |")
    return "\n".join(lines)


def _num(x: Any) -> str:
    return f"{x:.2f}" if isinstance(x, (int, float)) else "—"


def skipped_text(doc: dict[str, Any], limit: int = 12) -> str:
    """What the budget (or a missing dependency) dropped."""
    skipped = doc.get("skipped", [])
    if not skipped:
        return "Nothing skipped." if doc.get("finished") else "Run did not finish (partial results)."
    reasons: dict[str, int] = defaultdict(int)
    for s in skipped:
        reasons[s["reason"].split(":")[0]] += 1
    shown = ", ".join(f"`{s['key']}`" for s in skipped[:limit])
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return (f"Skipped {len(skipped)} items (" + ", ".join(f"{k}: {v}" for k, v in reasons.items()) +
            f"): {shown}{more}.")


def markdown(docs: Sequence[tuple[Path | None, dict[str, Any]]]) -> str:
    """The full Markdown report for several results documents."""
    parts: list[str] = []
    for path, doc in docs:
        parts.append(header(doc, path))
        gpu = doc.get("mode") == "gpu"
        sections = [("Kernels (median ms, CUDA events, L2 flushed)", timing_table(doc, "kernel") if gpu else ""),
                    ("Models (median ms, CUDA events, L2 flushed)", timing_table(doc, "model") if gpu else ""),
                    ("Compile time", compile_table(doc)),
                    ("Correctness", correctness_table(doc))]
        for title, body in sections:
            if body:
                parts += [f"#### {title}", body]
        if not gpu and timings(doc):
            # NOTE: interpreter and shared-CPU wall times would read as performance claims.
            parts.append(f"{sum(len(r) for r in timings(doc).values())} CPU timing records (Triton "
                         "interpreter, wall clock) are in the JSON but not tabulated.")
        parts.append(skipped_text(doc))
    return "\n\n".join(parts) + "\n"


def console_summary(doc: dict[str, Any]) -> str:
    """The short table the suite prints last."""
    return markdown([(None, doc)])


def charts(path: Path, doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """PNG bar charts per category: tilewright's speedup over each baseline, and eager-relative
    speedups of tilewright next to Inductor's. Returns the files written."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rows = timings(doc)
    card = doc.get("env", {}).get("gpu_name") or "CPU"
    for category in ("kernel", "model"):
        cat_rows = {k: r for k, r in rows.items() if k[0] == category and "tilewright" in r}
        baselines = [s for s in systems_in(cat_rows) if s not in ("tilewright", "tilewright_tuned")]
        if not cat_rows or not baselines:
            continue
        labels = [f"{case}\n{dtype} {mode}" for (_, case, dtype, mode) in sorted(cat_rows)]
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.5))
        width = 0.8 / len(baselines)
        for i, base in enumerate(baselines):
            vals = [r[base] / r["tilewright"] if base in r else 0.0 for _, r in sorted(cat_rows.items())]
            ax.bar([x + i * width for x in range(len(labels))], vals, width, label=f"vs {SHORT.get(base, base)}")
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("tilewright speedup (baseline ms / tilewright ms)")
        ax.set_title(f"{card}: tilewright {category}s vs each baseline")
        ax.legend(fontsize=7)
        fig.tight_layout()
        target = out_dir / f"{path.stem}-{category}-speedup.png"
        fig.savefig(target, dpi=120)
        plt.close(fig)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the Markdown, write ``report.md`` and the charts into ``--out-dir``."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", help="results JSON files or folders holding them")
    p.add_argument("--out-dir", type=Path, default=None, help="where report.md and PNGs go (default: first folder)")
    p.add_argument("--no-charts", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    docs = load(args.inputs)
    if not docs:
        log.error("no results files found in %s", args.inputs)
        return 1
    first = Path(args.inputs[0])
    out_dir = args.out_dir or (first if first.is_dir() else first.parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown([(p_, d) for p_, d in docs])
    (out_dir / "report.md").write_text(text)
    if not args.no_charts:
        for path, doc in docs:
            if doc.get("mode") != "gpu":
                continue  # NOTE: interpreter timings are not performance numbers; no charts for them
            for png in charts(path, doc, out_dir):
                text += f"\n![{png.stem}]({png.name})\n"
        (out_dir / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
