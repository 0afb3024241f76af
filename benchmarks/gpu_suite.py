"""The benchmark suite: correctness first, then timings and compile times, within a budget.

Usage::

    python -m benchmarks.gpu_suite --out DIR --budget-s 480      # on a GPU
    python -m benchmarks.gpu_suite --out DIR --cpu               # small sizes, interpreter

GPU mode checks every kernel case in float16/bfloat16/float32 (and the models) against a
float64 eager run, then times eager, tilewright (default and tuned configs), Inductor (default
and max-autotune) and vendor libraries in this process with CUDA events. CPU mode sets
``TILEWRIGHT_INTERPRET=1`` before tilewright is imported, runs the same cases at small sizes,
and compares tilewright's compile-pipeline time with Inductor's on the same models.

Results go to ``DIR/<date>-<card>.json``, rewritten after every item so a timeout loses nothing;
items that no longer fit the budget are recorded under ``skipped`` with the reason. The table is
printed last.
"""
from __future__ import annotations

import time

_T0 = time.monotonic()  # NOTE: taken before importing torch so the budget covers start-up.

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import torch  # noqa: E402

from . import systems  # noqa: E402
from .cases import ALL_CASES, KernelCase, Tensors, Workload  # noqa: E402
from .plan import Item, build_plan  # noqa: E402
from .timing import Budget, ItemTimeout, bench, deadline, timed_call  # noqa: E402

log = logging.getLogger("benchmarks.gpu_suite")

SCHEMA = "tilewright-bench/1"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
#: Relative-error floors per dtype: a tensor passes when its error vs float64 is within
#: ``ERR_FACTOR * eager's error on that tensor + floor * max(max|ref|, ABS_SCALE_FLOOR)``.
ERR_FLOOR = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}
ERR_FACTOR = 4.0
#: Smallest scale a tensor's floor is taken relative to (an all-zero reference gets a tiny
#: absolute floor instead of none).
ABS_SCALE_FLOOR = 1e-6


# ---------------------------------------------------------------------------------------------
# Correctness
# ---------------------------------------------------------------------------------------------

def relative_error(outs: Tensors, refs: Tensors) -> float:
    """Worst over tensors of ``max|out - ref| / max|ref|`` (inf on a shape mismatch or NaN).

    A summary for people; the verdict is :func:`check_tensors`, tensor by tensor.
    """
    if len(outs) != len(refs):
        return float("inf")
    worst = 0.0
    for out, ref in zip(outs, refs):
        if out.shape != ref.shape:
            return float("inf")
        ref64 = ref.detach().to(torch.float64)
        diff = (out.detach().to(torch.float64) - ref64).abs().max().item() if ref.numel() else 0.0
        scale = max(ref64.abs().max().item() if ref.numel() else 0.0, 1e-12)
        err = diff / scale
        if err != err:  # NaN
            return float("inf")
        worst = max(worst, err)
    return worst


def tolerance(dtype: str, eager_err: float) -> float:
    """The relative error a compiled tensor may have, given eager's relative error on it."""
    if not math.isfinite(eager_err):
        eager_err = 0.0  # NOTE: a broken eager result excuses nothing
    return ERR_FACTOR * eager_err + ERR_FLOOR.get(dtype, 1e-5)


def _abs_error(out: torch.Tensor, ref64: torch.Tensor) -> float:
    """``max|out - ref|`` (inf on a shape mismatch or a NaN where the reference has none)."""
    if out.shape != ref64.shape:
        return float("inf")
    if not ref64.numel():
        return 0.0
    diff = (out.detach().to(torch.float64) - ref64).abs()
    diff = torch.where(torch.isnan(ref64) & torch.isnan(out.detach().to(torch.float64)),
                       torch.zeros_like(diff), diff)
    err = diff.max().item()
    return float("inf") if err != err else err


def check_tensors(outs: Tensors, eager: Tensors, refs: Tensors, dtype: str) -> dict[str, Any]:
    """Judge each output and gradient on its own against the float64 reference.

    Tensor ``i`` passes when ``max|out_i - ref_i| <= ERR_FACTOR * max|eager_i - ref_i| +
    floor * max(max|ref_i|, ABS_SCALE_FLOOR)``: eager's error on *that* tensor buys slack
    for that tensor only, so a near-zero gradient that eager gets badly wrong cannot excuse
    another tensor (the worst-over-all-tensors check it replaces let all-zero gradients pass).

    Returns:
        ``ok``, the number of ``tensors`` and ``failing_tensors``, and for the tensor closest to
        (or furthest past) its bound: ``worst_tensor`` (index), ``max_rel_err`` and
        ``eager_rel_err`` (relative to ``max|ref|`` of that tensor) and ``tol`` (its bound in
        the same units; ``max_rel_err <= tol`` exactly when the whole check passes).
    """
    n = len(refs)
    if len(outs) != n or len(eager) != n:
        return {"ok": False, "tensors": n, "failing_tensors": n, "worst_tensor": None,
                "max_rel_err": float("inf"), "eager_rel_err": float("nan"), "tol": 0.0,
                "error": f"{len(outs)} tensors, expected {n}"}
    floor = ERR_FLOOR.get(dtype, 1e-5)
    worst: tuple[float, int, float, float, float] | None = None
    failing = 0
    for i, (out, eag, ref) in enumerate(zip(outs, eager, refs)):
        ref64 = ref.detach().to(torch.float64)
        scale = max(ref64.abs().max().item() if ref.numel() else 0.0, ABS_SCALE_FLOOR)
        err = _abs_error(out, ref64)
        eager_err = _abs_error(eag, ref64)
        bound = ERR_FACTOR * (eager_err if math.isfinite(eager_err) else 0.0) + floor * scale
        ratio = err / bound if math.isfinite(err) else float("inf")
        if not ratio <= 1.0:
            failing += 1
        if worst is None or ratio > worst[0]:
            worst = (ratio, i, err / scale, eager_err / scale, bound / scale)
    if worst is None:  # nothing to compare
        return {"ok": True, "tensors": 0, "failing_tensors": 0, "worst_tensor": None,
                "max_rel_err": 0.0, "eager_rel_err": 0.0, "tol": tolerance(dtype, 0.0)}
    _, index, rel, eager_rel, tol = worst
    return {"ok": failing == 0, "tensors": n, "failing_tensors": failing, "worst_tensor": index,
            "max_rel_err": rel, "eager_rel_err": eager_rel, "tol": tol}


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------

def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001
        return None


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return out.strip().splitlines()[0] if out.strip() else None
    except Exception:  # noqa: BLE001
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """GPU name, driver, library versions and the date (UTC)."""
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "tilewright": _version("tilewright"),
        "device": device.type,
        # NOTE: other jobs on the machine skew CPU-mode times; the load says how much.
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({
            "gpu_name": props.name,
            "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "gpu_sm_count": props.multi_processor_count,
            "driver": _driver_version(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
        })
    return env


def card_slug(env: dict[str, Any]) -> str:
    """``nvidia-h100-80gb-hbm3`` style name of the card (``cpu`` without one)."""
    name = env.get("gpu_name") or "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


# ---------------------------------------------------------------------------------------------
# The runner
# ---------------------------------------------------------------------------------------------

class Runner:
    """Runs plan items one by one, within the budget, saving the results after each.

    Args:
        doc: the results document (mutated: ``records`` and ``skipped`` grow).
        path: where the JSON is written.
        device: where cases run.
        small: build the small sizes (CPU mode).
        budget: the run's budget.
    """

    def __init__(self, doc: dict[str, Any], path: Path, device: torch.device, small: bool, budget: Budget) -> None:
        self.doc, self.path, self.device, self.small, self.budget = doc, path, device, small, budget
        self._compiled_before: set[tuple[str, str, str, bool]] = set()
        self._explained: set[tuple[str, bool]] = set()
        self._lock = threading.Lock()
        #: Key of the item in flight (for the watchdog's message).
        self.current: str | None = None
        #: Items not yet run or skipped (the watchdog records them as skipped).
        self._pending: list[Item] = []
        self._workload_key: tuple[Any, ...] | None = None
        self._workload: Workload | None = None

    # -- bookkeeping ------------------------------------------------------------------------
    def save(self) -> None:
        """Write the document atomically (safe to call from the watchdog thread)."""
        with self._lock:
            self.doc["elapsed_s"] = round(self.budget.elapsed(), 2)
            text = json.dumps(self.doc, indent=1, default=str)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(text)
            os.replace(tmp, self.path)

    def start_watchdog(self) -> threading.Event:
        """Guard the budget even if an item hangs where SIGALRM cannot reach it (C code).

        When the budget runs out before the returned event is set, the thread records the
        item in flight, saves, prints the table and ends the process. Without a budget there
        is no watchdog.
        """
        done = threading.Event()
        if self.budget.unlimited:
            return done

        def watch() -> None:
            if done.wait(max(1.0, self.budget.total_s - self.budget.elapsed() - 2.0)):
                return
            with self._lock:
                self.doc["aborted"] = f"watchdog: budget exhausted during {self.current or 'start-up'}"
                self.doc["finished"] = False
                for item in self._pending:
                    self.skip(item, "budget: run stopped by the watchdog" + (
                        " while this item ran" if item.key == self.current else ""))
                self._pending = []
            self.save()
            from .report import console_summary  # noqa: PLC0415
            print(console_summary(self.doc), flush=True)
            os._exit(3)

        threading.Thread(target=watch, name="budget-watchdog", daemon=True).start()
        return done

    def skip(self, item: Item, reason: str) -> None:
        """Record ``item`` as skipped."""
        self.doc["skipped"].append({"key": item.key, "reason": reason, "estimate_s": round(item.estimate_s, 1)})

    def warm_up(self, items: Sequence[Item]) -> None:
        """Pay each compiler's one-time start-up before the first case (recorded as ``startup_s``)."""
        used = {i.system for i in items if i.system in ("tilewright", "inductor")} | {"tilewright"}
        startup: dict[str, Any] = {}
        for system in sorted(used):
            try:
                with deadline(self.budget.item_limit(30.0)):
                    startup[system] = round(systems.warm_up(system, self.device), 3)
            except (Exception, ItemTimeout) as exc:  # noqa: BLE001 - failure is data
                startup[system] = f"{type(exc).__name__}: {str(exc)[:300]}"
                systems.reset_compilers()
        self.doc["startup_s"] = startup
        self.save()

    def run(self, items: Sequence[Item]) -> None:
        """Run every item that fits; skip the rest with a reason."""
        self._pending = list(items)
        for item in items:
            self._pending.pop(0)
            if not self.budget.allows(item.estimate_s, item.kind):
                self.skip(item, f"budget: needs ~{self.budget.expected(item.estimate_s, item.kind):.0f} s, "
                                f"{max(0.0, self.budget.remaining()):.0f} s left")
                continue
            if item.category == "model" and not _have_transformers():
                self.skip(item, "transformers is not installed")
                continue
            self.current = item.key
            self._pending.insert(0, item)  # until its record is in, the watchdog may skip it
            record = self.run_item(item)
            if self._pending and self._pending[0] is item:
                self._pending.pop(0)
            with self._lock:
                self.doc["records"].append(record)
                self.current = None
            self.save()

    def run_item(self, item: Item) -> dict[str, Any]:
        """Run one item; failures become fields of the record, never exceptions."""
        record: dict[str, Any] = item.to_dict()
        t0 = self.budget.clock()
        limit = self.budget.item_limit(item.estimate_s, item.kind)
        log.info("%s (est %.0f s, limit %.0f s)", item.key, self.budget.expected(item.estimate_s, item.kind), limit)
        try:
            with deadline(limit):
                handler = {"correctness": self._correctness, "timing": self._timing, "compile": self._compile}
                record.update(handler[item.phase](item))
        except (Exception, ItemTimeout) as exc:  # noqa: BLE001 - failure is data
            timeout = _caused_by(exc, ItemTimeout)
            record["status"] = "timeout" if timeout else "error"
            record["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
            log.warning("%s failed: %s", item.key, record["error"])
            log.debug("%s", traceback.format_exc())
            self._workload_key, self._workload = None, None
        finally:
            systems.reset_compilers()
        seconds = self.budget.clock() - t0
        record["seconds"] = round(seconds, 3)
        self.budget.observe(item.estimate_s, seconds, item.kind)
        return record

    def workload(self, item: Item) -> Workload:
        """The item's workload, reused across adjacent items on the same case."""
        vendor = item.system[len("vendor:"):] if item.system.startswith("vendor:") else None
        key = (item.case, item.dtype, item.train, vendor)
        if key != self._workload_key or self._workload is None:
            self._workload_key, self._workload = None, None
            case = ALL_CASES[item.case]
            dtype = DTYPES[item.dtype]
            if vendor is not None:
                assert isinstance(case, KernelCase)
                wl = case.build_vendor(vendor, self.small, dtype, self.device)
            else:
                wl = case.build(self.small, dtype, self.device, train=item.train)
            self._workload_key, self._workload = key, wl
        return self._workload

    def _cache_state(self, item: Item, system: str) -> str:
        key = (system, item.case, item.dtype, item.train)
        state = "warm" if key in self._compiled_before else "cold"
        self._compiled_before.add(key)
        return state

    # -- phases -----------------------------------------------------------------------------
    def _correctness(self, item: Item) -> dict[str, Any]:
        wl = self.workload(item)
        ref = wl.reference()
        eager = [t.detach().clone() for t in wl.step(wl.target)]
        systems.reset_compilers()
        compiled = systems.prepare(item.system, wl.target)
        cache = self._cache_state(item, item.system)
        with systems.collecting(item.system) as info:
            out, first_s = timed_call(lambda: wl.step(compiled), self.device)
        verdict = check_tensors(out, eager, ref, item.dtype)
        del ref, out, eager
        rec: dict[str, Any] = {"status": "ok" if verdict.pop("ok") else "mismatch", **verdict,
                               "first_call_s": round(first_s, 4), "cache": cache}
        if not item.train:
            # NOTE: one more call gives the end-to-end compile time (Dynamo capture included),
            # measured the way Inductor's is: first call minus second.
            _, second_s = timed_call(lambda: wl.step(compiled), self.device)
            rec.update({"second_call_s": round(second_s, 4), "pipeline_s": round(max(0.0, first_s - second_s), 4),
                        "method": "first call minus second call (wall)"})
        rec.update(self._explain(item, wl, info))
        return rec

    def _explain(self, item: Item, wl: Workload, collected: dict[str, Any]) -> dict[str, Any]:
        """Kernel/fallback/coverage facts: from the collected report, else ``explain`` once per case."""
        if collected:
            out: dict[str, Any] = {"explain": collected}
            if isinstance(collected.get("timings"), dict):
                out["phases_s"] = collected["timings"]
            return out
        key = (item.case, item.train)
        if item.train or item.system not in systems.TILEWRIGHT_SYSTEMS or key in self._explained:
            return {}
        # NOTE: explain compiles once more; once per case keeps the correctness phase cheap.
        self._explained.add(key)
        try:
            return {"explain": systems.summarize_explain(systems.explain(wl.target, wl.args))}
        except Exception as exc:  # noqa: BLE001
            return {"explain_error": f"{type(exc).__name__}: {str(exc)[:300]}"}

    def _timing(self, item: Item) -> dict[str, Any]:
        wl = self.workload(item)
        fn = systems.prepare(item.system, wl.target)
        cache = self._cache_state(item, item.system)
        _, first_s = timed_call(lambda: wl.step(fn), self.device)
        timing = bench(lambda: wl.step(fn), self.device, quick=self.small)
        rec = {"status": "ok", "first_call_s": round(first_s, 4), "cache": cache, **timing.to_dict()}
        if self.device.type == "cpu" and item.system in systems.TILEWRIGHT_SYSTEMS:
            rec["note"] = "Triton interpreter: not a performance number"
        return rec

    def _compile(self, item: Item) -> dict[str, Any]:
        wl = self.workload(item)
        fn = systems.prepare(item.system, wl.target)
        cache = self._cache_state(item, item.system)
        with systems.collecting(item.system) as info:
            _, first_s = timed_call(lambda: wl.step(fn), self.device)
        _, second_s = timed_call(lambda: wl.step(fn), self.device)
        rec: dict[str, Any] = {"status": "ok", "cache": cache, "first_call_s": round(first_s, 4),
                               "second_call_s": round(second_s, 4),
                               "pipeline_s": round(max(0.0, first_s - second_s), 4),
                               "method": "first call minus second call (wall)"}
        if isinstance(info.get("timings"), dict):
            rec["phases_s"] = info["timings"]
        return rec


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _have_transformers() -> bool:
    try:
        import transformers  # noqa: F401, PLC0415
        return True
    except ImportError:
        return False


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def _choose_sut(requested: str, cpu: bool) -> str:
    """The backend for the tilewright systems. On a GPU a missing tilewright is not papered
    over: its items fail with the import error while the baselines still run."""
    if requested != "auto":
        return requested
    if systems.tilewright_available():
        return "tilewright"
    if not cpu:
        log.error("tilewright is not importable; its items will fail (baselines still run)")
        return "tilewright"
    log.warning("tilewright is not importable; aot_eager stands in for it (recorded as a substitute)")
    return "aot_eager"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for the JSON results")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget (default 480 GPU, 170 CPU)")
    budget.add_argument("--no-budget", action="store_true",
                        help="no budget: run every item to its end, no item deadline, no watchdog "
                             "(tests: results that do not depend on the machine's speed)")
    p.add_argument("--cpu", action="store_true", help="CPU mode (default without CUDA)")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--dtypes", default=None, help="comma-separated dtypes (default: per mode)")
    p.add_argument("--systems", default=None, help="comma-separated systems for timing/compile items")
    p.add_argument("--no-train", action="store_true", help="skip training-step items")
    p.add_argument("--sut", default=os.environ.get("TILEWRIGHT_BENCH_SUT", "auto"),
                   help="backend standing for tilewright: auto (tilewright if importable), tilewright, "
                        "aot_eager, inductor, eager")
    p.add_argument("--tuning-db", default=None, help="tuning database for tilewright_tuned (default: the user's)")
    p.add_argument("--tune-trials", type=int, default=8, help="trials per kernel for tilewright_tuned")
    p.add_argument("--plan", choices=("auto", "gpu", "cpu"), default="auto",
                   help="item list to run (default: the mode's); '--cpu --plan gpu' tries the GPU list at "
                        "small sizes on CPU, to test the suite itself")
    p.add_argument("--keep-cache", action="store_true", help="keep the run's cold-start cache directories")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def _quiet_optuna(verbose: bool) -> None:
    """Optuna logs every study at INFO; tuning during the run would drown the suite's log."""
    try:
        import optuna  # noqa: PLC0415
    except ImportError:
        return
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)


def _redact(url: str | None) -> str | None:
    """A database URL without its credentials (results files get committed)."""
    return re.sub(r"//[^/@]*@", "//***@", url) if url else url


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; returns 0 when it finished (items may be skipped or fail: see the JSON)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    _quiet_optuna(args.verbose)
    cpu = args.cpu or not torch.cuda.is_available()
    if cpu:
        # NOTE: must precede the first tilewright import; kernels then run in the interpreter.
        os.environ.setdefault("TILEWRIGHT_INTERPRET", "1")
    total_s = math.inf if args.no_budget else args.budget_s or (170.0 if cpu else 480.0)
    budget = Budget(total_s, reserve_s=5.0 if cpu else 15.0, start=_T0)
    device = torch.device("cpu" if cpu else "cuda")
    user_db = args.tuning_db or (systems.user_tuning_db_url() if args.sut in ("auto", "tilewright") else None)
    systems.SUT.backend = _choose_sut(args.sut, cpu)
    systems.SUT.tune_trials = args.tune_trials
    args.out.mkdir(parents=True, exist_ok=True)
    # NOTE: caches live outside DIR (which may be benchmarks/results/) and go at the end.
    cache_root = Path(tempfile.mkdtemp(prefix="tilewright-bench-cache-"))
    systems.set_cache_dirs(cache_root)
    systems.SUT.tuning_db_url = systems.snapshot_tuning_db(user_db, cache_root)

    env = environment(device)
    path = args.out / f"{env['date'][:10]}-{card_slug(env)}.json"
    plan_cpu = cpu if args.plan == "auto" else args.plan == "cpu"
    items = build_plan(plan_cpu, _split(args.cases), _split(args.dtypes), _split(args.systems), train=not args.no_train)
    doc: dict[str, Any] = {
        "schema": SCHEMA, "mode": "cpu" if cpu else "gpu", "env": env,
        "sut": {"backend": systems.SUT.backend, "substitute": systems.SUT.substitute},
        "config": {"budget_s": None if budget.unlimited else budget.total_s, "sizes": "small" if cpu else "realistic", "argv": sys.argv[1:],
                   "err_factor": ERR_FACTOR, "err_floor": ERR_FLOOR, "tune_trials": args.tune_trials,
                   "tuning_db": _redact(user_db), "tuning_db_used": _redact(systems.SUT.tuning_db_url)},
        "cases": {name: case.note for name, case in ALL_CASES.items()},
        "plan": [i.key for i in items], "records": [], "skipped": [], "finished": False,
    }
    runner = Runner(doc, path, device, small=cpu, budget=budget)
    runner.save()
    watchdog = runner.start_watchdog()
    torch.manual_seed(0)
    runner.warm_up(items)
    runner.run(items)
    doc["finished"] = True
    doc["env"]["load_avg_1m_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    runner.save()
    watchdog.set()
    log.info("results: %s", path)
    if not args.keep_cache:
        shutil.rmtree(cache_root, ignore_errors=True)

    from .report import console_summary  # noqa: PLC0415
    print(console_summary(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
