"""Benchmark cases: kernels as plain torch functions, models as ``transformers`` configs.

A *case* knows how to build a :class:`Workload` at one size (``small`` for the CPU
interpreter, realistic for a GPU), dtype and device. A workload carries the thing to compile
(a function or an ``nn.Module``), a ``step`` that runs it once (forward, or forward+backward for
a training step) and returns the tensors to check, and a float64 eager reference of the same
step. Model weights are random (seeded); nothing is downloaded.

Kernel cases list *vendor* variants: functions with the same signature that call a vendor
library directly (cuBLASLt's fused GELU epilogue, SDPA, FlexAttention), timed beside eager.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

Tensors = list[torch.Tensor]


@dataclass
class Workload:
    """One runnable benchmark instance.

    Attributes:
        target: what is handed to ``torch.compile`` (a function or an ``nn.Module``).
        step: runs ``target`` (or its compiled form) once and returns the tensors to check.
        reference: runs the same step in float64 eagerly (the judge of correctness).
        args: positional inputs (kernel cases), kept for ``tilewright.explain``.
    """

    target: Any
    step: Callable[[Any], Tensors]
    reference: Callable[[], Tensors]
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class KernelCase:
    """A kernel benchmark: ``fn(*inputs)`` written with torch ops.

    Attributes:
        name: short stable identifier used in the JSON and tables.
        fn: the function to compile.
        inputs: ``(small, dtype, device, generator) -> args``.
        vendor: vendor-library variants with ``fn``'s signature, by name; a factory returning
            the callable (so compiled variants such as FlexAttention are built lazily).
        note: one line for the report.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    inputs: Callable[[bool, torch.dtype, torch.device, torch.Generator], tuple[Any, ...]]
    vendor: dict[str, Callable[[], Callable[..., torch.Tensor]]] = field(default_factory=dict)
    note: str = ""
    category: str = "kernel"

    def build(self, small: bool, dtype: torch.dtype, device: torch.device, train: bool = False) -> Workload:
        """Build the workload (kernels are inference-only; ``train`` must be False)."""
        if train:
            raise ValueError("kernel cases are forward-only")
        gen = torch.Generator().manual_seed(0)
        args = self.inputs(small, dtype, device, gen)
        fn = self.fn

        def step(target: Any) -> Tensors:
            return [target(*args)]

        def reference() -> Tensors:
            return [fn(*[_to64(a) for a in args])]

        return Workload(target=fn, step=step, reference=reference, args=args)

    def build_vendor(self, name: str, small: bool, dtype: torch.dtype, device: torch.device) -> Workload:
        """Build the workload of vendor variant ``name`` on the same inputs."""
        base = self.build(small, dtype, device)
        vfn = self.vendor[name]()
        return Workload(target=vfn, step=base.step, reference=base.reference, args=base.args)


@dataclass(frozen=True)
class ModelCase:
    """A ``transformers`` model with random weights, at a small and a realistic size.

    Attributes:
        name: short stable identifier.
        make: ``(small) -> (module, inputs factory)``; the factory is ``(device, dtype, gen)
            -> kwargs``. Built in float32 on CPU, then cast and moved.
        output: picks the tensor to check from the model's output.
    """

    name: str
    make: Callable[[bool], tuple[torch.nn.Module, Callable[[torch.device, torch.dtype, torch.Generator], dict[str, Any]]]]
    output: Callable[[Any], torch.Tensor]
    note: str = ""
    category: str = "model"

    def build(self, small: bool, dtype: torch.dtype, device: torch.device, train: bool = False) -> Workload:
        """Build the model workload; ``train`` adds the backward pass of a simple loss."""
        base, make_inputs = _base_model(self, small)
        model = copy.deepcopy(base).to(device=device, dtype=dtype)
        model.train(train)
        inputs = make_inputs(device, dtype, torch.Generator().manual_seed(0))
        output = self.output

        def run(target: Any, params: Sequence[torch.nn.Parameter], kw: dict[str, Any]) -> Tensors:
            if not train:
                with torch.no_grad():
                    return [output(target(**kw))]
            for p in params:
                p.grad = None
            out = output(target(**kw))
            # NOTE: a squared loss gives every output element a different gradient.
            wide = out if out.dtype == torch.float64 else out.float()
            wide.square().mean().backward()
            return [out.detach()] + [p.grad for p in params if p.grad is not None]

        def reference() -> Tensors:
            ref_model = copy.deepcopy(base).to(device=device, dtype=torch.float64)
            ref_model.train(train)
            ref_params = [p for p in ref_model.parameters() if p.requires_grad]
            return run(ref_model, ref_params, {k: _to64(v) for k, v in inputs.items()})

        params = [p for p in model.parameters() if p.requires_grad]
        return Workload(
            target=model,
            step=lambda target: run(target, params, inputs),
            reference=reference,
            args=tuple(inputs.values()),
        )


_BASE_MODELS: dict[tuple[str, bool], tuple[torch.nn.Module, Callable[..., dict[str, Any]]]] = {}


def _base_model(case: ModelCase, small: bool) -> tuple[torch.nn.Module, Callable[..., dict[str, Any]]]:
    """The float32 CPU model of ``case`` with seeded random weights, built once per size.

    NOTE: only the most recent two are kept; realistic models are large.
    """
    key = (case.name, small)
    if key not in _BASE_MODELS:
        while len(_BASE_MODELS) >= 2:
            _BASE_MODELS.pop(next(iter(_BASE_MODELS)))
        torch.manual_seed(0)
        _BASE_MODELS[key] = case.make(small)
    return _BASE_MODELS[key]


def _to64(x: Any) -> Any:
    """Float tensors to float64; anything else unchanged."""
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().to(torch.float64)
    return x


def _randn(gen: torch.Generator, *shape: int, dtype: torch.dtype, device: torch.device, scale: float = 1.0) -> torch.Tensor:
    """Seeded normal tensor made on CPU (same values on every device), then cast and moved."""
    return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Kernel functions (what users write; tilewright must find and fuse the patterns)
# ---------------------------------------------------------------------------------------------

def matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Plain matmul (the cuBLAS baseline is eager itself)."""
    return x @ w


def matmul_bias_gelu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Matmul with a bias + GELU epilogue (an MLP up-projection)."""
    return F.gelu(x @ w + b)


def matmul_bias_residual(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Matmul with bias and residual add (an MLP down-projection)."""
    return x @ w + b + r


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Row softmax."""
    return torch.softmax(x, dim=-1)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dimension."""
    return F.layer_norm(x, (x.shape[-1],), w, b, 1e-5)


def rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """LLaMA-style RMSNorm written with torch ops (float32 statistics)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype) * w


def pointwise_chain(x: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A chain of pointwise ops with a broadcast bias (one kernel when fused)."""
    return torch.tanh(x * 0.5 + b) * torch.sigmoid(y) + F.silu(x) * y


def swiglu(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """LLaMA MLP gate: silu(x @ w1) * (x @ w3)."""
    return F.silu(x @ w1) * (x @ w3)


def sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal scaled-dot-product attention through PyTorch's SDPA op."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def attention_pattern(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention written out in torch ops (the pattern the attention rewrite must find)."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def conv_bn_relu(x: torch.Tensor, w: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                 gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Conv2d 3x3 + inference BatchNorm + ReLU (a ResNet block's start)."""
    y = F.conv2d(x, w, padding=1)
    return F.relu(F.batch_norm(y, mean, var, gamma, beta, training=False, eps=1e-5))


# ---------------------------------------------------------------------------------------------
# Input factories: (small, dtype, device, gen) -> args. Small sizes are odd on purpose.
# ---------------------------------------------------------------------------------------------

def _mm_inputs(with_bias: bool, with_res: bool) -> Callable[..., tuple[Any, ...]]:
    def make(small: bool, dtype: torch.dtype, dev: torch.device, gen: torch.Generator) -> tuple[Any, ...]:
        m, k, n = (33, 40, 24) if small else (8192, 4096, 4096)
        args: list[Any] = [_randn(gen, m, k, dtype=dtype, device=dev),
                           _randn(gen, k, n, dtype=dtype, device=dev, scale=k ** -0.5)]
        if with_bias:
            args.append(_randn(gen, n, dtype=dtype, device=dev))
        if with_res:
            args.append(_randn(gen, m, n, dtype=dtype, device=dev))
        return tuple(args)
    return make


def _rows_inputs(n_weights: int) -> Callable[..., tuple[Any, ...]]:
    def make(small: bool, dtype: torch.dtype, dev: torch.device, gen: torch.Generator) -> tuple[Any, ...]:
        m, n = (37, 129) if small else (16384, 4096)
        x = _randn(gen, m, n, dtype=dtype, device=dev, scale=2.0)
        ws = [_randn(gen, n, dtype=dtype, device=dev) for _ in range(n_weights)]
        return (x, *ws)
    return make


def _pointwise_inputs(small: bool, dtype: torch.dtype, dev: torch.device, gen: torch.Generator) -> tuple[Any, ...]:
    m, n = (37, 129) if small else (8192, 8192)
    return (_randn(gen, m, n, dtype=dtype, device=dev), _randn(gen, m, n, dtype=dtype, device=dev),
            _randn(gen, n, dtype=dtype, device=dev))


def _swiglu_inputs(small: bool, dtype: torch.dtype, dev: torch.device, gen: torch.Generator) -> tuple[Any, ...]:
    m, k, n = (33, 40, 24) if small else (8192, 2048, 8192)
    return (_randn(gen, m, k, dtype=dtype, device=dev),
            _randn(gen, k, n, dtype=dtype, device=dev, scale=k ** -0.5),
            _randn(gen, k, n, dtype=dtype, device=dev, scale=k ** -0.5))


def _attn_inputs(small: bool, dtype: torch.dtype, dev: torch.device, gen: torch.Generator) -> tuple[Any, ...]:
    b, h, s, d = (1, 2, 17, 16) if small else (8, 16, 1024, 64)
    return tuple(_randn(gen, b, h, s, d, dtype=dtype, device=dev) for _ in range(3))


def _conv_inputs(small: bool, dtype: torch.dtype, dev: torch.device, gen: torch.Generator) -> tuple[Any, ...]:
    n, c, hw, co = (2, 4, 9, 8) if small else (32, 128, 56, 128)
    x = _randn(gen, n, c, hw, hw, dtype=dtype, device=dev)
    w = _randn(gen, co, c, 3, 3, dtype=dtype, device=dev, scale=(9 * c) ** -0.5)
    mean = _randn(gen, co, dtype=dtype, device=dev, scale=0.1)
    var = (torch.rand(co, generator=gen) + 0.5).to(device=dev, dtype=dtype)
    return (x, w, mean, var, _randn(gen, co, dtype=dtype, device=dev), _randn(gen, co, dtype=dtype, device=dev))


# ---------------------------------------------------------------------------------------------
# Vendor variants
# ---------------------------------------------------------------------------------------------

def _cublaslt_gelu() -> Callable[..., torch.Tensor]:
    """cuBLASLt matmul with its fused bias+GELU epilogue (tanh GELU, as cuBLASLt offers)."""
    return lambda x, w, b: torch._addmm_activation(b, x, w, use_gelu=True)


def _sdpa(causal: bool) -> Callable[[], Callable[..., torch.Tensor]]:
    return lambda: (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal))


def _flex(causal: bool) -> Callable[[], Callable[..., torch.Tensor]]:
    """FlexAttention, compiled as its docs require; block mask built on first call per shape."""
    def factory() -> Callable[..., torch.Tensor]:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        compiled = torch.compile(flex_attention)
        masks: dict[tuple[int, ...], Any] = {}

        def causal_mask(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return q_idx >= kv_idx

        def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            mask = None
            if causal:
                key = tuple(q.shape)
                if key not in masks:
                    masks[key] = create_block_mask(causal_mask, None, None, q.shape[-2], k.shape[-2],
                                                   device=q.device)
                mask = masks[key]
            return compiled(q, k, v, block_mask=mask)
        return run
    return factory


KERNEL_CASES: tuple[KernelCase, ...] = (
    KernelCase("matmul_bias_gelu", matmul_bias_gelu, _mm_inputs(True, False),
               vendor={"cublaslt_gelu": _cublaslt_gelu}, note="8192x4096 @ 4096x4096, bias, GELU"),
    KernelCase("softmax", softmax, _rows_inputs(0), note="16384x4096 rows"),
    KernelCase("layer_norm", layer_norm, _rows_inputs(2), note="16384x4096"),
    KernelCase("rms_norm", rms_norm, _rows_inputs(1), note="16384x4096, fp32 statistics"),
    KernelCase("pointwise_chain", pointwise_chain, _pointwise_inputs, note="8192x8192, 6 ops"),
    KernelCase("sdpa_causal", sdpa_causal, _attn_inputs,
               vendor={"flex_attention": _flex(True)}, note="B8 H16 S1024 D64 causal (eager = SDPA)"),
    KernelCase("attention_pattern", attention_pattern, _attn_inputs,
               vendor={"sdpa": _sdpa(False), "flex_attention": _flex(False)},
               note="softmax(QK^T/sqrt(d))V in torch ops, B8 H16 S1024 D64"),
    KernelCase("matmul", matmul, _mm_inputs(False, False), note="8192x4096 @ 4096x4096 (eager = cuBLAS)"),
    KernelCase("matmul_bias_residual", matmul_bias_residual, _mm_inputs(True, True),
               note="8192x4096 @ 4096x4096 + bias + residual"),
    KernelCase("swiglu", swiglu, _swiglu_inputs, note="silu(x@w1)*(x@w3), 8192x2048 -> 8192"),
    KernelCase("conv_bn_relu", conv_bn_relu, _conv_inputs, note="N32 C128 56x56 3x3, BN eval, ReLU"),
)
"""Kernel cases in priority order (earlier ones are kept when the budget is short)."""


# ---------------------------------------------------------------------------------------------
# Models (transformers, random weights, dropout off)
# ---------------------------------------------------------------------------------------------

def _ids(batch: int, seq: int, vocab: int) -> Callable[[torch.device, torch.dtype, torch.Generator], dict[str, Any]]:
    def make(dev: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict[str, Any]:
        return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=gen).to(dev)}
    return make


def _pixels(batch: int, size: int, channels: int = 3) -> Callable[[torch.device, torch.dtype, torch.Generator], dict[str, Any]]:
    def make(dev: torch.device, dtype: torch.dtype, gen: torch.Generator) -> dict[str, Any]:
        return {"pixel_values": _randn(gen, batch, channels, size, size, dtype=dtype, device=dev)}
    return make


def _gpt2(small: bool) -> tuple[torch.nn.Module, Callable[..., dict[str, Any]]]:
    from transformers import GPT2Config, GPT2LMHeadModel

    kw: dict[str, Any] = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if small:
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=64, vocab_size=128,
                         bos_token_id=0, eos_token_id=0, **kw)
        return GPT2LMHeadModel(cfg), _ids(2, 16, 128)
    return GPT2LMHeadModel(GPT2Config(**kw)), _ids(8, 512, 50257)


def _bert(small: bool) -> tuple[torch.nn.Module, Callable[..., dict[str, Any]]]:
    from transformers import BertConfig, BertModel

    kw: dict[str, Any] = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if small:
        cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, vocab_size=128, max_position_embeddings=64, **kw)
        return BertModel(cfg, add_pooling_layer=False), _ids(2, 16, 128)
    return BertModel(BertConfig(**kw), add_pooling_layer=False), _ids(8, 512, 30522)


def _llama(small: bool) -> tuple[torch.nn.Module, Callable[..., dict[str, Any]]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    if small:
        cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
        return LlamaForCausalLM(cfg), _ids(2, 16, 128)
    # NOTE: LLaMA-3.2-1B layer shapes, 2 layers, a 32k vocabulary so layers dominate the time.
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=2, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048)
    return LlamaForCausalLM(cfg), _ids(4, 512, 32000)


def _vit(small: bool) -> tuple[torch.nn.Module, Callable[..., dict[str, Any]]]:
    from transformers import ViTConfig, ViTModel

    kw: dict[str, Any] = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if small:
        cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=128, **kw)
        return ViTModel(cfg, add_pooling_layer=False), _pixels(2, 32)
    return ViTModel(ViTConfig(**kw), add_pooling_layer=False), _pixels(16, 224)


def _resnet(small: bool) -> tuple[torch.nn.Module, Callable[..., dict[str, Any]]]:
    from transformers import ResNetConfig, ResNetModel

    if small:
        cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        return ResNetModel(cfg), _pixels(2, 32)
    return ResNetModel(ResNetConfig()), _pixels(16, 224)


def _logits(out: Any) -> torch.Tensor:
    return out.logits


def _hidden(out: Any) -> torch.Tensor:
    return out.last_hidden_state


MODEL_CASES: tuple[ModelCase, ...] = (
    ModelCase("gpt2", _gpt2, _logits, note="GPT-2 small, batch 8 x 512 tokens"),
    ModelCase("llama", _llama, _logits, note="LLaMA-3.2-1B layer shapes x2, GQA, batch 4 x 512"),
    ModelCase("bert", _bert, _hidden, note="BERT base, batch 8 x 512 tokens"),
    ModelCase("vit", _vit, _hidden, note="ViT-B/16, batch 16 at 224x224"),
    ModelCase("resnet", _resnet, _hidden, note="ResNet-50, batch 16 at 224x224"),
)
"""Model cases in priority order."""

ALL_CASES: dict[str, KernelCase | ModelCase] = {c.name: c for c in (*KERNEL_CASES, *MODEL_CASES)}
