"""Fixtures of the CPU target's tests (their need for a C++ compiler is handled in tests/conftest.py:
skipped without one, an error in CI)."""
from __future__ import annotations

import pytest


@pytest.fixture
def cpu_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """Graphs of the test compile for the native CPU target (Dynamo's cache starts empty)."""
    import torch

    import tilewright

    monkeypatch.setattr(tilewright.config, "target", "cpu")
    torch._dynamo.reset()
