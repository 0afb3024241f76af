"""``index_put`` (the embedding backward) on the native CPU target: equal to ATen bit for bit with
duplicate indices under every schedule (destinations are partitioned, each gets its contributions
in position order), float32 and bfloat16, strided values, bounds-checked indices; and a GPT-2
training step whose embedding gathers and their backward scatters run as generated kernels."""
from __future__ import annotations

import copy

import pytest
import torch

from tilewright.report import collect

from ..models.model_zoo import MODELS, main_output
from .helpers import run_compiled

pytestmark = pytest.mark.usefixtures("cpu_target")


def _put(base: torch.Tensor, i: torch.Tensor, j: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.index_put(base, [i, j], v, True)


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    base = torch.randn(5, 6, 7).to(dtype)
    i = torch.randint(-5, 5, (9, 1))          # many duplicates, negative indices count from the end
    j = torch.randint(0, 3, (1, 4))
    v = torch.randn(7, 4, 9).to(dtype).permute(2, 1, 0)  # (9, 4, 7), strided
    return base, i, j, v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_accumulating_index_put_with_duplicates_equals_aten_under_every_schedule(dtype: torch.dtype) -> None:
    inputs = _inputs(dtype)
    want = _put(*inputs)
    got, report = run_compiled(_put, *inputs)
    assert torch.equal(got, want)
    kernel = next(k for g in report.graphs for k in g.tunable_kernels if k.kind == "scatter")
    assert kernel.ops == ["aten.index_put.default"]
    threads = max(kernel.space.params["threads"])
    for config in ({"threads": 1, "parts_per_thread": 1, "BLOCK": 1024},
                   {"threads": threads, "parts_per_thread": 4, "BLOCK": 64}):
        out = torch.full_like(want, float("nan"))
        kernel.runner(config)([*inputs, out])
        assert torch.equal(out, want), config


def test_index_put_without_accumulate_and_a_broadcast_value() -> None:
    torch.manual_seed(1)
    base, rows = torch.randn(11, 3, 5), torch.randperm(11)[:6]

    def put(b: torch.Tensor, r: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.index_put(b * 2, [None, r.remainder(3)], v, False) + torch.ops.aten.index_put(
            b, [r], v[:, None, :], False)

    v = torch.randn(6, 5)
    got, report = run_compiled(put, base, rows, v)
    assert torch.equal(got, put(base, rows, v))
    assert sum(k["kind"] == "scatter" for k in report.kernels) == 2


def test_out_of_range_index_put_raises_like_eager() -> None:
    fn = torch.compile(lambda b, i, v: torch.ops.aten.index_put(b * 1, [i], v, True), backend="tilewright")
    base, v = torch.zeros(6, 3), torch.ones(4, 3)
    good = torch.tensor([0, 5, -6, 5])
    assert torch.equal(fn(base, good, v), torch.ops.aten.index_put(base, [good], v, True))
    for bad in (torch.tensor([0, 6, 1, 1]), torch.tensor([-7, 0, 1, 1])):
        with pytest.raises(IndexError, match="out of bounds"):
            fn(base, bad, v)
    torch._dynamo.reset()


def test_embedding_training_runs_gather_and_scatter_kernels() -> None:
    torch.manual_seed(2)
    emb = torch.nn.Embedding(37, 19)
    ref = copy.deepcopy(emb).double()
    idx = torch.randint(0, 37, (5, 13))  # duplicates in the batch
    with collect() as report:
        out = torch.compile(emb, backend="tilewright")(idx)
        (out * out).sum().backward()
    torch._dynamo.reset()
    (ref(idx) ** 2).sum().backward()
    torch.testing.assert_close(emb.weight.grad.double(), ref.weight.grad, rtol=1e-5, atol=1e-5)
    kinds = {k["kind"] for k in report.kernels if k["status"] == "ran"}
    assert {"gather", "scatter"} <= kinds, report.kernels


def test_gpt2_training_step_embeddings_and_their_backward_are_generated() -> None:
    torch.manual_seed(0)
    model, inputs, _ = MODELS["gpt2"]()
    model.train()
    ref = copy.deepcopy(model).double()
    with collect() as report:
        loss = main_output(torch.compile(model, backend="tilewright")(*inputs)).float().pow(2).mean()
        loss.backward()
    torch._dynamo.reset()
    main_output(ref(*inputs)).pow(2).mean().backward()
    for name in ("transformer.wte.weight", "transformer.wpe.weight"):
        got, want = dict(model.named_parameters())[name].grad, dict(ref.named_parameters())[name].grad
        assert (got.double() - want).abs().max().item() <= 1e-4 * want.abs().max().item() + 1e-7, name
    ran = [(k["kind"], op) for k in report.kernels if k["status"] == "ran" for op in k["ops"]]
    assert sum(r == ("gather", "aten.embedding.default") for r in ran) == 2, ran
    assert sum(r == ("scatter", "aten.index_put.default") for r in ran) == 2, ran
    fallbacks = {f["op"] for f in report.fallbacks}
    assert not fallbacks & {"aten.embedding.default", "aten.index_put.default", "aten.cat.default"}, fallbacks
