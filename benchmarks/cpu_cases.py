"""The CPU benchmark suite's cases: kernels and models at sizes a CPU serves.

Each case builds a :class:`CpuWorkload` — the thing handed to ``torch.compile`` (a function or
an ``nn.Module``), a ``step`` that runs it once and returns the tensors that are compared
between systems (forward outputs; for a training step the loss and every parameter gradient),
and the tolerance those comparisons use. Weights are random and seeded; nothing is downloaded.

Models (issue #13's list): GPT-2, BERT, LLaMA with grouped-query attention, Mistral with a
sliding window, ViT, ResNet-18 and ResNet-50 at 224 px; inference in float32 and bfloat16, and
a training step (forward + backward of a squared loss).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

Tensors = list[torch.Tensor]


@dataclass
class CpuWorkload:
    """One runnable case: ``step(compiled_target)`` returns the tensors to compare."""

    target: Any
    step: Callable[[Any], Tensors]
    #: relative error (‖got − eager‖ / ‖eager‖, per tensor) a system may show
    tolerance: float


@dataclass(frozen=True)
class CpuCase:
    """A named case; ``build()`` makes a fresh workload (fresh model copy, seeded inputs)."""

    name: str
    group: str  # "kernel", "inference", "bf16", "train"
    build: Callable[[], CpuWorkload]
    note: str = ""


# ------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------

def _kernel(fn: Callable[..., torch.Tensor], *shapes: tuple[int, ...]) -> Callable[[], CpuWorkload]:
    def build() -> CpuWorkload:
        gen = torch.Generator().manual_seed(0)
        args = [torch.randn(*s, generator=gen) for s in shapes]
        return CpuWorkload(fn, lambda target: [target(*args)], 1e-4)
    return build


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, -1)


def _layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), w, b)


def _rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def _pointwise_chain(x: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x * y + b) * F.gelu(x) - y


def _linear_gelu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.gelu(F.linear(x, w, b))


KERNEL_CASES: tuple[CpuCase, ...] = (
    CpuCase("softmax 2048x1024", "kernel", _kernel(_softmax, (2048, 1024))),
    CpuCase("layer_norm 2048x1024", "kernel", _kernel(_layer_norm, (2048, 1024), (1024,), (1024,))),
    CpuCase("rms_norm 2048x1024", "kernel", _kernel(_rms_norm, (2048, 1024), (1024,))),
    CpuCase("pointwise_chain 2048x2048", "kernel", _kernel(_pointwise_chain, (2048, 2048), (2048, 2048), (2048,))),
    CpuCase("linear+bias+gelu 512x768x3072", "kernel", _kernel(_linear_gelu, (512, 768), (3072, 768), (3072,))),
)


# ------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------

def _quiet_transformers() -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _ids(batch: int, seq: int, vocab: int = 5000) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))}


def _pixels(batch: int, size: int = 224) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))}


def gpt2() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """GPT-2, 4 layers x 384, batch 2 x 128 tokens."""
    t = _quiet_transformers()
    cfg = t.GPT2Config(n_layer=4, n_embd=384, n_head=6, n_positions=256, vocab_size=5000, resid_pdrop=0.0,
                       embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    return t.GPT2LMHeadModel(cfg), _ids(2, 128)


def bert() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """BERT, 4 layers x 384, batch 2 x 128 tokens."""
    t = _quiet_transformers()
    cfg = t.BertConfig(num_hidden_layers=4, hidden_size=384, intermediate_size=1536, num_attention_heads=6,
                       vocab_size=5000, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       attn_implementation="eager")
    return t.BertModel(cfg, add_pooling_layer=False), _ids(2, 128)


def llama() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """LLaMA with grouped-query attention (6 query heads, 2 KV heads), 4 layers x 384, batch 2 x 128."""
    t = _quiet_transformers()
    cfg = t.LlamaConfig(num_hidden_layers=4, hidden_size=384, intermediate_size=1024, num_attention_heads=6,
                        num_key_value_heads=2, vocab_size=5000, attn_implementation="eager")
    return t.LlamaForCausalLM(cfg), _ids(2, 128)


def mistral() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """Mistral with a 128-token sliding window, 4 layers x 384, batch 1 x 512 tokens."""
    t = _quiet_transformers()
    cfg = t.MistralConfig(num_hidden_layers=4, hidden_size=384, intermediate_size=1024, num_attention_heads=6,
                          num_key_value_heads=2, vocab_size=5000, sliding_window=128, attn_implementation="sdpa")
    return t.MistralForCausalLM(cfg), _ids(1, 512)


def vit() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """ViT, 4 layers x 384, patch 16 at 224 px (197 tokens), batch 2."""
    t = _quiet_transformers()
    cfg = t.ViTConfig(num_hidden_layers=4, hidden_size=384, intermediate_size=1536, num_attention_heads=6,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return t.ViTModel(cfg, add_pooling_layer=False), _pixels(2)


def resnet18() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """ResNet-18 (basic blocks) at 224 px, batch 1."""
    t = _quiet_transformers()
    cfg = t.ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                         layer_type="basic")
    return t.ResNetModel(cfg), _pixels(1)


def resnet50() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """ResNet-50 (bottleneck blocks) at 224 px, batch 1."""
    t = _quiet_transformers()
    return t.ResNetModel(t.ResNetConfig()), _pixels(1)


def _output(out: Any) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        if hasattr(out, name):
            return getattr(out, name)
    return out


def _model(make: Callable[[], tuple[torch.nn.Module, dict[str, torch.Tensor]]], dtype: torch.dtype = torch.float32,
           train: bool = False) -> Callable[[], CpuWorkload]:
    def build() -> CpuWorkload:
        torch.manual_seed(0)
        model, inputs = make()
        model = copy.deepcopy(model).to(dtype).train(train)
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        params = [p for p in model.parameters() if p.requires_grad]
        tolerance = 3e-2 if dtype == torch.bfloat16 else (2e-3 if train else 1e-3)

        def step(target: Any) -> Tensors:
            if not train:
                with torch.no_grad():
                    return [_output(target(**inputs))]
            for p in params:
                p.grad = None
            out = _output(target(**inputs))
            loss = out.float().square().mean()
            loss.backward()
            return [loss.detach()] + [p.grad for p in params if p.grad is not None]

        return CpuWorkload(model, step, tolerance)
    return build


MODEL_CASES: tuple[CpuCase, ...] = (
    CpuCase("gpt2 4x384 b2 s128", "inference", _model(gpt2)),
    CpuCase("bert 4x384 b2 s128", "inference", _model(bert)),
    CpuCase("llama-gqa 4x384 b2 s128", "inference", _model(llama)),
    CpuCase("mistral-sw128 4x384 b1 s512", "inference", _model(mistral)),
    CpuCase("vit 4x384 b2 224px", "inference", _model(vit)),
    CpuCase("resnet18 b1 224px", "inference", _model(resnet18)),
    CpuCase("resnet50 b1 224px", "inference", _model(resnet50)),
    CpuCase("gpt2 bf16", "bf16", _model(gpt2, torch.bfloat16)),
    CpuCase("llama-gqa bf16", "bf16", _model(llama, torch.bfloat16)),
    CpuCase("resnet18 bf16", "bf16", _model(resnet18, torch.bfloat16)),
    CpuCase("gpt2 train step", "train", _model(gpt2, train=True)),
    CpuCase("llama-gqa train step", "train", _model(llama, train=True)),
    CpuCase("resnet18 train step", "train", _model(resnet18, train=True)),
)

ALL_CASES: tuple[CpuCase, ...] = KERNEL_CASES + MODEL_CASES


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """‖got − want‖ / ‖want‖ in float64 (0 for two empty or all-zero tensors)."""
    g, w = got.detach().double(), want.detach().double()
    denom = w.norm().item()
    diff = (g - w).norm().item()
    return diff / denom if denom else diff
