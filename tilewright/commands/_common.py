"""Helpers shared by the sub-commands: one-line error messages, the CPU target choice."""
from __future__ import annotations

import sys


def one_line(message: object) -> str:
    """``message`` (text or an exception) as a single line: whitespace runs become one space.

    Exceptions with an empty message are named by their type.
    """
    if isinstance(message, BaseException):
        text = str(message) or type(message).__name__
        if isinstance(message, (KeyError,)) and text.startswith("'") and text.endswith("'"):
            text = text[1:-1]
    else:
        text = str(message)
    return " ".join(text.split())


def fail(message: object, code: int = 2) -> int:
    """Print ``error: <message>`` as one line on stderr and return ``code`` (the exit status)."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return code


def prefer_native_cpu_target() -> str:
    """Compile CPU models with the native C++ target, as ``torch.compile`` does, unless the user
    asked for Triton (``TILEWRIGHT_TARGET=triton`` or ``TILEWRIGHT_INTERPRET=1``); returns a label.

    The ``tilewright`` command switches Triton's interpreter on at start-up on a machine without
    a GPU (Triton must know before it is imported); without this, ``explain`` would report (and
    time) interpreted Triton kernels instead of what the user's compiled model runs.
    """
    import torch

    from ..config import CLI_DEFAULTED_INTERPRETER, config
    from ..targets import native_cpu_problem

    if torch.cuda.is_available():
        return "cuda"
    if not CLI_DEFAULTED_INTERPRETER or config.target != "auto":
        return config.target
    problem = native_cpu_problem()
    if problem is not None:  # no C++ compiler: Triton's interpreter keeps the command working
        return f"interpreter ({problem})"
    config.target = "cpu"
    return "cpu"
