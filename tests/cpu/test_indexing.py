"""Gathers (embedding, index.Tensor, gather, index_select) and copies (cat, slice/select_scatter,
constant_pad_nd) on the native CPU target: generated kernels equal to ATen bit for bit (they move
elements without arithmetic), on odd sizes and strided operands, float32 and bfloat16; an
out-of-range index raises the error eager raises and does not retire the kernel."""
from __future__ import annotations

import pytest
import torch

from tilewright.errors import StrictModeError

from .helpers import run_compiled

pytestmark = pytest.mark.usefixtures("cpu_target")


def _gathers(w: torch.Tensor, idx: torch.Tensor, x: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
             g: torch.Tensor, sel: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (torch.nn.functional.embedding(idx, w),          # a gather of rows
            torch.nn.functional.embedding(idx.t(), w.t()),   # transposed indices and table
            x.transpose(0, 1)[i, j],                         # advanced indexing, broadcast indices
            x[:, i[:, 0]],                                   # one index tensor in the middle (wraps negatives)
            x[j, :, i],                                      # non-consecutive indices: broadcast dims go first
            torch.gather(x.transpose(1, 2), 1, g),           # indices varying along the last dim
            torch.index_select(x[::2], 2, sel))


def _gather_inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    w = torch.randn(13, 13).to(dtype)
    x = torch.randn(5, 7, 9).to(dtype)
    return (w, torch.randint(0, 13, (13, 3)), x, torch.randint(-7, 7, (4, 1)), torch.randint(-5, 5, (1, 3)),
            torch.randint(0, 7, (5, 7, 6)), torch.randint(0, 9, (11,)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gathers_equal_aten_bit_for_bit(dtype: torch.dtype) -> None:
    inputs = _gather_inputs(dtype)
    got, report = run_compiled(_gathers, *inputs)
    want = _gathers(*inputs)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w)
    kinds = {op: k["kind"] for k in report.kernels for op in k["ops"]}
    for op in ("aten.embedding.default", "aten.index.Tensor", "aten.gather.default", "aten.index_select.default"):
        assert kinds.get(op) == "gather", (op, kinds)
    assert all(k["status"] == "ran" for k in report.kernels)
    assert not report.fallbacks, report.fallbacks


def _copies(a: torch.Tensor, b: torch.Tensor, base: torch.Tensor, src: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (torch.cat([a, b.transpose(0, 1), a[:, :2]], 1),
            torch.cat([a.new_zeros(0), a], 0),                      # legacy empty operand, skipped
            torch.nn.functional.pad(a, (2, 1, -1, 3), value=-2.5),  # negative pad crops
            torch.slice_scatter(base, src, 1, 1, None, 2),
            torch.select_scatter(base, src[:, 0], 1, -1))  # decomposed: a where


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_copies_equal_aten_bit_for_bit(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    inputs = (torch.randn(5, 3).to(dtype), torch.randn(4, 5).to(dtype), torch.randn(5, 7).to(dtype),
              torch.randn(7, 5).to(dtype).t()[:, :3])
    got, report = run_compiled(_copies, *inputs)
    for g, w in zip(got, _copies(*inputs)):
        assert g.shape == w.shape and torch.equal(g, w)
    kinds = {op.split(".")[1] for k in report.kernels if k["kind"] == "copy" for op in k["ops"]}
    # (select_scatter is decomposed into an iota compare and a where)
    assert kinds >= {"cat", "constant_pad_nd", "slice_scatter"}, kinds
    assert all(k["status"] == "ran" for k in report.kernels)


def test_large_gather_runs_threaded_and_matches() -> None:
    torch.manual_seed(2)
    w, idx = torch.randn(1001, 67), torch.randint(0, 1001, (37, 29))
    fn = torch.compile(lambda w, i: torch.nn.functional.embedding(i, w), backend="tilewright")
    assert torch.equal(fn(w, idx), torch.nn.functional.embedding(idx, w))
    torch._dynamo.reset()


def _lookups(x: torch.Tensor, e: torch.Tensor, i: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    y = x * 2
    return torch.nn.functional.embedding(e, y), y[i], torch.gather(y, 0, g.reshape(-1, 1).expand(-1, 5))


def test_out_of_range_index_raises_like_eager_and_keeps_the_kernels() -> None:
    torch.manual_seed(3)
    x = torch.randn(6, 5)
    fn = torch.compile(_lookups, backend="tilewright")
    good = torch.tensor([0, 5, 3, 5])
    for got, want in zip(fn(x, good, good, good), _lookups(x, good, good, good)):
        assert torch.equal(got, want)
    for position in range(3):
        for bad in (torch.tensor([0, 6, 1, 2]), torch.tensor([0, -7 if position == 1 else -1, 1, 2])):
            args = [good, good, good]
            args[position] = bad
            with pytest.raises((IndexError, RuntimeError), match="out of"):
                _lookups(x, *args)  # eager's own error ...
            with pytest.raises((IndexError, RuntimeError), match="out of") as raised:
                fn(x, *args)  # ... is what the compiled graph raises
            assert not isinstance(raised.value, StrictModeError), raised.value  # not a kernel fallback
    for got, want in zip(fn(x, good, good, good), _lookups(x, good, good, good)):  # still the kernels (strict)
        assert torch.equal(got, want)
    torch._dynamo.reset()


def test_generators_equal_aten() -> None:
    def gen(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.arange(3, 17, 2), torch.arange(0.5, 3.2, 0.3, dtype=torch.float32),
                torch.arange(x.shape[0], dtype=torch.float64) * x, torch.full((5, 3), 2.5, dtype=torch.bfloat16),
                torch.ops.aten.scalar_tensor(-3.4028234663852886e38, dtype=torch.float32), torch.full((), True))

    x = torch.randn(7, dtype=torch.float64)
    got, report = run_compiled(gen, x)
    for g, w in zip(got, gen(x)):
        assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w)
    assert sum(k["kind"] == "fill" for k in report.kernels) >= 5
    assert not report.fallbacks, report.fallbacks
