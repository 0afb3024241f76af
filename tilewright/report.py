"""Compile reports: what each compiled graph became (kernels, fallbacks, coverage, timings).

The backend appends a :class:`GraphReport` for every graph it compiles to the active
:class:`Report` (see :func:`collect`); ``tilewright.explain`` returns the merged report.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

log = logging.getLogger(__name__)


#: kernel statuses: compiled but not launched yet, ran (its own code), fell back (reference ran)
NOT_RUN, RAN, FELL_BACK = "not run", "ran", "fell back"


@dataclass
class GraphReport:
    """Facts about one compiled graph (one specialisation of one forward/backward graph).

    Each entry of ``kernels`` carries ``compute_ops`` (how many compute ops it covers) and a
    ``status`` the runtime keeps current: ``not run``, ``ran`` or ``fell back`` (with the reason
    in ``fallback``). Coverage is computed from those statuses, so it counts what ran.
    """

    name: str
    kernels: list[dict[str, Any]] = field(default_factory=list)
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    compute_ops: int = 0
    attention_blocks: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    mode: str = ""
    #: the code generator and what it builds with (compiler, flags, ISA / Triton version, device)
    target: str = ""
    specialized: bool = False
    notes: list[str] = field(default_factory=list)
    #: opt-in approximate rewrites applied to this graph (sparse/low-rank weights, sparse attention):
    #: site, kind, method, params, error, expected_speedup, measured_speedup
    approximations: list[dict[str, Any]] = field(default_factory=list)
    #: the parameter-only part run once and cached (runtime/hoisted.py), None when nothing is:
    #: kernels, steps, compute_ops, cached_bytes, cached_values, parameters (parameters and
    #: buffers it reads) and recomputed (how often it ran; the runtime keeps it current)
    hoisted: dict[str, Any] | None = None
    #: the graph's launchable and template kernels, as the tuner takes them (not serialised)
    tunable_kernels: list[Any] = field(default_factory=list, repr=False, compare=False)

    @property
    def kernel_ops(self) -> int:
        """Compute ops inside kernels (generated or templates) that ran without falling back."""
        return sum(int(k.get("compute_ops", 0)) for k in self.kernels if k.get("status") == RAN)

    @property
    def attention_fused(self) -> int:
        """Attention blocks of this graph that ran in the fused attention kernel."""
        return sum(1 for k in self.kernels if k.get("attention") == "forward" and k.get("status") == RAN)

    def add_fallback(self, op: str, reason: str) -> None:
        """Record an op (or kernel) that runs by its ATen reference, and why."""
        entry = {"op": op, "reason": reason}
        if entry not in self.fallbacks:
            self.fallbacks.append(entry)

    def add_kernel(self, entry: dict[str, Any], compute_ops: int) -> dict[str, Any]:
        """Register a kernel's explain entry (status ``not run`` until the runtime launches it)."""
        entry["compute_ops"] = compute_ops
        entry.setdefault("status", NOT_RUN)
        entry.setdefault("fallback", None)
        self.kernels.append(entry)
        return entry


def hoisted_summary(hoisted: dict[str, Any]) -> str:
    """One line on a graph's hoisted part: "hoisted: 84 kernels (12 KiB cached), recomputed when
    any of 40 parameters/buffers changes (ran 1 time)"."""
    kib = hoisted.get("cached_bytes", 0) / 1024
    size = f"{kib:.0f} KiB" if kib >= 10 else f"{kib:.1f} KiB"
    n = hoisted.get("parameters", 0)
    when = f"recomputed when any of {n} parameters/buffers changes" if n else "computed once (shapes only)"
    ran = hoisted.get("recomputed", 0)
    return (f"hoisted: {hoisted.get('kernels', 0)} kernels, {hoisted.get('compute_ops', 0)} ops ({size} cached), "
            f"{when} (ran {ran} time{'s' if ran != 1 else ''})")


def mark_ran(entry: dict[str, Any] | None) -> None:
    """The runtime launched this kernel successfully (a fallen-back kernel stays fallen back)."""
    if entry is not None and entry.get("status") == NOT_RUN:
        entry["status"] = RAN


def mark_fell_back(entry: dict[str, Any] | None, reason: str) -> None:
    """The kernel failed (or mismatched its reference) and its reference runs instead."""
    if entry is not None:
        entry["status"] = FELL_BACK
        entry["fallback"] = reason


@dataclass
class Report:
    """The merged explain report over every graph compiled in one session."""

    graphs: list[GraphReport] = field(default_factory=list)

    @property
    def kernels(self) -> list[dict[str, Any]]:
        """Every generated kernel."""
        return [k for g in self.graphs for k in g.kernels]

    @property
    def fallbacks(self) -> list[dict[str, str]]:
        """Every op that runs as an extern/eager call, with its reason."""
        seen: list[dict[str, str]] = []
        for g in self.graphs:
            for f in g.fallbacks:
                if f not in seen:
                    seen.append(f)
        return seen

    @property
    def coverage(self) -> float:
        """Fraction of compute ops (views excluded) that ran inside tilewright's kernels.

        Ops of a kernel that fell back, of a graph that failed to compile or ran eagerly, and of
        extern calls count in the denominator only.
        """
        total = sum(g.compute_ops for g in self.graphs)
        return (sum(g.kernel_ops for g in self.graphs) / total) if total else 0.0

    @property
    def attention_fused(self) -> int:
        """Attention blocks executed by the fused attention kernel (forward graphs)."""
        return sum(g.attention_fused for g in self.graphs)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (JSON-serialisable)."""
        timings: dict[str, float] = {}
        for g in self.graphs:
            for k, v in g.timings.items():
                timings[k] = timings.get(k, 0.0) + v
        return {
            "kernels": self.kernels,
            "fallbacks": self.fallbacks,
            "coverage": round(self.coverage, 4),
            "attention_fused": self.attention_fused,
            "attention_blocks": [b for g in self.graphs for b in g.attention_blocks],
            "approximations": [a for g in self.graphs for a in g.approximations],
            "timings": timings,
            "kernel_status": {status: sum(1 for k in self.kernels if k.get("status") == status)
                              for status in (NOT_RUN, RAN, FELL_BACK)},
            "graphs": [{"name": g.name, "mode": g.mode, "target": g.target, "kernels": len(g.kernels),
                        "compute_ops": g.compute_ops,
                        "kernel_ops": g.kernel_ops, "specialized": g.specialized, "notes": g.notes,
                        "hoisted": g.hoisted}
                       for g in self.graphs],
        }

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), indent=2, default=str)

    def __str__(self) -> str:
        lines = [f"tilewright report: {len(self.graphs)} graph(s), {len(self.kernels)} kernel(s), "
                 f"coverage {self.coverage:.1%}, attention blocks fused {self.attention_fused}"]
        for g in self.graphs:
            lines.append(f"  graph {g.name} [{g.mode}]: {len(g.kernels)} kernels, "
                         f"{g.kernel_ops}/{g.compute_ops} compute ops in kernels")
            if g.target:
                lines.append(f"    target: {g.target}")
            if g.hoisted:
                lines.append(f"    {hoisted_summary(g.hoisted)}")
            for note in g.notes:
                lines.append(f"    note: {note}")
        if self.kernels:
            lines.append("")
            lines.append(f"  {'kernel':<34} {'kind':<10} {'ops':>4}  {'status':<9} {'from':<9} schedule")
            for k in self.kernels:
                sched = " ".join(f"{a}={b}" for a, b in k.get("schedule", {}).items())
                source = str(k.get("schedule_source", ""))[:9]
                status = str(k.get("status", ""))[:9]
                lines.append(f"  {k['name'][:34]:<34} {k['kind']:<10} {len(k.get('ops', [])):>4}  {status:<9} "
                             f"{source:<9} {sched}")
        blocks = [b for g in self.graphs for b in g.attention_blocks]
        if blocks:
            lines.append("")
            lines.append("  fused attention blocks:")
            for i, b in enumerate(blocks):
                lines.append(f"    {i}: {b.get('handles') or b.get('form', '')}")
        approx = [a for g in self.graphs for a in g.approximations]
        if approx:
            lines.append("")
            lines.append("  approximate rewrites (opt-in sparsity):")
            for a in approx:
                params = " ".join(f"{k}={v}" for k, v in a.get("params", {}).items())
                err, exp, meas = a.get("error"), a.get("expected_speedup"), a.get("measured_speedup")
                lines.append(f"    {a['site']} [{a['kind']}] {a['method']} {params}"
                             f"{'' if err is None else f'  error {err:.3g}'}"
                             f"{'' if exp is None else f'  expected {exp:.2f}x'}"
                             f"{'' if meas is None else f'  measured {meas:.2f}x'}"
                             f"{'  (' + a['note'] + ')' if a.get('note') else ''}")
        sized = [k for k in self.kernels if k.get("sizes")]
        if sized:
            lines.append("")
            lines.append("  sizes (specialised into the code | run-time arguments: a new size reuses the code):")
            for k in sized:
                fixed = ", ".join(f"{a}={b}" for a, b in k["sizes"]["specialised"].items()) or "-"
                runtime = ", ".join(k["sizes"]["runtime"]) or "-"
                lines.append(f"    {k['name'][:34]}: {fixed[:90]} | {runtime[:120]}")
        conv = [k for k in self.kernels if k.get("kind") == "conv" and k.get("shape")]
        if conv:
            lines.append("")
            lines.append("  convolutions:")
            for k in conv:
                lines.append(f"    {k['shape']}")
        if self.fallbacks:
            lines.append("")
            lines.append("  fallbacks (run as ATen calls):")
            for f in self.fallbacks:
                lines.append(f"    {f['op']}: {f['reason']}")
        return "\n".join(lines)


_active: list[Report] = []


@contextlib.contextmanager
def collect() -> Iterator[Report]:
    """Collect reports of every graph compiled inside the ``with`` block."""
    report = Report()
    _active.append(report)
    try:
        yield report
    finally:
        _active.remove(report)


#: reports of every graph compiled in this process (most recent last)
history: list[GraphReport] = []


def publish(graph_report: GraphReport) -> None:
    """Hand a finished graph report to active collectors and the process history."""
    history.append(graph_report)
    del history[:-256]
    for r in _active:
        r.graphs.append(graph_report)
