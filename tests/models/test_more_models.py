"""More architectures, inference only: outputs vs float64 and what gets fused.

T5 (relative-position attention bias), Mistral (grouped-query attention), DistilBERT, BART
(encoder-decoder, causal decoder self-attention and cross-attention) and ConvNeXt (depthwise
convolutions, channels-last layer norms, layer scale).
"""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import tilewright

from .model_zoo import more_models as _cases

pytestmark = pytest.mark.slow


def _main(out: Any) -> torch.Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


@pytest.mark.parametrize("name", ["t5", "mistral", "distilbert", "bart", "convnext"])
def test_more_architectures(name: str) -> None:
    torch.manual_seed(0)
    make, inputs, attention_layers = _cases()[name]
    model = make().eval()
    report = tilewright.explain(model, *inputs)
    with torch.no_grad():
        got = _main(torch.compile(model, backend="tilewright")(*inputs)).double()
        eager = _main(model(*inputs)).double()
        ref = _main(copy.deepcopy(model).double()(*[i.double() if i.is_floating_point() else i for i in inputs]))
    eager_err = (eager - ref).abs().max().item()
    assert (got - ref).abs().max().item() <= 10 * eager_err + 1e-6
    assert report.coverage >= 0.9, str(report)
    assert report.attention_fused == attention_layers, str(report)


def test_mobilevit_training_runs_every_kernel() -> None:
    """MobileViT (unfold/fold with interpolation indices, attention, depthwise convs) in training.

    Its interpolation-index kernel once failed on every call while coverage still said 1.0; in
    strict mode any such fallback raises, and the loss and gradients must match eager
    (float64-judged).
    """
    import transformers as T

    T.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = T.MobileViTConfig(num_channels=3, image_size=40, patch_size=2, hidden_sizes=[16, 24, 32],
                            neck_hidden_sizes=[8, 8, 12, 12, 16, 16, 24], num_attention_heads=2, mlp_ratio=2.0,
                            expand_ratio=2.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                            classifier_dropout_prob=0.0)
    model = T.MobileViTForImageClassification(cfg)
    x = torch.randn(2, 3, 38, 38)  # not a multiple of the patch grid: the unfolding interpolates

    def step(m: torch.nn.Module, inp: torch.Tensor) -> list[torch.Tensor]:
        m.zero_grad()
        loss = m(inp).logits.square().mean()
        loss.backward()
        return [loss.detach().double()] + [p.grad.detach().double() for p in m.parameters() if p.grad is not None]

    ref_model = copy.deepcopy(model).double()
    ref = step(ref_model, x.double())
    eager = step(model, x)
    with tilewright.report.collect() as report:
        got = step(torch.compile(model, backend="tilewright"), x)
    assert len(got) == len(ref) == len(eager)
    for i, (g, e, r) in enumerate(zip(got, eager, ref)):
        eager_err = (e - r).abs().max().item()
        scale = r.abs().max().item()
        assert (g - r).abs().max().item() <= 10 * eager_err + 1e-5 * max(scale, 1e-3), i
    assert report.coverage == 1.0, str(report)
    assert all(k["status"] == "ran" for k in report.kernels)
