"""Fixtures for the cost-model tests (all data here is SYNTHETIC, made up in the tests)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from costmodel.synthetic import make_records  # noqa: E402
from tilewright.costmodel.records import Record  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_records() -> list[Record]:
    """SYNTHETIC records on two device families (not GPU timings)."""
    return make_records(n_problems=36, configs_per_problem=14, devices=("H100", "A100"))
