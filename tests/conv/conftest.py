"""Convolution tests run the generated kernels in Triton's interpreter unless CUDA is present."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TILEWRIGHT_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _interpret(monkeypatch: pytest.MonkeyPatch):
    """Interpreter on CPU; on a GPU, float32 without TF32 so 1e-4 tolerances hold."""
    from tilewright.config import config

    if not torch.cuda.is_available():
        monkeypatch.setattr(config, "interpret", True)
    torch.manual_seed(0)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
