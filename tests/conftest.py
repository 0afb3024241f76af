"""Test-wide setup: generated kernels run in Triton's interpreter on CPU tensors."""
from __future__ import annotations

import os

os.environ.setdefault("TILEWRIGHT_INTERPRET", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _reset_dynamo(tmp_path_factory: pytest.TempPathFactory) -> None:
    import tilewright

    torch._dynamo.reset()
    tilewright.config.verify = False
    yield
    torch._dynamo.reset()
