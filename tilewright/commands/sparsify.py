"""``tilewright sparsify MODULE:FACTORY``: calibrate a model's sparse / low-rank plan and save it."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import fail, prefer_native_cpu_target
from ._factory import FactoryError, load_factory


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sparsify`` sub-command."""
    p = sub.add_parser("sparsify", help="choose accuracy-gated sparse/low-rank rewrites per layer and save the plan",
                       description="Calibrate the model returned by FACTORY (a function returning (model, "
                                   "example_inputs)) on its example inputs (or --calibration batches): each linear / "
                                   "conv layer gets the fastest block-sparse, 2:4 or low-rank rewrite whose error "
                                   "stays within --budget, the whole model is checked against the budget, and the "
                                   "plan is written as JSON. Compile with options={'sparsity': {'plan': PATH}}.")
    p.add_argument("spec", help="MODULE:FACTORY or FILE.py:FACTORY returning (model, example_inputs)")
    p.add_argument("--budget", type=float, default=0.01, help="error budget (default 0.01)")
    p.add_argument("--metric", default="rel_l2", help="rel_l2 (relative output error), kl (KL of logits), or "
                                                      "MODULE:FUNCTION f(reference, approx) -> float")
    p.add_argument("--methods", default="block_sparse,low_rank",
                   help="weight rewrites, comma-separated among block_sparse, 2:4, low_rank (default "
                        "block_sparse,low_rank); 'none' for attention only")
    p.add_argument("--attention", nargs="?", const="default", default=None, metavar="METHODS",
                   help="also gate block-sparse attention at the model's scaled_dot_product_attention calls: "
                        "without a value sinks_window,xattention,minference; or comma-separated among "
                        "sinks_window, vertical_slash, xattention, minference")
    p.add_argument("--densities", default=None, help="block densities to try, e.g. 0.125,0.25,0.5")
    p.add_argument("--block", default=None, help="block size ROWSxCOLS (default 32x32)")
    p.add_argument("--min-speedup", type=float, default=1.1, help="skip candidates expected slower than this")
    p.add_argument("--calibration", help="MODULE:FUNCTION returning a list of calibration batches")
    p.add_argument("--holdout", help="MODULE:FUNCTION returning a list of held-out batches (error reported)")
    p.add_argument("--measure", action="store_true", help="time each accepted layer against the dense one")
    p.add_argument("-o", "--out", help="write the plan here (JSON)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=run)


def _callable(spec: str) -> Any:
    import importlib

    module, _, attr = spec.rpartition(":")
    if not module:
        raise FactoryError(f"expected MODULE:FUNCTION, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise FactoryError(f"cannot load {spec}: {exc}") from exc
    return fn


def _batches(spec: str | None, default: tuple[Any, ...] | dict[str, Any]) -> list[Any]:
    if spec is None:
        return [dict(default) if isinstance(default, dict) else tuple(default)]
    batches = _callable(spec)()
    if not isinstance(batches, (list, tuple)) or not batches:
        raise FactoryError(f"{spec} must return a non-empty list of batches")
    return list(batches)


def _table(plan: Any) -> str:
    lines = [f"sparsity plan: budget {plan.budget:g} ({plan.metric}), model error "
             f"{plan.model_error if plan.model_error is not None else float('nan'):.4g}"
             + (f", held-out {plan.meta['holdout_error']:.4g}" if "holdout_error" in plan.meta else "")]
    lines.append(f"  {'layer':<40} {'kind':<7} {'method':<13} {'density/rank':<13} {'error':>9} {'expected':>9} "
                 f"{'measured':>9}")
    for e in plan.entries:
        p = e.params
        dr = (f"{p['density']:.3f}" if "density" in p else f"{p['rank']}/{p['full_rank']}" if "rank" in p else "")
        meas = f"{e.measured_speedup:.2f}x" if e.measured_speedup is not None else "-"
        err = "-" if e.error != e.error else f"{e.error:.3g}"
        lines.append(f"  {e.site[:40]:<40} {e.kind:<7} {e.method:<13} {dr:<13} {err:>9} "
                     f"{e.expected_speedup:>8.2f}x {meas:>9}" + (f"  {e.note}" if e.note else ""))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    import torch

    from ..sparsity.api import sparsify

    prefer_native_cpu_target()
    try:
        model, inputs = load_factory(args.spec)
        calibration = _batches(args.calibration, inputs)
        holdout = _batches(args.holdout, inputs) if args.holdout else None
        metric = _callable(args.metric) if ":" in args.metric else args.metric
    except FactoryError as exc:
        return fail(exc)
    if not isinstance(model, torch.nn.Module):
        return fail(f"{args.spec} must return an nn.Module (got {type(model).__name__})")
    kwargs: dict[str, Any] = {}
    if args.densities:
        kwargs["densities"] = tuple(float(d) for d in args.densities.split(","))
    if args.block:
        try:
            rows, cols = (int(v) for v in args.block.lower().split("x"))
        except ValueError:
            return fail(f"--block takes ROWSxCOLS such as 32x32, got {args.block!r}")
        kwargs["block"] = (rows, cols)
    if args.attention is not None:
        kwargs["attention"] = True if args.attention == "default" else \
            [m.strip() for m in args.attention.split(",") if m.strip()]
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "none")
    if not methods and args.attention is None:
        return fail("--methods none leaves nothing to do: name weight methods or add --attention")
    model.eval()
    try:
        plan = sparsify(model, calibration, budget=args.budget, metric=metric, methods=methods,
                        min_speedup=args.min_speedup, measure=args.measure, holdout=holdout, **kwargs)
    except (ValueError, TypeError) as exc:
        return fail(exc)
    plan.meta["model"] = args.spec
    if args.out:
        plan.save(args.out)
    if args.json:
        json.dump(plan.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print(_table(plan))
        if args.out:
            print(f"plan written to {args.out}")
    return 0
