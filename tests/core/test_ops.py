"""Every lowered op against its eager reference: odd sizes, non-contiguous inputs, broadcasting."""
from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

from .helpers import assert_close, compile_and_run, kernel_ops


def _pos(*shape: int) -> torch.Tensor:
    return torch.rand(*shape) + 0.1


UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp, "log": lambda x: torch.log(x.abs() + 0.1), "sqrt": lambda x: torch.sqrt(x.abs()),
    "rsqrt": lambda x: torch.rsqrt(x.abs() + 0.1), "tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": F.relu,
    "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "erf": torch.erf,
    "abs": torch.abs, "neg": torch.neg, "reciprocal": lambda x: torch.reciprocal(x.abs() + 0.5), "sin": torch.sin,
    "cos": torch.cos, "floor": torch.floor, "ceil": torch.ceil, "sign": torch.sign, "expm1": torch.expm1,
    "log1p": lambda x: torch.log1p(x.abs()), "square": lambda x: x ** 2, "pow_half": lambda x: x.abs() ** 0.5,
    "pow_frac": lambda x: (x.abs() + 0.1) ** 3.3, "pow_neg": lambda x: (x.abs() + 0.5) ** -2,
    "clamp": lambda x: torch.clamp(x, -0.5, 0.7), "clamp_min": lambda x: torch.clamp(x, min=0.2),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.1), "hardtanh": F.hardtanh, "mish": F.mish, "elu": F.elu,
    "softplus": F.softplus, "hardswish": F.hardswish,
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name: str) -> None:
    x = torch.randn(5, 37)
    fn = UNARY[name]
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x), rtol=2e-5, atol=2e-5)
    assert report.coverage == 1.0, str(report)


BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] = {
    "add": torch.add, "add_alpha": lambda a, b: torch.add(a, b, alpha=0.5), "sub": torch.sub, "mul": torch.mul,
    "div": lambda a, b: a / (b.abs() + 0.5), "floor_div": lambda a, b: torch.div(a, b.abs() + 0.5, rounding_mode="floor"),
    "trunc_div": lambda a, b: torch.div(a, b.abs() + 0.5, rounding_mode="trunc"), "maximum": torch.maximum,
    "minimum": torch.minimum, "eq": lambda a, b: a.round() == b.round(), "lt": torch.lt, "ge": torch.ge,
    "where": lambda a, b: torch.where(a > b, a, b * 2), "masked_fill": lambda a, b: a.masked_fill(b > 0, -3.5),
    "logical": lambda a, b: torch.logical_and(a > 0, torch.logical_not(b > 0)), "rsub": lambda a, b: 1.5 - a,
    "scalar_ops": lambda a, b: (a * 3 + 1) / 7 - b,
}


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_with_broadcasting(name: str) -> None:
    a = torch.randn(3, 1, 37)
    b = torch.randn(5, 1)  # broadcasts to [3, 5, 37]
    fn = BINARY[name]
    out, report = compile_and_run(fn, a, b)
    assert_close(out, fn(a, b))
    assert report.coverage == 1.0, str(report)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "permuted", "expanded", "offset"])
def test_non_contiguous_inputs(layout: str) -> None:
    base = torch.randn(13, 22)
    views = {
        "transposed": lambda t: t.t(),
        "sliced": lambda t: t[1:, ::3],
        "permuted": lambda t: t.view(13, 2, 11).permute(2, 0, 1),
        "expanded": lambda t: t[:, :1].expand(13, 9),
        "offset": lambda t: t[5:, 7:],
    }
    x = views[layout](base)
    fn = lambda t: torch.sigmoid(t) * 2 + t  # noqa: E731
    out, _ = compile_and_run(fn, x)
    assert_close(out, fn(x))


def test_views_inside_a_kernel() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        y = (x * 2).view(3, 5, 7).permute(2, 0, 1)
        return y.reshape(7, 15).t() + 1

    x = torch.randn(15, 7)
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x))
    assert len(report.kernels) == 1, str(report)


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, torch.bool, torch.float64])
def test_casts(dtype: torch.dtype) -> None:
    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = (x * 3).to(dtype)
        return y, y.to(torch.float32) + 1

    x = torch.randn(7, 9)
    out, _ = compile_and_run(fn, x)
    assert_close(out, fn(x))


def test_generators_arange_full_and_causal_mask() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        i = torch.arange(n)
        causal = i[None, :] <= i[:, None]
        return torch.where(causal, x, torch.full_like(x, -1e4)) + torch.arange(0.5, n + 0.5)

    x = torch.randn(11, 11)
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x))
    assert report.coverage == 1.0


def test_embedding_and_cat() -> None:
    weight = torch.randn(17, 6)
    idx = torch.randint(0, 17, (3, 5))

    def fn(w: torch.Tensor, i: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        e = F.embedding(i, w)
        return torch.cat([e, x, e * 2], dim=-1).relu()

    x = torch.randn(3, 5, 4)
    out, report = compile_and_run(fn, weight, idx, x)
    assert_close(out, fn(weight, idx, x))
    assert "aten.embedding.default" in kernel_ops(report)
    assert "aten.cat.default" in kernel_ops(report)


REDUCTIONS: dict[str, Callable[[torch.Tensor], Any]] = {
    "sum_last": lambda x: x.sum(-1), "sum_all": lambda x: x.sum(), "sum_first": lambda x: x.sum(0),
    "sum_middle": lambda x: x.sum(1, keepdim=True), "mean": lambda x: x.mean(-1, keepdim=True),
    "amax": lambda x: x.amax(-1), "amin": lambda x: x.amin((0, 2)), "var": lambda x: x.var(-1),
    "var_biased": lambda x: x.var(-1, correction=0), "std": lambda x: x.std(1),
    "softmax": lambda x: torch.softmax(x, -1), "log_softmax": lambda x: F.log_softmax(x, 1),
    "layer_norm": lambda x: F.layer_norm(x, (x.shape[-1],)),
    "rms_norm": lambda x: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6),
    "sum_int": lambda x: (x > 0).sum(-1), "max_int": lambda x: (x * 10).long().amax(-1),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions(name: str) -> None:
    x = torch.randn(3, 19, 37)
    fn = REDUCTIONS[name]
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x), rtol=1e-5, atol=1e-5)
    assert report.coverage == 1.0, str(report)


@pytest.mark.parametrize("fused", ["softmax", "layer_norm"])
def test_normalizations_are_single_kernels(fused: str) -> None:
    x = torch.randn(6, 45)
    w, b = torch.randn(45), torch.randn(45)
    fns = {"softmax": lambda x, w, b: torch.softmax(x * 0.3, -1),
           "layer_norm": lambda x, w, b: F.layer_norm(x, (45,), w, b)}
    out, report = compile_and_run(fns[fused], x, w, b)
    assert_close(out, fns[fused](x, w, b))
    assert len(report.kernels) == 1, str(report)
    assert report.kernels[0]["kind"] == "reduction"


def test_persistent_and_looped_reductions_agree() -> None:
    from tilewright.frontend.api import tunable_kernels

    x = torch.randn(3, 501)
    fn = lambda x: torch.softmax(x, -1) * x.sum(-1, keepdim=True)  # noqa: E731
    (kernel,) = tunable_kernels(fn, (x,))
    assert kernel.problem.kind == "reduction"
    results = []
    for rblock in (32, 512):  # looped (three passes over the row) and persistent
        config = dict(kernel.space.default_config(), RBLOCK=rblock, XBLOCK=2, num_warps=2)
        assert kernel.space.is_feasible(config), kernel.space.check(config)
        tensors = [x] + [torch.full(v.type.shape, float("nan")) for v in kernel.spec.outputs]
        kernel.runner(config)(tensors)
        results.append(tensors[1])
    want = fn(x)
    for got in results:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(13, 17, 19), (1, 33, 7), (40, 3, 50)])
def test_matmul_odd_sizes(shape: tuple[int, int, int]) -> None:
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    out, report = compile_and_run(torch.mm, a, b)
    assert_close(out, a @ b, rtol=1e-4, atol=1e-4)
    assert report.kernels[0]["kind"] == "matmul"


def test_bmm_with_transposed_operand() -> None:
    a, b = torch.randn(3, 9, 13), torch.randn(3, 11, 13)
    fn = lambda a, b: torch.bmm(a, b.transpose(1, 2)) * 0.5  # noqa: E731
    out, report = compile_and_run(fn, a, b)
    assert_close(out, fn(a, b), rtol=1e-4, atol=1e-4)
    assert len(report.kernels) == 1 and report.kernels[0]["kind"] == "matmul"


def test_addmm_with_alpha_beta() -> None:
    bias, a, b = torch.randn(19), torch.randn(13, 17), torch.randn(17, 19)
    fn = lambda bias, a, b: torch.addmm(bias, a, b, beta=0.5, alpha=2.0)  # noqa: E731
    out, _ = compile_and_run(fn, bias, a, b)
    assert_close(out, fn(bias, a, b), rtol=1e-4, atol=1e-4)


def test_linear_epilogue_through_views() -> None:
    lin = torch.nn.Linear(24, 40)

    def fn(x: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        return F.gelu(lin(x)) * 0.5 + res

    x, res = torch.randn(2, 7, 24), torch.randn(2, 7, 40)
    with torch.no_grad():
        out, report = compile_and_run(fn, x, res)
        want = fn(x, res)
    assert_close(out, want, rtol=1e-4, atol=1e-4)
    mm = [k for k in report.kernels if k["kind"] == "matmul"]
    assert len(mm) == 1 and len(report.kernels) == 1, str(report)
    assert {"aten.gelu.default", "aten.add.Tensor"} <= set(mm[0]["ops"])


def test_matmul_float16() -> None:
    a, b = torch.randn(33, 40).half(), torch.randn(40, 21).half()
    out, _ = compile_and_run(lambda a, b: torch.relu(a @ b), a, b)
    want = torch.relu(a.float() @ b.float())
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)


def test_multiple_outputs_from_one_kernel() -> None:
    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = torch.exp(x)
        return y, y * 2, torch.sin(y)

    x = torch.randn(9, 31)
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x))
    assert len(report.kernels) == 1


@pytest.mark.parametrize("case", ["max3s2p1", "max2", "max_dilated", "avg3s2p1", "avg_no_pad_count", "max_ceil"])
def test_pooling(case: str) -> None:
    fns = {
        "max3s2p1": lambda x: F.max_pool2d(x, 3, 2, 1),
        "max2": lambda x: F.max_pool2d(x, 2),
        "max_dilated": lambda x: F.max_pool2d(x, 2, 1, 0, dilation=2),
        "avg3s2p1": lambda x: F.avg_pool2d(x, 3, 2, 1),
        "avg_no_pad_count": lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
        "max_ceil": lambda x: F.max_pool2d(x, 3, 2, 0, ceil_mode=True),
    }
    x = torch.randn(2, 3, 11, 13)
    out, report = compile_and_run(fns[case], x)
    assert_close(out, fns[case](x))
    assert report.coverage == 1.0, str(report)


def test_any_all_and_safe_softmax() -> None:
    def fn(x: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = x + m
        return torch.ops.aten._safe_softmax(s, -1), (s > 1).any(-1), (s > -1).all(1)

    x = torch.randn(2, 3, 5, 7)
    m = torch.zeros(2, 1, 1, 7)
    m[1, ..., 3:] = float("-inf")
    m[0, ..., :] = float("-inf")  # fully masked rows give zeros, not NaN
    out, report = compile_and_run(fn, x, m)
    assert_close(out, fn(x, m))
    assert report.coverage == 1.0, str(report)


@pytest.mark.parametrize("case", ["gather", "index_select", "slice_scatter", "slice_scatter_step", "select_scatter"])
def test_indexing_ops(case: str) -> None:
    x = torch.randn(5, 9, 7)
    fns = {
        "gather": lambda x: torch.gather(x, 1, torch.randint(0, 9, (5, 4, 7), generator=torch.Generator().manual_seed(0))) * 2,
        "index_select": lambda x: torch.index_select(x, 2, torch.tensor([6, 0, 3, 3])) + 1,
        "slice_scatter": lambda x: torch.slice_scatter(x, torch.ones(5, 3, 7), 1, 2, 5) * 3,
        "slice_scatter_step": lambda x: torch.slice_scatter(x, torch.ones(5, 9, 3), 2, 1, 7, 2) - 1,
        "select_scatter": lambda x: torch.select_scatter(x, torch.zeros(5, 7), 1, -2).exp(),
    }
    out, report = compile_and_run(fns[case], x)
    assert_close(out, fns[case](x))
    assert report.coverage == 1.0, str(report)  # (select_scatter reaches us decomposed into where)


@pytest.mark.parametrize("case", ["rows", "middle", "two_tensors", "negative"])
def test_advanced_indexing(case: str) -> None:
    x = torch.randn(6, 5, 7)
    i = torch.tensor([[0, 5], [3, 3]])
    j = torch.tensor([1, 4])
    fns = {
        "rows": lambda x: x[i] * 2,
        "middle": lambda x: x[:, j] + 1,
        "two_tensors": lambda x: x[i, j].relu(),
        "negative": lambda x: x[torch.tensor([-1, 0, -6])] - 1,
    }
    out, report = compile_and_run(fns[case], x)
    assert_close(out, fns[case](x))
    assert report.coverage == 1.0, str(report)


@pytest.mark.parametrize("accumulate", [True, False])
def test_index_put(accumulate: bool) -> None:
    def fn(x: torch.Tensor, i: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.index_put(x * 1.0, [i], v * 2, accumulate) + 1

    x = torch.randn(9, 5)
    i = torch.tensor([0, 3, 3, -1, 7]) if accumulate else torch.tensor([0, 3, -2, 7])
    v = torch.randn(len(i), 5)
    out, report = compile_and_run(fn, x, i, v)
    assert_close(out, fn(x, i, v))
    assert report.coverage == 1.0, str(report)
    assert any(k["kind"] == "scatter" for k in report.kernels)


def test_deterministic_algorithms_keep_accumulating_scatters_out_of_atomics() -> None:
    def fn(x: torch.Tensor, i: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.index_put(x * 1.0, [i], v * 2, True) + 1

    x, i, v = torch.randn(9, 5), torch.tensor([0, 3, 3, -1, 7, 3]), torch.randn(6, 5)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        out, report = compile_and_run(fn, x, i, v)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert_close(out, fn(x, i, v))
    assert not any(k["kind"] == "scatter" for k in report.kernels)
    assert any("deterministic" in f["reason"] for f in report.fallbacks), report.fallbacks


def test_embedding_backward_runs_in_generated_kernels() -> None:
    emb = torch.nn.Embedding(11, 6)
    idx = torch.tensor([[1, 4, 4], [10, 1, 0]])
    compiled = torch.compile(lambda i: (emb(i) ** 2).sum(), backend="tilewright")
    from tilewright.report import collect

    with collect() as report:
        compiled(idx).backward()
    got = emb.weight.grad.clone()
    emb.weight.grad = None
    (emb(idx) ** 2).sum().backward()
    torch.testing.assert_close(got, emb.weight.grad)
    assert report.coverage == 1.0, str(report)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded", "permuted"])
@pytest.mark.parametrize("op", ["softmax", "sum_first", "layer_norm"])
def test_reductions_on_non_contiguous_inputs(layout: str, op: str) -> None:
    base = torch.randn(2, 13, 22)
    views = {"transposed": lambda t: t.transpose(1, 2), "sliced": lambda t: t[:, 1::2, 3:],
             "expanded": lambda t: t[:, :1, :].expand(2, 9, 22), "permuted": lambda t: t.permute(2, 0, 1)}
    ops = {"softmax": lambda t: torch.softmax(t, -1), "sum_first": lambda t: t.sum(0),
           "layer_norm": lambda t: F.layer_norm(t, (t.shape[-1],))}
    x = views[layout](base)
    fn = ops[op]
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x), rtol=1e-5, atol=1e-5)
    assert report.coverage == 1.0, str(report)


def test_matmul_with_sliced_and_expanded_operands() -> None:
    a = torch.randn(20, 31)[3:16, ::2]           # non-unit column stride
    b = torch.randn(1, 9).expand(16, 9)           # stride-0 rows
    fn = lambda a, b: (a @ b).tanh()  # noqa: E731
    out, report = compile_and_run(fn, a, b)
    assert_close(out, fn(a, b), rtol=1e-4, atol=1e-4)
    assert report.kernels[0]["kind"] == "matmul"


@pytest.mark.parametrize("args", [(3, 2, 1, 1), (2, 2, 0, 1), (3, 1, 1, 2)])
def test_max_pool_indices_and_backward(args: tuple[int, int, int, int]) -> None:
    k, s, p, d = args
    x = torch.randn(2, 3, 11, 13, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    fn = lambda t: F.max_pool2d(t, k, s, p, dilation=d, return_indices=True)  # noqa: E731
    compiled = torch.compile(fn, backend="tilewright")
    from tilewright.report import collect

    with collect() as report:
        out, ind = compiled(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    want, want_ind = fn(x_ref)
    (want * torch.linspace(-1, 1, want.numel()).view_as(want)).sum().backward()
    assert_close(out, want)
    assert torch.equal(ind, want_ind)
    assert_close(x.grad, x_ref.grad)
    assert report.coverage == 1.0, str(report)


@pytest.mark.parametrize("case", ["sum_all", "mean_last", "amax_cols", "sum_first_keepdim", "half_sum", "any"])
def test_long_reductions_are_split_in_two_levels(case: str) -> None:
    fns = {
        "sum_all": (lambda x: x.sum(), torch.randn(300, 230)),
        "mean_last": (lambda x: x.mean(-1, keepdim=True), torch.randn(3, 40000)),
        "amax_cols": (lambda x: x.amax(0), torch.randn(40000, 3)),
        "sum_first_keepdim": (lambda x: (x * 2).sum((0, 1), keepdim=True), torch.randn(200, 190, 2)),
        "half_sum": (lambda x: x.sum(-1), torch.randn(2, 65536).half()),
        "any": (lambda x: (x > 4.0).any(-1), torch.randn(2, 50000)),
    }
    fn, x = fns[case]
    out, report = compile_and_run(fn, x)
    want = fn(x)
    if want.dtype == torch.float16:
        torch.testing.assert_close(out.float(), fn(x.float()), rtol=2e-3, atol=0.2)
    else:
        assert_close(out, want, rtol=1e-4, atol=1e-3)
    reductions = [k for k in report.kernels if k["kind"] == "reduction"]
    assert len(reductions) == 2, str(report)  # partial rows, then the combine
    assert report.coverage == 1.0


@pytest.mark.parametrize("pad", [(1, 2), (0, 3, 2, 1), (-1, 2, 1, 0)])
def test_constant_pad(pad: tuple[int, ...]) -> None:
    x = torch.randn(2, 5, 7)
    fn = lambda x: F.pad(x * 2, pad, value=-1.5)  # noqa: E731
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x))
    assert report.coverage == 1.0, str(report)


def test_cross_entropy_training_step() -> None:
    logits = torch.randn(6, 11, requires_grad=True)
    target = torch.tensor([0, 3, 10, 2, 2, 7])
    ref = logits.detach().clone().requires_grad_(True)
    fn = lambda x, t: F.cross_entropy(x, t)  # noqa: E731
    from tilewright.report import collect

    with collect() as report:
        loss = torch.compile(fn, backend="tilewright")(logits, target)
        loss.backward()
    want = fn(ref, target)
    want.backward()
    assert_close(loss, want)
    assert_close(logits.grad, ref.grad)
    assert report.coverage == 1.0, str(report)


def test_dropout_is_fused_and_consistent_between_forward_and_backward() -> None:
    p = 0.3
    x = torch.randn(64, 97, requires_grad=True)
    res = torch.randn(64, 97)
    fn = lambda x, r: F.dropout(x * 2, p, training=True) + r  # noqa: E731
    from tilewright.report import collect

    compiled = torch.compile(fn, backend="tilewright")
    with collect() as report:
        out = compiled(x, res)
        out.sum().backward()
    kept = (out - res) != 0
    rate = kept.float().mean().item()
    assert abs(rate - (1 - p)) < 0.03, rate  # about 1 - p of the elements survive
    torch.testing.assert_close((out - res)[kept], (x * 2 / (1 - p))[kept].detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, kept.float() * 2 / (1 - p))  # the backward uses the same mask
    assert not any(f["op"] == "aten.native_dropout.default" for f in report.fallbacks), report.fallbacks
    assert any("tilewright.dropout_mask.default" in k["ops"] for k in report.kernels), str(report)
    again = compiled(x, res)
    assert not torch.equal(again, out), "every call draws a new mask"


def test_fully_broadcast_view_of_a_buffer() -> None:
    def fn(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, s.expand(3, 5), x * 2)  # s: every stride of the view is 0

    s, x = torch.randn(1, 1), torch.randn(3, 5)
    out, report = compile_and_run(fn, s, x)
    assert_close(out, fn(s, x))
    assert not report.fallbacks, report.fallbacks


def test_in_place_buffer_updates_run_in_kernels() -> None:
    bn = torch.nn.BatchNorm1d(6).train()
    x = torch.randn(9, 6)
    bn_ref = copy.deepcopy(bn)
    from tilewright.report import collect

    with collect() as report:
        out = torch.compile(bn, backend="tilewright")(x)
    want = bn_ref(x)
    assert_close(out, want, rtol=1e-5, atol=1e-5)
    assert_close(bn.running_mean, bn_ref.running_mean)
    assert_close(bn.running_var, bn_ref.running_var)
    assert torch.equal(bn.num_batches_tracked, bn_ref.num_batches_tracked)
    assert any("aten.copy_.default" in k["ops"] for k in report.kernels), str(report)


def test_in_place_write_waits_for_every_reader_of_the_old_value() -> None:
    class Counter(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("state", torch.arange(6.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            old = self.state * 1.0
            self.state.copy_(x.sum(0))          # new contents do not depend on the old ones
            return (x @ x.t()).sum() + old      # a late reader of the old contents

    m, m_ref = Counter(), Counter()
    x = torch.randn(4, 6)
    out = torch.compile(m, backend="tilewright")(x)
    assert_close(out, m_ref(x), rtol=1e-5, atol=1e-5)
    assert_close(m.state, m_ref.state)


def test_prims_convert_element_type() -> None:
    def fn(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.prims.convert_element_type(x * 3, torch.float64) + 1

    x = torch.randn(5, 7)
    out, report = compile_and_run(fn, x)
    assert_close(out, fn(x))
    assert report.coverage == 1.0, str(report)


ONE_ELEMENT: dict[str, Callable[..., Any]] = {
    # generators at a constant index (a one-element dim): typed scalars, not Python literals
    "arange_one": lambda x, y: x * torch.arange(1, dtype=torch.float32) + torch.arange(3, 4),
    "interpolate_to_one_row": lambda x, y: F.interpolate(x[None, None], size=(1, 9), mode="bilinear"),
    "full_bool": lambda x, y: torch.full_like(x, True, dtype=torch.bool) & (x > 0),
    "max_pool1d_one_window": lambda x, y: F.max_pool1d(x[:, None, :3], 3, return_indices=True),
    # bool blocks with a 0-d bool operand
    "logical_and_0d": lambda x, y: torch.logical_and(x, y),
    "logical_or_0d": lambda x, y: torch.logical_or(x > 0, y),
    "bitwise_and_bool": lambda x, y: (x > 0) & (y > 0),
    # one-element scatters
    "index_fill_one": lambda x, y: x[:1, :1].index_fill(0, torch.tensor([0]), 2.5),
    "index_add_one": lambda x, y: x[:1, 0].index_add(0, torch.tensor([0]), y[None]),
    "index_copy_one": lambda x, y: x[:1, 0].index_copy(0, torch.tensor([0]), y[None]),
}


@pytest.mark.parametrize("name", sorted(ONE_ELEMENT))
def test_one_element_and_scalar_operand_cases(name: str) -> None:
    """Kernels that once failed at run time in every call (and silently ran their reference)."""
    x = torch.randn(3, 11)
    x[0, 0] = 0.0
    y = torch.tensor(-0.75)
    fn = ONE_ELEMENT[name]
    out, report = compile_and_run(fn, x, y)
    assert_close(out, fn(x, y))
    assert report.kernels, str(report)
    assert not [f for f in report.fallbacks if f["reason"].startswith("kernel failed")], str(report.fallbacks)


def test_dropout_offsets_widen_past_two_to_the_31() -> None:
    """Philox offsets of a dropout mask: int32 while every element index fits, int64 beyond (an
    int32 offset would wrap and repeat the mask every 2**31 elements)."""
    import inspect

    from tilewright.targets.triton.attention import kernels
    from tilewright.targets.triton.emit.special_ops import rng_offset_type

    assert rng_offset_type(2**31 - 1) == "tl.int32"
    assert rng_offset_type(2**31) == "tl.int64" and rng_offset_type(3 * 2**31) == "tl.int64"
    source = inspect.getsource(kernels._dropout_keep.fn if hasattr(kernels._dropout_keep, "fn")
                               else kernels._dropout_keep)
    assert "pid_bh.to(tl.int64)" in source and "tl.int32" not in source.split("rng_offs =")[1].split("\n")[0]
