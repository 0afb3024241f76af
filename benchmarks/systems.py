"""The systems a benchmark compares, and the one switch for the system under test.

Systems (names used in the JSON):

* ``eager``                  PyTorch eager (cuBLAS/cuDNN/SDPA underneath on a GPU).
* ``tilewright``             ``torch.compile(backend="tilewright")`` with default configs: an
                             empty tuning database, no tuning at compile time.
* ``tilewright_tuned``       the same with the user's tuning database and
                             ``tilewright.config.autotune`` on (database misses are tuned).
* ``inductor``               ``torch.compile`` default.
* ``inductor_max_autotune``  ``torch.compile(mode="max-autotune")``.
* ``vendor:<name>``          a vendor-library variant of a kernel case (see ``cases``).

Until the tilewright backend exists, ``TILEWRIGHT_BENCH_SUT`` (or ``--sut``) substitutes another
Dynamo backend (``aot_eager``, ``inductor``, ``eager``) for the tilewright systems; the JSON
records the substitute so no number is mistaken for tilewright's.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

log = logging.getLogger(__name__)

TILEWRIGHT_SYSTEMS = ("tilewright", "tilewright_tuned")
BASELINE_SYSTEMS = ("eager", "inductor", "inductor_max_autotune")


@dataclass
class SutSettings:
    """How the tilewright systems are realised in this run.

    Attributes:
        backend: the Dynamo backend standing for tilewright ("tilewright" unless substituted).
        cache_dir: fresh cache directory for this run (cold compiles).
        tuning_db_url: the user's tuning database, used by ``tilewright_tuned``.
        tune_trials: trials per kernel for ``tilewright_tuned``.
    """

    backend: str = "tilewright"
    cache_dir: Path | None = None
    tuning_db_url: str | None = None
    tune_trials: int = 8

    @property
    def substitute(self) -> bool:
        """True when another backend stands in for tilewright."""
        return self.backend != "tilewright"


SUT = SutSettings(backend=os.environ.get("TILEWRIGHT_BENCH_SUT", "tilewright"))
"""The process-wide switch (set by the CLI)."""


def import_tilewright() -> Any:
    """Import tilewright (registers the backend); honours ``TILEWRIGHT_INTERPRET`` set earlier."""
    import tilewright  # noqa: PLC0415 - imported late so the CLI can set the environment first

    return tilewright


def tilewright_available() -> bool:
    """Whether ``import tilewright`` works and exposes a registered backend."""
    try:
        import_tilewright()
        torch._dynamo.lookup_backend("tilewright")  # loads the entry point: fails if it is missing
        return True
    except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
        log.info("tilewright not importable: %s", exc)
        return False


def user_tuning_db_url() -> str | None:
    """The tuning database the user would get by default (read before the run redirects caches)."""
    try:
        return str(import_tilewright().config.tuning_url())
    except Exception:  # noqa: BLE001
        return None


def snapshot_tuning_db(url: str | None, dest_dir: Path) -> str | None:
    """A run-private copy of a SQLite tuning database, so tuning during the run leaves the user's
    file untouched; other URLs (a shared PostgreSQL study) are returned unchanged."""
    if not url or not url.startswith("sqlite:///"):
        return url
    src = Path(url[len("sqlite:///"):])
    dest = dest_dir / "tuning-snapshot.db"
    dest_dir.mkdir(parents=True, exist_ok=True)
    if src.is_file():
        import shutil  # noqa: PLC0415

        shutil.copyfile(src, dest)
    return f"sqlite:///{dest}"


def _configure_tilewright(tuned: bool) -> None:
    """Point tilewright at a fresh database (defaults) or the user's one (tuned)."""
    cfg = getattr(import_tilewright(), "config", None)
    if cfg is None:
        return
    if SUT.cache_dir is not None and hasattr(cfg, "cache_dir"):
        cfg.cache_dir = SUT.cache_dir
    if hasattr(cfg, "tuning_db_url"):
        fresh = f"sqlite:///{SUT.cache_dir / 'tuning.db'}" if SUT.cache_dir else None
        cfg.tuning_db_url = (SUT.tuning_db_url or None) if tuned else fresh
    if hasattr(cfg, "autotune"):
        cfg.autotune = tuned
    if tuned and hasattr(cfg, "autotune_trials"):
        cfg.autotune_trials = SUT.tune_trials


def prepare(system: str, target: Any) -> Any:
    """Return ``target`` as ``system`` runs it (compiled lazily, on the first call)."""
    if system == "eager" or system.startswith("vendor:"):
        return target
    if system in TILEWRIGHT_SYSTEMS:
        if not SUT.substitute:
            _configure_tilewright(tuned=system == "tilewright_tuned")
        return torch.compile(target, backend=SUT.backend)
    if system == "inductor":
        return torch.compile(target)
    if system == "inductor_max_autotune":
        return torch.compile(target, mode="max-autotune")
    raise ValueError(f"unknown system {system!r}")


def explain(target: Any, args: tuple[Any, ...]) -> dict[str, Any] | None:
    """``tilewright.explain(target, *args).to_dict()``, or None when substituted/unavailable."""
    if SUT.substitute or not args:
        return None
    tw = import_tilewright()
    if not hasattr(tw, "explain"):
        return None
    report = tw.explain(target, *args)
    return report.to_dict() if hasattr(report, "to_dict") else dict(report)


@contextlib.contextmanager
def collecting(system: str) -> Iterator[dict[str, Any]]:
    """Collect tilewright's compile report for graphs compiled inside the block.

    The yielded dict is filled on exit with :func:`summarize_explain` of the report (kernels,
    fallbacks, coverage, phase timings); it stays empty for other systems, substitutes, or a
    tilewright without ``tilewright.report.collect``. Unlike ``explain`` this costs no extra
    compile.
    """
    holder: dict[str, Any] = {}
    collect = None
    if system in TILEWRIGHT_SYSTEMS and not SUT.substitute:
        try:
            from tilewright.report import collect  # noqa: PLC0415
        except ImportError:
            collect = None
    if collect is None:
        yield holder
        return
    with collect() as report:
        yield holder
    holder.update(summarize_explain(report.to_dict()) or {})


def summarize_explain(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parts of an explain report worth keeping in the results (counts, coverage, timings)."""
    if info is None:
        return None
    out: dict[str, Any] = {}
    kernels = info.get("kernels")
    fallbacks = info.get("fallbacks")
    out["n_kernels"] = len(kernels) if isinstance(kernels, (list, tuple, dict)) else kernels
    out["n_fallbacks"] = len(fallbacks) if isinstance(fallbacks, (list, tuple, dict)) else fallbacks
    if isinstance(fallbacks, (list, tuple)):
        out["fallbacks"] = [_fallback_text(f) for f in fallbacks[:10]]
    for key in ("coverage", "attention_fused", "timings"):
        if key in info:
            out[key] = info[key]
    return out


def warm_up(system: str, device: torch.device) -> float:
    """Compile and run a trivial function once so one-time start-up costs (imports, worker
    pools) are not charged to the first case. Returns the seconds it took."""
    import time  # noqa: PLC0415

    x = torch.ones(8, device=device)
    t0 = time.perf_counter()
    fn = prepare(system, lambda t: torch.sin(t) * 2 + 1)
    fn(x)
    reset_compilers()
    return time.perf_counter() - t0


def _fallback_text(entry: Any) -> str:
    if isinstance(entry, dict) and "op" in entry:
        return f"{entry['op']}: {entry.get('reason', '')}"[:200]
    return str(entry)[:200]


def reset_compilers() -> None:
    """Forget compiled code so the next compile starts over (caches on disk are kept)."""
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def set_cache_dirs(root: Path) -> None:
    """Fresh, run-private cache directories for tilewright, Inductor and Triton (cold compiles)."""
    for name, env in (("tilewright", "TILEWRIGHT_CACHE_DIR"), ("inductor", "TORCHINDUCTOR_CACHE_DIR"),
                      ("triton", "TRITON_CACHE_DIR")):
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        os.environ[env] = str(path)
    SUT.cache_dir = root / "tilewright"
    # NOTE: each case/dtype runs under its own reset; a higher limit avoids silent eager fallback.
    for attr in ("cache_size_limit", "recompile_limit"):
        if hasattr(torch._dynamo.config, attr):
            setattr(torch._dynamo.config, attr, 64)
