"""Static checks with ruff: pyflakes (undefined names, unused imports/variables) and syntax errors.

The rule set lives in pyproject.toml (``[tool.ruff.lint]``), so ``ruff check`` on a developer's
machine and this test agree.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _ruff() -> list[str]:
    exe = shutil.which("ruff")
    if exe:
        return [exe]
    try:
        import ruff  # noqa: F401  (the wheel ships the binary; `python -m ruff` runs it)
    except ImportError:
        pytest.fail("ruff is not installed: pip install -e '.[test]' installs it")
    return [sys.executable, "-m", "ruff"]


def test_ruff_pyflakes_clean() -> None:
    proc = subprocess.run([*_ruff(), "check", "--output-format", "concise", "tilewright", "tests", "benchmarks"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
