"""``tilewright explain MODULE:FACTORY``: compile a model and print what it became."""
from __future__ import annotations

import argparse

from ._common import fail, prefer_native_cpu_target
from ._factory import FactoryError, load_factory, split_inputs


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``explain`` sub-command."""
    p = sub.add_parser("explain", help="compile a model and report kernels, fallbacks and coverage",
                       description="Compile the model returned by FACTORY (a function returning "
                                   "(model, example_inputs); example_inputs a tuple of positional "
                                   "arguments or a dict of keyword arguments) and print the explain report.")
    p.add_argument("spec", help="MODULE:FACTORY, FILE.py:FACTORY, or a .mlir file")
    p.add_argument("--input-shapes", help="for .mlir files with dynamic dims, e.g. 1x16,1x16")
    p.add_argument("--training", action="store_true", help="also compile and report the backward graph")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command; returns the exit code."""
    import tilewright

    prefer_native_cpu_target()
    try:
        model, inputs = load_factory(args.spec, args.input_shapes)
    except FactoryError as exc:
        return fail(exc)
    try:
        positional, keywords = split_inputs(inputs)
        report = tilewright.explain(model, *positional, training=args.training or None, **keywords)
    except Exception as exc:  # NOTE: -v gives the traceback (the CLI's handler)
        if args.verbose:
            raise
        return fail(f"compiling {args.spec} failed: {type(exc).__name__}: {exc} "
                    "(run with -v for the traceback)", 1)
    print(report.to_json() if args.json else str(report))
    return 0
