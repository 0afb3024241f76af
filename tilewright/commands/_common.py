"""Helpers shared by the sub-commands: one-line error messages."""
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
