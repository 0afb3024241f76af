"""Kernels built from plain problem descriptions, for cost-model data collection and tuning.

``tilewright collect`` asks for kernels of random shapes of every kind (``*_from_spec``) and for
the kernels of the model suite (:func:`model_suite_kernels`). Pointwise, reduction and matmul
kernels are produced by compiling a small torch function through the real pipeline, so the
collected kernels are exactly the ones the compiler generates (fused epilogues included).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu, "silu": F.silu, "relu": torch.relu, "tanh": torch.tanh,
}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _only_kernel(fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...], kind: str) -> Any:
    from ..frontend.api import tunable_kernels

    kernels = [k for k in tunable_kernels(fn, inputs) if k.problem.kind == kind]
    if not kernels:
        raise ValueError(f"no {kind} kernel was generated")
    return max(kernels, key=lambda k: k.problem.bytes)


def pointwise_from_spec(spec: Any) -> Any:
    """A fused pointwise kernel over ``dims["numel"]`` elements (``meta``: n_inputs, op)."""
    numel = int(spec.dims["numel"])
    n_inputs = int(spec.meta.get("n_inputs", 2))
    op = str(spec.meta.get("op", "add"))
    xs = tuple(torch.randn(numel, device=_device(), dtype=_dtype(spec.dtype)) for _ in range(n_inputs))

    def fn(*args: torch.Tensor) -> torch.Tensor:
        acc = args[0]
        for a in args[1:]:
            acc = acc * a if op == "mul" else acc + a
        return _ACTIVATIONS[op](acc) if op in _ACTIVATIONS else acc * 1.5

    return _only_kernel(fn, xs, "pointwise")


def reduction_from_spec(spec: Any) -> Any:
    """A reduction kernel over ``rows`` x ``rnumel`` (``meta["op"]``: sum, max, softmax, layernorm)."""
    rows, rnumel = int(spec.dims["rows"]), int(spec.dims["rnumel"])
    op = str(spec.meta.get("op", "sum"))
    x = torch.randn(rows, rnumel, device=_device(), dtype=_dtype(spec.dtype))
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "sum": lambda t: t.sum(-1), "max": lambda t: t.amax(-1), "softmax": lambda t: torch.softmax(t, -1),
        "layernorm": lambda t: F.layer_norm(t, (t.shape[-1],)), "column_sum": lambda t: t.sum(0),
    }
    return _only_kernel(fns[op], (x,), "reduction")


def matmul_from_spec(spec: Any) -> Any:
    """A matmul kernel ``[B,] M x K @ K x N`` with ``meta["epilogue_ops"]`` fused."""
    d = spec.dims
    b, m, n, k = int(d.get("B", 1)), int(d["M"]), int(d["N"]), int(d["K"])
    dtype, device = _dtype(spec.dtype), _device()
    ops = list(spec.meta.get("epilogue_ops", []))
    a = torch.randn(*(([b] if b > 1 else []) + [m, k]), device=device, dtype=dtype)
    w = torch.randn(*(([b] if b > 1 else []) + [k, n]), device=device, dtype=dtype)
    bias = torch.randn(n, device=device, dtype=dtype)
    res = torch.randn(*(([b] if b > 1 else []) + [m, n]), device=device, dtype=dtype)

    def fn(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
        out = a @ w
        for op in ops:
            if op == "bias":
                out = out + bias
            elif op == "add":
                out = out + res
            elif op == "mul":
                out = out * 0.5
            elif op in _ACTIVATIONS:
                out = _ACTIVATIONS[op](out)
        return out

    return _only_kernel(fn, (a, w, bias, res), "matmul")


def attention_from_spec(spec: Any) -> Any:
    """The flash-attention forward kernel for ``B, H, M, N, D`` (``meta["causal"]``)."""
    from ..targets.triton.attention.launch import AttentionKernel

    d = spec.dims
    return AttentionKernel("fwd", int(d["B"]), int(d["H"]), int(d.get("HKV", d["H"])), int(d["M"]), int(d["N"]),
                           int(d["D"]), spec.dtype, bool(spec.meta.get("causal", False)))


def model_suite_kernels() -> list[tuple[str, Any]]:
    """``(source, kernel)`` for every generated kernel of the test model zoo (GPT-2, BERT, LLaMA, ViT,
    ResNet at small sizes), inference and training."""
    import transformers

    transformers.logging.set_verbosity_error()
    from ..frontend.api import tunable_kernels

    device = _device()
    models: list[tuple[str, torch.nn.Module, tuple[torch.Tensor, ...]]] = []
    ids = torch.randint(0, 1000, (4, 128), device=device)
    models.append(("gpt2", transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=1, n_embd=256, n_head=4, vocab_size=1000, n_positions=256, bos_token_id=0, eos_token_id=0)), (ids,)))
    models.append(("llama", transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=1, hidden_size=256, intermediate_size=688, num_attention_heads=8, num_key_value_heads=2,
        vocab_size=1000, max_position_embeddings=256)), (ids,)))
    models.append(("bert", transformers.BertModel(transformers.BertConfig(
        num_hidden_layers=1, hidden_size=256, intermediate_size=1024, num_attention_heads=4, vocab_size=1000,
        max_position_embeddings=256)), (ids,)))
    models.append(("resnet", transformers.ResNetModel(transformers.ResNetConfig(
        embedding_size=32, hidden_sizes=[32, 64], depths=[1, 1], num_channels=3)),
        (torch.randn(8, 3, 64, 64, device=device),)))
    out: list[tuple[str, Any]] = []
    for name, model, inputs in models:
        model = model.to(device)
        for mode in ("eval", "train"):
            getattr(model, mode)()
            try:
                out.extend((f"model:{name}:{mode}", k) for k in tunable_kernels(model, inputs))
            except Exception as exc:  # a model that fails to compile must not stop collection
                log.warning("model suite: %s (%s) skipped: %s", name, mode, exc)
    return out


def conv_from_spec(spec: Any) -> Any:
    """A :class:`tilewright.targets.triton.conv.forward.ConvKernel` for a random conv spec."""
    from ..targets.triton.conv.forward import ConvKernel, ConvProblem

    d = spec.dims
    conv = ConvProblem.from_shapes((d["N"], d["C"], d["H"], d["W"]),
                                   (d["K"], d["C"] // d["groups"], d["R"], d["S"]),
                                   bool(spec.meta.get("bias", False)), d["stride"], d["padding"],
                                   d["dilation"], d["groups"], spec.dtype,
                                   bool(spec.meta.get("channels_last", False)))
    return ConvKernel(conv)


#: kind -> the function building a kernel of that kind from a
#: :class:`~tilewright.costmodel.collect.ProblemSpec` (what ``tilewright collect`` measures)
SPEC_BUILDERS: dict[str, Callable[[Any], Any]] = {
    "pointwise": pointwise_from_spec, "reduction": reduction_from_spec, "matmul": matmul_from_spec,
    "attention": attention_from_spec, "conv": conv_from_spec,
}
