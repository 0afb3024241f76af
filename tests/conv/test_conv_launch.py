"""A fused convolution's launch does its Python setup once per config, not at every call, and a
packed weight is reused until the weight changes."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from tilewright.report import collect
from tilewright.targets.triton.conv import forward, group


def test_later_calls_skip_the_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 9, 7)
    fn = lambda x: torch.relu(conv(x)) * 2  # noqa: E731
    compiled = torch.compile(fn, backend="tilewright")
    with torch.no_grad(), collect() as report:
        first = compiled(x)
    assert any(k["kind"] == "conv" and k["status"] == "ran" for k in report.kernels), str(report)
    calls: list[str] = []
    for name in ("compiled_launcher", "launch_args"):
        real = getattr(group, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(group, name, spy)
    monkeypatch.setattr(forward, "prepare_conv", lambda *a, **k: calls.append("prepare_conv"))
    with torch.no_grad():
        second = compiled(x)
        conv.weight.mul_(-1)  # a later call sees the updated weight
        third = compiled(x)
        want = fn(x)
    torch.testing.assert_close(second, first)
    torch.testing.assert_close(third, want, rtol=1e-4, atol=1e-4)
    assert calls == [], calls


def test_packed_weight_is_reused_until_the_weight_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    packs: list[int] = []
    real = group.pack_weight
    monkeypatch.setattr(group, "pack_weight", lambda w, layout: packs.append(1) or real(w, layout))
    cache = group.PackedWeights("k_inner")
    w = torch.randn(8, 3, 3, 3)
    a = cache.get(w)
    assert cache.get(w) is a and len(packs) == 1
    assert a.stride(0) == 1 and torch.equal(a, w)
    w.add_(1.0)  # in place: the version counter moves
    b = cache.get(w)
    assert len(packs) == 2 and torch.equal(b, w)
    other = torch.randn(8, 3, 3, 3)
    assert torch.equal(cache.get(other), other) and len(packs) == 3
    with torch.inference_mode():
        frozen = torch.randn(8, 3, 3, 3)
    cache.get(frozen), cache.get(frozen)  # no version counter: packed at every call
    assert len(packs) == 5
    # another tensor object at the same address and version (as one allocated where a dead one
    # was): new contents written behind the counter are packed anew
    buf = torch.randn(8 * 27)
    first = buf.view(8, 3, 3, 3)
    cache.get(first)
    buf.numpy()[:] = 3.0
    second = buf.view(8, 3, 3, 3)
    assert (second.data_ptr(), second._version) == (first.data_ptr(), first._version)
    assert torch.equal(cache.get(second), torch.full((8, 3, 3, 3), 3.0)) and len(packs) == 7
