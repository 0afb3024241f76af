"""``tilewright autotune module:factory``: tune every kernel of a model into the tuning database.

The factory returns ``(model, example_inputs)``; its kernels come from
``tilewright.frontend.api.tunable_kernels``. A factory may also return a list of
``TunableKernel`` objects directly. Re-running the same command resumes (finished trials are
kept; a trial that was running when the process died is re-run); several machines running it
against one PostgreSQL URL share each kernel's Optuna study.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from ..autotune.model_kernels import kernels_of, load_target
from ._common import fail

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``autotune`` sub-command."""
    p = subparsers.add_parser("autotune", help="tune every kernel of a model ahead of time",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="module:factory returning (model, example_inputs)")
    p.add_argument("--trials", type=int, default=30, help="measured trials per kernel (default 30)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per kernel")
    p.add_argument("--storage", default=None,
                   help="SQLAlchemy URL of the tuning database and studies (default: local SQLite)")
    p.add_argument("--workers", type=int, default=1, help="local processes per kernel's study")
    p.add_argument("--sampler", choices=("tpe", "cmaes", "random"), default="tpe")
    p.add_argument("--patience", type=int, default=None,
                   help="stop a kernel after this many trials without improvement")
    p.add_argument("--seed", type=int, default=None, help="sampler seed")
    p.add_argument("--no-costmodel", action="store_true", help="search without the cost model")
    p.add_argument("--replay", default=None, metavar="FILE",
                   help="answer from a timing-record file instead of measuring (the winners are "
                        "stored as replayed and never used at compile time)")
    p.add_argument("--heartbeat", type=int, default=10,
                   help="seconds between trial heartbeats; a trial silent for 3x this is re-run")
    p.add_argument("--target", dest="kernel_target", choices=("auto", "cpu", "interpreter"), default="auto",
                   help="without a GPU: tune the model's native C++ kernels with real timings (cpu, the default "
                        "when a C++ compiler is found) or its Triton kernels in the interpreter")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--plot", default=None, metavar="DIR", help="write best-so-far curves as PNG here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _fmt_time(t: float | None) -> str:
    return "-" if t is None or not math.isfinite(t) else f"{t * 1e6:.2f} us"


def run(args: argparse.Namespace) -> int:
    """Run the command; 0 when every kernel got a working config."""
    import sqlalchemy
    from rich.console import Console

    from ..autotune.measure import ReplayMeasurer
    from ..autotune.search import SearchSettings
    from ..autotune.tuner import default_measurer, tune_kernels
    from ..config import config

    err = Console(stderr=True)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    import torch

    if not torch.cuda.is_available() and not args.replay:
        # NOTE: no GPU: a model's kernels are the native CPU target's (real timings) unless
        # --target interpreter; Triton kernels run in Triton's interpreter (labelled timings).
        from ..targets import native_cpu_problem

        problem = native_cpu_problem() if args.kernel_target != "interpreter" else "--target interpreter"
        if args.kernel_target == "cpu" and problem is not None:
            return fail(f"--target cpu: {problem}")
        if problem is None:
            config.target = "cpu"
        config.interpret = True
        if os.environ.get("TRITON_INTERPRET", "") in ("", "0"):
            os.environ["TRITON_INTERPRET"] = "1"
    try:
        measurer = ReplayMeasurer.from_file(args.replay) if args.replay else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return fail(f"cannot replay {args.replay}: {why}")
    try:
        kernels = kernels_of(load_target(args.target))
    except Exception as exc:
        return fail(f"cannot get kernels from {args.target}: {type(exc).__name__}: {exc}")
    if not kernels:
        return fail("the model has no tunable kernels", 1)
    if measurer is None:
        measurer = default_measurer(None, kernels[0])
    info = measurer.device_info()
    label = measurer.label if args.replay else info["timing_label"]
    if args.replay:
        err.print(f"Replayed timings from {args.replay}: nothing is measured; the winners are "
                  "stored with timing source 'replay' and never used at compile time.",
                  soft_wrap=True)
    elif not info.get("is_gpu"):
        err.print(f"[yellow]No GPU: {label}.[/yellow]")
    storage = args.storage or config.tuning_url()
    settings = SearchSettings(sampler=args.sampler, trials=args.trials, timeout_s=args.timeout,
                              patience=args.patience, seed=args.seed, heartbeat_s=args.heartbeat,
                              grace_s=3 * args.heartbeat)
    try:
        results = tune_kernels(kernels, storage_url=storage, workers=args.workers, measurer=measurer,
                               cost_model=None if args.no_costmodel else "auto",
                               progress=not (args.no_progress or args.json), settings=settings,
                               kernel_source=args.target)
    except KeyboardInterrupt:
        err.print("interrupted: finished trials are stored; run the same command to resume")
        return 130
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return fail(f"tuning database {_safe_url(storage)}: {exc}")
    if args.plot:
        try:
            write_plots(results, Path(args.plot), label)
        except OSError as exc:
            return fail(f"cannot write plots to {args.plot}: {exc.strerror or exc}")
    ok = all(r.config is not None for r in results)
    if args.json:
        print(json.dumps({"device": info, "timing_label": label,
                          "timing_source": measurer.source, "storage": _safe_url(storage),
                          "ok": ok, "kernels": [r.to_dict() for r in results]}, indent=2, default=str))
    else:
        print_summary(results, label)
    return 0 if ok else 1


def _safe_url(url: str) -> str:
    """The URL without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<url>"


def print_summary(results: list[Any], label: str) -> None:
    """A rich table: kernel, trials, best time, default config's time, speedup."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"autotune summary ({label})")
    for col in ("kernel", "trials", "failed", "best time", "default time", "speedup", "best config"):
        table.add_column(col)
    for r in results:
        speedup = f"{r.speedup:.2f}x" if r.speedup else "-"
        table.add_row(r.kernel, str(r.trials), str(r.failed), _fmt_time(r.time_s),
                      _fmt_time(r.default_time_s), speedup, json.dumps(r.config) if r.config else "none")
    Console().print(table)


def write_plots(results: list[Any], out_dir: Path, label: str) -> list[Path]:
    """One PNG per kernel with the best-so-far time against measured trials."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for r in results:
        ys = [y * 1e6 if math.isfinite(y) else float("nan") for y in r.history]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.step(range(1, len(ys) + 1), ys, where="post", label="best so far")
        if r.default_time_s:
            ax.axhline(r.default_time_s * 1e6, color="grey", linestyle="--", label="default config")
        ax.set_xlabel("measured trial")
        ax.set_ylabel("time (us)")
        ax.set_title(f"{r.kernel}\n{label}", fontsize=9)
        ax.legend()
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in r.kernel)
        path = out_dir / f"{safe}-{r.problem_key[:8]}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
