"""Test-wide setup: generated kernels run in Triton's interpreter on CPU tensors, in strict mode.

Strict mode (``tilewright.config.strict``) turns every runtime fallback into an error, so a test
cannot pass because a kernel failed and its reference ran. Tests of the fallback path itself are
marked ``@pytest.mark.fallback``: they run with strict mode off and must assert that the fallback
happened and was reported. Every test starts from the same settings and leaves none behind.
"""
from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("TILEWRIGHT_INTERPRET", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TILEWRIGHT_STRICT", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fallback: tests of the fallback path (strict mode off; they assert the "
                                       "fallback happened and was reported)")
    config.addinivalue_line("markers", "native_cpu: needs a C++ compiler (the native CPU target); every test "
                                       "under tests/cpu/ has it implicitly")


def _needs_compiler(item: pytest.Item) -> bool:
    return "tests/cpu/" in str(item.fspath).replace("\\", "/") or item.get_closest_marker("native_cpu") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests of the native CPU target need a C++ compiler: on a machine without one they are skipped
    (and say so), except in CI (``CI`` set), whose ``.ci/run`` installs one: there a missing compiler
    is an error."""
    wanted = [item for item in items if _needs_compiler(item)]
    if not wanted:
        return
    from tilewright.targets.cpu.toolchain import NoCompilerError, find_compiler

    try:
        find_compiler()
    except NoCompilerError as exc:
        if os.environ.get("CI"):
            raise pytest.UsageError(f"CI must run the CPU target's tests, but there is no C++ compiler: {exc}") from exc
        skip = pytest.mark.skip(reason=f"no C++ compiler on this machine: {exc}")
        for item in wanted:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _isolate_tilewright(request: pytest.FixtureRequest) -> None:
    import tilewright

    from tilewright.targets.triton.jit import restore_triton_language

    cfg = tilewright.config
    restore_triton_language()  # Triton's interpreter leaves patches on triton.language behind
    saved = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    torch._dynamo.reset()
    cfg.verify = False
    cfg.strict = request.node.get_closest_marker("fallback") is None
    yield
    torch._dynamo.reset()
    restore_triton_language()
    if torch.backends.flags_frozen():  # torch.testing._internal freezes them on import
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    for name, value in saved.items():
        setattr(cfg, name, value)
