"""The CPU target's tests need a C++ compiler; on a machine without one they are skipped (and say
so) — except in CI (``CI`` set), whose ``.ci/run`` installs one: there a missing compiler fails them."""
from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tilewright.targets.cpu.toolchain import NoCompilerError, find_compiler

    try:
        find_compiler()
    except NoCompilerError as exc:
        if os.environ.get("CI"):
            raise pytest.UsageError(f"CI must run the CPU target's tests, but there is no C++ compiler: {exc}") from exc
        skip = pytest.mark.skip(reason=f"no C++ compiler on this machine: {exc}")
        for item in items:
            if "tests/cpu/" in str(item.fspath).replace("\\", "/"):
                item.add_marker(skip)


@pytest.fixture
def cpu_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """Graphs of the test compile for the native CPU target (Dynamo's cache starts empty)."""
    import torch

    import tilewright

    monkeypatch.setattr(tilewright.config, "target", "cpu")
    torch._dynamo.reset()
