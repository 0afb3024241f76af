"""A model factory for ``tilewright autotune`` tests on the native CPU target."""
from __future__ import annotations

import torch


def factory() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """A layer norm and a GELU MLP block on an odd-sized batch."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LayerNorm(67), torch.nn.GELU(), torch.nn.Softmax(-1)).eval()
    return model, (torch.randn(29, 67),)
