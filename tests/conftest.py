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
