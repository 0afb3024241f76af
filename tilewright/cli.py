"""The ``tilewright`` command line: one sub-command per module in ``tilewright.commands``."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from .commands._common import fail

#: sub-command name -> module in tilewright.commands exposing ``register(subparsers)``.
COMMANDS = {
    "demo": "demo",
    "explain": "explain",
    "autotune": "autotune",
    "tuning": "tuning",
    "train-costmodel": "train_costmodel",
    "collect": "collect",
    "sparsify": "sparsify",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="tilewright",
        description="Compile and autotune PyTorch models into Triton kernels.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(f"tilewright.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("tilewright.commands"):
                continue  # sub-command not built yet
            raise
        module.register(sub)
    _accept_verbose_anywhere(parser)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser`` (sub-commands and their actions), depth first."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to one parser
                found.append(child)
                found.extend(_subparsers(child))
    return found


def _accept_verbose_anywhere(parser: argparse.ArgumentParser) -> None:
    """Let ``-v`` follow the command too (``tilewright explain X -v``), not only precede it.

    NOTE: the default is SUPPRESS so that a sub-parser that did not see ``-v`` leaves the count
    the top-level parser took (argparse copies every sub-parser default over the parent's).
    """
    for child in _subparsers(parser):
        if "-v" not in child._option_string_actions:
            child.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                               help="more logging (-vv for debug)")


def _select_interpreter_on_cpu() -> None:
    """Without a GPU, run generated kernels in Triton's interpreter (must precede importing triton)."""
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TILEWRIGHT_INTERPRET", "1")
        os.environ.setdefault("TRITON_INTERPRET", "1")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tilewright`` script; returns the process exit code."""
    _select_interpreter_on_cpu()
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as exc:  # NOTE: any failure is one line; -v shows the traceback
        if args.verbose:
            traceback.print_exc()
            return fail(f"{args.command}: {type(exc).__name__}: {exc}", 1)
        return fail(f"{args.command}: {type(exc).__name__}: {exc} (run with -v for the traceback)", 1)


if __name__ == "__main__":
    sys.exit(main())
