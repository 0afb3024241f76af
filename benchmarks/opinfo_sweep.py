"""PyTorch's OpInfo samples through the tilewright backend, compared with eager.

Usage::

    python -m benchmarks.opinfo_sweep --out sweep.json [--ops add,relu] [--samples 2] [--shard 0/2]
    python -m benchmarks.opinfo_sweep --merge a.json b.json --out all.json

Every float32 sample of ``torch.testing._internal.common_methods_invocations.op_db`` (the first
``--samples`` of each op) runs once eagerly and once through
``torch.compile(fn, backend="tilewright")`` with generated kernels in Triton's interpreter, in
strict mode (a kernel that fails at run time raises instead of quietly running its reference
ATen ops). Each sample is classified:

``ok``               outputs match eager (NaN-aware) and at least one generated kernel ran;
``mismatch``         outputs differ from eager;
``crash``            the compiled call raised (and plain AOTAutograd, ``aot_eager``, does not),
                     or a graph / kernel failed to compile and ran eagerly;
``runtime-fallback`` a generated kernel failed at run time and its reference ops ran instead;
``not-lowered``      outputs match, but every op ran as an ATen call by design;
``skipped``          not comparable (eager raised, random or uninitialised outputs, Dynamo or
                     AOTAutograd cannot capture it, timeout), with the reason.

The JSON file holds a ``summary`` (counts by status, over samples and over ops) and one record
per sample.
"""
from __future__ import annotations

import os

# Triton decides at import time whether its helpers are interpreted: set before torch loads.
os.environ.setdefault("TILEWRIGHT_INTERPRET", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from typing import Any, Callable, Iterator, Sequence  # noqa: E402

import torch  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402

log = logging.getLogger("benchmarks.opinfo_sweep")

STATUSES = ("ok", "mismatch", "crash", "runtime-fallback", "not-lowered", "skipped")

#: ops whose outputs are random or uninitialised memory: only shapes and dtypes are compared
_UNCOMPARABLE_VALUES = ("empty", "new_empty", "empty_like", "empty_strided", "empty_permuted", "new_empty_strided")
#: OpInfos (by name or name.variant) whose results are random: not comparable with eager, skipped
_RANDOM = {"bernoulli", "cauchy", "exponential", "geometric", "log_normal", "multinomial", "normal", "uniform",
           "rand_like", "randint", "randint_like", "randn", "randn_like", "rand", "randperm",
           "nn.functional.alpha_dropout", "nn.functional.dropout", "nn.functional.dropout2d",
           "nn.functional.dropout3d", "nn.functional.feature_alpha_dropout.with_train", "nn.functional.rrelu"}


@dataclass
class SampleResult:
    """The outcome of one OpInfo sample."""

    op: str
    variant: str
    sample: int
    status: str
    detail: str = ""
    kernels: int = 0
    fallbacks: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_Timeout` after ``seconds`` (main thread only; no limit elsewhere or when 0)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise _Timeout(f"timed out after {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def op_database() -> list[Any]:
    """PyTorch's ``op_db`` (the OpInfos of ``common_methods_invocations``).

    Importing it runs ``torch.backends.disable_global_flags()`` (PyTorch's own test harness
    freezes the cuDNN/TF32 flags), which would make every later ``torch.backends.cudnn.x = ...``
    in this process raise; the freeze is undone so the caller's process keeps working.
    """
    from torch.testing._internal.common_methods_invocations import op_db

    unfreeze_backend_flags()
    return list(op_db)


def unfreeze_backend_flags() -> None:
    """Undo ``torch.backends.disable_global_flags()`` (run by ``torch.testing._internal``)."""
    if torch.backends.flags_frozen():
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True


def op_key(opinfo: Any) -> str:
    """``name`` or ``name.variant`` of an OpInfo (unique within op_db)."""
    return opinfo.name + (f".{opinfo.variant_test_name}" if opinfo.variant_test_name else "")


def select_ops(names: Sequence[str] | None = None, shard: tuple[int, int] | None = None) -> list[Any]:
    """OpInfos by key (``name`` matches every variant of it; ``name.variant`` one), then a shard."""
    ops = op_database()
    if names:
        wanted = set(names)
        ops = [o for o in ops if op_key(o) in wanted or o.name in wanted]
    if shard is not None:
        k, n = shard
        ops = [o for i, o in enumerate(ops) if i % n == k]
    return ops


def _clone(tree: Any) -> Any:
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, tree)


def _sample_function(opinfo: Any, sample: Any) -> tuple[Callable[..., Any], list[torch.Tensor]]:
    """A function of the sample's tensors (every other argument is baked in) and those tensors."""
    leaves, spec = pytree.tree_flatten((sample.input, list(sample.args), dict(sample.kwargs)))
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    tensors = [leaves[i] for i in positions]
    op = opinfo.op

    def fn(*ts: torch.Tensor) -> Any:
        filled = list(leaves)
        for i, t in zip(positions, ts):
            filled[i] = t
        inp, args, kwargs = pytree.tree_unflatten(filled, spec)
        return op(inp, *args, **kwargs)

    return fn, tensors


def compare(got: Any, want: Any, rtol: float = 1e-4, atol: float = 1e-5, values: bool = True) -> str | None:
    """None when ``got`` matches ``want`` (nested; NaN equals NaN; dtype and shape exact), else why not."""
    g_leaves, g_spec = pytree.tree_flatten(got)
    w_leaves, w_spec = pytree.tree_flatten(want)
    if len(g_leaves) != len(w_leaves):
        return f"output structure differs: {g_spec} vs {w_spec}"
    for i, (g, w) in enumerate(zip(g_leaves, w_leaves)):
        if isinstance(w, torch.Tensor):
            if not isinstance(g, torch.Tensor):
                return f"output {i}: {type(g).__name__} instead of a tensor"
            if g.shape != w.shape or g.dtype != w.dtype:
                return f"output {i}: {g.dtype}{list(g.shape)} vs eager {w.dtype}{list(w.shape)}"
            if not values:
                continue
            if w.is_floating_point() or w.is_complex():
                try:
                    torch.testing.assert_close(g, w, rtol=rtol, atol=atol, equal_nan=True, check_stride=False)
                except AssertionError as exc:
                    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                    return f"output {i}: " + "; ".join(lines[:4])
            elif not torch.equal(g, w):
                diff = (g != w).sum().item()
                return f"output {i}: {diff} of {w.numel()} elements differ"
        elif isinstance(w, float) and isinstance(g, float):
            if not (math.isclose(g, w, rel_tol=rtol, abs_tol=atol) or (math.isnan(g) and math.isnan(w))):
                return f"output {i}: {g} vs eager {w}"
        elif g != w:
            return f"output {i}: {g!r} vs eager {w!r}"
    return None


def _strict_error() -> type[BaseException] | None:
    try:
        from tilewright import errors
    except ImportError:
        return None
    return getattr(errors, "StrictModeError", None)


@contextlib.contextmanager
def strict_mode() -> Iterator[None]:
    """``tilewright.config.strict = True`` for the block (when the setting exists)."""
    from tilewright import config

    if not hasattr(config, "strict"):
        yield
        return
    old = config.strict
    config.strict = True
    try:
        yield
    finally:
        config.strict = old


def _report_status(report: Any) -> tuple[str | None, str, list[str]]:
    """(status or None, detail, fallback summaries) from a tilewright report."""
    fallbacks = [f"{f['op']}: {f['reason']}"[:200] for f in report.fallbacks]
    for f in report.fallbacks:
        if f["op"].startswith("kernel ") and f["reason"].startswith("kernel failed"):
            return "runtime-fallback", f"{f['op']}: {f['reason']}"[:500], fallbacks
    for f in report.fallbacks:
        reason = f["reason"]
        if f["op"].startswith("graph ") and reason.startswith("compile failed") or reason.startswith("codegen failed"):
            return "crash", f"{f['op']}: {reason}"[:500], fallbacks
    return None, "", fallbacks


def _captures(fn: Callable[..., Any], tensors: list[torch.Tensor]) -> bool:
    """True when Dynamo + AOTAutograd (``aot_eager``) run ``fn`` without tilewright."""
    torch._dynamo.reset()
    try:
        torch.compile(fn, backend="aot_eager")(*_clone(tensors))
        return True
    except Exception:
        return False
    finally:
        torch._dynamo.reset()


def run_sample(opinfo: Any, sample: Any, index: int = 0, timeout_s: float = 300.0,
               rtol: float = 1e-4, atol: float = 1e-5) -> SampleResult:
    """Run one OpInfo sample eagerly and through tilewright (strict mode) and classify it."""
    from tilewright.report import collect

    key = op_key(opinfo)
    start = time.perf_counter()
    result = SampleResult(key, opinfo.variant_test_name or "", index, "skipped")
    if opinfo.name in _RANDOM or key in _RANDOM:
        result.detail = "random outputs"
        return result
    fn, tensors = _sample_function(opinfo, sample)
    try:
        torch.manual_seed(0)
        want = fn(*_clone(tensors))
    except Exception as exc:
        result.detail = f"eager raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        return result
    values = opinfo.name not in _UNCOMPARABLE_VALUES
    strict_error = _strict_error()
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="tilewright")
    report = None
    try:
        with _time_limit(timeout_s), strict_mode(), collect() as report:
            torch.manual_seed(0)
            got = compiled(*_clone(tensors))
    except _Timeout as exc:
        result.detail = str(exc)
        result.seconds = time.perf_counter() - start
        return result
    except Exception as exc:
        chain: list[BaseException] = []
        e: BaseException | None = exc
        while e is not None and len(chain) < 8:
            chain.append(e)
            e = e.__cause__ or e.__context__
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        if strict_error is not None and any(isinstance(c, strict_error) for c in chain):
            result.status, result.detail = "runtime-fallback", msg
        elif report is not None and _report_status(report)[0] == "runtime-fallback":
            result.status, result.detail = "runtime-fallback", _report_status(report)[1]
        elif not _captures(fn, tensors):
            result.detail = f"Dynamo/AOTAutograd cannot capture it: {msg}"[:500]
        else:
            result.status, result.detail = "crash", msg
            log.debug("%s sample %d crashed:\n%s", key, index, traceback.format_exc())
        if report is not None:
            result.kernels = len(report.kernels)
        result.seconds = time.perf_counter() - start
        return result
    finally:
        torch._dynamo.reset()
    assert report is not None
    result.kernels = len(report.kernels)
    status, detail, result.fallbacks = _report_status(report)
    mismatch = compare(got, want, rtol=rtol, atol=atol, values=values)
    if status is not None:
        result.status, result.detail = status, detail
    elif mismatch is not None:
        result.status, result.detail = "mismatch", mismatch[:500]
    elif result.kernels == 0:
        result.status = "not-lowered"
        result.detail = "no generated kernel" if report.graphs else "no graph captured"
    else:
        result.status = "ok"
    result.seconds = time.perf_counter() - start
    return result


def samples_of(opinfo: Any, n: int) -> list[Any]:
    """The first ``n`` float32 CPU samples of ``opinfo`` (empty when float32 is unsupported)."""
    if torch.float32 not in opinfo.supported_dtypes("cpu"):
        return []
    torch.manual_seed(0)
    out = []
    for s in opinfo.sample_inputs("cpu", torch.float32, requires_grad=False):
        out.append(s)
        if len(out) >= n:
            break
    return out


def run_op(opinfo: Any, n_samples: int = 2, timeout_s: float = 300.0) -> list[SampleResult]:
    """Every selected sample of one OpInfo."""
    try:
        samples = samples_of(opinfo, n_samples)
    except Exception as exc:
        return [SampleResult(op_key(opinfo), opinfo.variant_test_name or "", 0, "skipped",
                             f"sample_inputs raised {type(exc).__name__}: {exc}"[:300])]
    if not samples:
        return [SampleResult(op_key(opinfo), opinfo.variant_test_name or "", 0, "skipped", "no float32 samples")]
    results = []
    for i, s in enumerate(samples):
        try:
            results.append(run_sample(opinfo, s, i, timeout_s))
        except Exception as exc:  # the sweep itself must go on
            results.append(SampleResult(op_key(opinfo), opinfo.variant_test_name or "", i, "crash",
                                        f"sweep error {type(exc).__name__}: {exc}"[:500]))
    return results


def summarize(results: Sequence[SampleResult]) -> dict[str, Any]:
    """Counts by status over samples, and over ops (an op takes its worst sample's status)."""
    by_sample = {s: 0 for s in STATUSES}
    for r in results:
        by_sample[r.status] += 1
    rank = {"crash": 0, "runtime-fallback": 1, "mismatch": 2, "ok": 3, "not-lowered": 4, "skipped": 5}
    worst: dict[str, str] = {}
    for r in results:
        if r.op not in worst or rank[r.status] < rank[worst[r.op]]:
            worst[r.op] = r.status
    by_op = {s: 0 for s in STATUSES}
    for s in worst.values():
        by_op[s] += 1
    compiled = [r for r in results if r.status != "skipped"]
    reasons: dict[str, int] = {}
    for r in results:  # why ops ran as ATen calls (by design, or an unsupported case of a lowered op)
        if r.status == "not-lowered":
            for f in r.fallbacks:
                reason = f.split(": ", 1)[-1][:100]
                reasons[reason] = reasons.get(reason, 0) + 1
    return {
        "ops": len(worst),
        "samples": len(results),
        "compiled_samples": len(compiled),
        "compiled_ops": len({r.op for r in compiled}),
        "lowered_samples": sum(1 for r in compiled if r.status != "not-lowered"),
        "samples_by_status": by_sample,
        "ops_by_worst_status": by_op,
        "not_lowered_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "failures": [f"{r.op}[{r.sample}] {r.status}: {r.detail}" for r in results
                     if r.status in ("mismatch", "crash", "runtime-fallback")],
    }


def write(path: str, results: Sequence[SampleResult], meta: dict[str, Any]) -> None:
    """Write the summary and every record as JSON."""
    data = {"meta": meta, "summary": summarize(results), "results": [asdict(r) for r in results]}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def table(results: Sequence[SampleResult]) -> str:
    """A short text table of the summary and the failures."""
    s = summarize(results)
    lines = [f"{s['samples']} samples over {s['ops']} ops; compiled {s['compiled_samples']} samples "
             f"over {s['compiled_ops']} ops",
             f"  {'status':<18}{'samples':>8}{'ops':>6}"]
    for st in STATUSES:
        lines.append(f"  {st:<18}{s['samples_by_status'][st]:>8}{s['ops_by_worst_status'][st]:>6}")
    for f in s["failures"]:
        lines.append("  " + f[:200])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--ops", default="", help="comma-separated op names (default: all of op_db)")
    p.add_argument("--samples", type=int, default=2, help="samples per op")
    p.add_argument("--shard", default="", help="K/N: every N-th op starting at K")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per sample")
    p.add_argument("--merge", nargs="*", default=None,
                   help="merge these sweep JSON files into --out (a later file's records of an op win)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.merge is not None:
        by_op: dict[str, list[SampleResult]] = {}
        for path in args.merge:  # a later file's records of an op replace an earlier file's
            with open(path) as f:
                records = [SampleResult(**r) for r in json.load(f)["results"]]
            for op in {r.op for r in records}:
                by_op[op] = [r for r in records if r.op == op]
        results = [r for rs in by_op.values() for r in rs]
        write(args.out, results, {"merged": list(args.merge), "torch": torch.__version__})
        print(table(results))
        return 0
    shard = tuple(int(x) for x in args.shard.split("/")) if args.shard else None
    ops = select_ops([o for o in args.ops.split(",") if o] or None, shard)  # type: ignore[arg-type]
    import triton

    meta = {"torch": torch.__version__, "triton": triton.__version__, "samples_per_op": args.samples,
            "ops_selected": len(ops), "shard": args.shard, "dtype": "float32", "device": "cpu (interpreter)"}
    results = []
    t0 = time.perf_counter()
    for i, opinfo in enumerate(ops):
        rs = run_op(opinfo, args.samples, args.timeout)
        results.extend(rs)
        for r in rs:
            if r.status in ("mismatch", "crash", "runtime-fallback") or args.verbose:
                print(f"[{i + 1}/{len(ops)}] {r.op}[{r.sample}] {r.status} {r.detail[:160]}", flush=True)
        meta["seconds"] = round(time.perf_counter() - t0, 1)
        write(args.out, results, meta)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
