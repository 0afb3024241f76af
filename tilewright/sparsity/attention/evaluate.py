"""Attention evaluators: run a model on calibration inputs with chosen attention sites block-sparse.

Sites are numbered in graph order (the numbering :mod:`.rewrite` uses); each evaluator records
every site's q, k, v on the first batch, for the per-site calibration:

- :class:`GraphAttentionEvaluator`: a Dynamo graph after the attention rewrite (its
  ``tilewright::flash_attention`` calls are the sites), on the backend's example inputs;
- :class:`ModuleAttentionEvaluator`: an eager module whose ``F.scaled_dot_product_attention``
  calls are the sites (call order), on a list of calibration batches.

Exact sites run the CPU target's fused attention kernel (or the op's reference), sparse ones the
block-sparse CPU kernel with the index their method builds from that call's q and k.
"""
from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .op import block_sparse_attention, build_index

log = logging.getLogger(__name__)

__all__ = ["AttentionCall", "AttentionEvaluator", "GraphAttentionEvaluator", "ModuleAttentionEvaluator",
           "dense_forward", "flash_sites", "sparse_forward"]

Choice = Mapping[int, tuple[str, Mapping[str, Any]]]


@dataclass
class AttentionCall:
    """One site's inputs on the first calibration batch, and why it cannot be sparse (None: it can)."""

    q: Tensor
    k: Tensor
    v: Tensor
    scale: float | None
    causal: bool
    causal_offset: int
    reason: str | None = None


def sparse_forward(call: AttentionCall, method: str, params: Mapping[str, Any]) -> Tensor:
    """The block-sparse attention output of ``call`` under ``method``/``params`` (CPU kernels on CPU)."""
    cpu = call.q.device.type == "cpu"
    index = build_index(method, params, call.q, call.k, call.scale, call.causal, call.causal_offset,
                        backend="cpu" if cpu else "torch")
    try:
        return block_sparse_attention(call.q, call.k, call.v, index, call.scale, call.causal, call.causal_offset,
                                      backend="cpu" if cpu else "auto")[0]
    except Exception as exc:  # noqa: BLE001  (a dtype or head dim the kernels lack: the torch reference)
        log.debug("sparse attention kernel unavailable (%s); reference used for calibration", exc)
        return block_sparse_attention(call.q, call.k, call.v, index, call.scale, call.causal, call.causal_offset,
                                      backend="reference")[0]


class AttentionEvaluator(ABC):
    """Runs calibration with some attention sites block-sparse (``ordinal -> (method, params)``)."""

    sites: list[AttentionCall]
    reference: list[Any]

    @abstractmethod
    def run(self, choice: Choice) -> list[Any]:
        """The model's outputs on every calibration batch with ``choice`` applied."""


def _is_flash(node: fx.Node) -> bool:
    from ...ops import attention  # noqa: F401  (registers the op)

    return node.op == "call_function" and node.target is torch.ops.tilewright.flash_attention.default


def flash_sites(gm: fx.GraphModule) -> list[fx.Node]:
    """The ``tilewright::flash_attention`` calls of a (rewritten) Dynamo graph, in graph order."""
    return [n for n in gm.graph.nodes if _is_flash(n)]


class GraphAttentionEvaluator(AttentionEvaluator):
    """A Dynamo graph after the attention rewrite, run on its example inputs (see module docstring).

    ``reference``: the exact model's outputs (when weight rewrites are already in ``gm``, the
    outputs of the graph before them), else this graph's own outputs with every site exact.
    """

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any], reference: list[Any] | None = None) -> None:
        self.gm, self.inputs = gm, list(example_inputs)
        self.ordinals = {n: i for i, n in enumerate(flash_sites(gm))}
        captured: dict[int, AttentionCall] = {}
        outputs = self._run({}, captured)
        self.sites = [captured[i] for i in range(len(self.ordinals))]
        self.reference = reference if reference is not None else [outputs]

    def _run(self, choice: Choice, captured: dict[int, AttentionCall] | None) -> Any:
        ordinals = self.ordinals

        class Swap(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                if n not in ordinals:
                    return super().run_node(n)
                args, _ = self.fetch_args_kwargs_from_env(n)
                q, k, v, bias, mask, seed, scale, causal, offset, dropout_p = list(args)[:10]
                reason = ("an additive bias" if bias is not None else "a boolean mask" if mask is not None else
                          "dropout" if (seed is not None or float(dropout_p or 0.0) > 0) else None)
                call = AttentionCall(q, k, v, float(scale), bool(causal), int(offset), reason)
                if captured is not None:
                    captured[ordinals[n]] = call
                if ordinals[n] in choice and reason is None:
                    method, params = choice[ordinals[n]]
                    out = sparse_forward(call, method, params)
                    return out, torch.zeros(out.shape[:3], dtype=torch.float32, device=out.device)
                if reason is None and q.device.type == "cpu":
                    with contextlib.suppress(Exception):  # a dtype or head dim it lacks: the op's reference
                        return dense_forward(call)
                return super().run_node(n)

        with torch.no_grad():
            return Swap(self.gm).run(*self.inputs)

    def run(self, choice: Choice) -> list[Any]:
        """The graph's outputs with ``choice``'s sites block-sparse."""
        return [self._run(choice, None)]


def dense_forward(call: AttentionCall) -> tuple[Tensor, Tensor]:
    """Exact attention by the CPU target's fused kernel (the reference op materialises every score)."""
    from ...targets.cpu.attention import cpu_attention_forward

    return cpu_attention_forward(call.q, call.k, call.v, scale=call.scale, causal=call.causal,
                                 causal_offset=call.causal_offset)[:2]


@contextlib.contextmanager
def _sdpa_swapped(hook: Callable[..., Tensor]) -> Iterator[None]:
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = hook
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


class ModuleAttentionEvaluator(AttentionEvaluator):
    """An eager module's ``scaled_dot_product_attention`` calls as sites, on calibration ``batches``.

    ``weights``: ``{qualified layer name: dense approximate weight}`` applied on every run (the
    weight gate's accepted rewrites); ``reference``: the exact outputs (default: computed here).
    """

    def __init__(self, model: nn.Module, batches: Sequence[Any], weights: Mapping[str, Tensor] | None = None,
                 reference: list[Any] | None = None) -> None:
        from ..calibrate import _call

        self.model, self.batches = model, list(batches)
        self.params = {f"{site}.weight": w for site, w in (weights or {}).items()}
        self._call = _call
        captured: dict[int, AttentionCall] = {}
        outputs = self._run({}, captured)
        self.sites = [captured[i] for i in range(len(captured))]
        if reference is None and self.params:  # the exact model: no weight rewrites either
            with torch.no_grad():
                reference = [_call(model, batch) for batch in self.batches]
        self.reference = reference if reference is not None else outputs

    def _run(self, choice: Choice, captured: dict[int, AttentionCall] | None) -> list[Any]:
        original = F.scaled_dot_product_attention
        counter = [0]

        def swapped(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                    enable_gqa: bool = False, **kwargs: Any) -> Tensor:
            ordinal = counter[0]
            counter[0] += 1
            reason = ("a mask" if attn_mask is not None else "dropout" if dropout_p > 0 else
                      "unsupported arguments" if kwargs else None)
            call = AttentionCall(query, key, value, scale, bool(is_causal), 0, reason)
            if captured is not None and ordinal not in captured:
                captured[ordinal] = call
            if ordinal in choice and reason is None:
                method, params = choice[ordinal]
                return sparse_forward(call, method, params)
            return original(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                            scale=scale, enable_gqa=enable_gqa, **kwargs)

        outputs = []
        with torch.no_grad(), _sdpa_swapped(swapped):
            for batch in self.batches:
                counter[0] = 0
                outputs.append(self._call(self.model, batch, self.params))
        return outputs

    def run(self, choice: Choice) -> list[Any]:
        """The module's outputs on every batch with ``choice``'s sites block-sparse."""
        return self._run(choice, None)
