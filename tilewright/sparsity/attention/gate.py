"""The attention half of the accuracy gate: which attention sites go block-sparse, and how far.

The weight gate (:mod:`tilewright.sparsity.gate`) works on layers; this one on attention sites
(ordinals in graph order, the numbering :mod:`.rewrite` uses). An :class:`AttentionEvaluator`
runs the model on calibration inputs with any sites swapped for block-sparse attention and
records each site's q, k, v on the first batch:

- :class:`GraphAttentionEvaluator`: a Dynamo graph after the attention rewrite (its
  ``tilewright::flash_attention`` calls are the sites), on the backend's example inputs;
- :class:`ModuleAttentionEvaluator`: an eager module whose ``F.scaled_dot_product_attention``
  calls are the sites (call order), on a list of calibration batches.

:func:`run_attention_gate`, per site: :func:`~.calibrate.calibrate_attention` gives each
candidate setting's density and attention-output error on the site's own q, k, v; candidates
whose expected speedup reaches ``min_speedup`` are then measured at the model level (that site
sparse, the others exact; weight rewrites already in force stay in), and the site takes the
fastest whose error is within the budget, or stays exact. Then all chosen sites are applied
together and, while the model error exceeds the budget, the site with the largest error backs
off to its next less aggressive acceptable setting (or exact), as the weight gate does.
"""
from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..calibrate import Metric, metric_fn
from ..plan import PlanEntry, attention_site
from .calibrate import GRIDS, calibrate_attention
from .op import METHODS, block_sparse_attention, build_index, method_params

log = logging.getLogger(__name__)

__all__ = ["AttentionOptions", "GraphAttentionEvaluator", "ModuleAttentionEvaluator", "expected_attention_speedup",
           "parse_attention", "run_attention_gate"]

#: methods the gate tries when the request says only ``"attention": True``
DEFAULT_METHODS = ("sinks_window", "xattention", "minference")
_KEYS = {"methods", "block", "candidates", "min_speedup", "measure"}
Choice = Mapping[int, tuple[str, Mapping[str, Any]]]


@dataclass
class AttentionOptions:
    """What the attention gate may try (``options["sparsity"]["attention"]``)."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    #: block size for every candidate (None: each method's default, 64)
    block: int | None = None
    #: method -> candidate params (default: :data:`~.calibrate.GRIDS`)
    candidates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    min_speedup: float = 1.1
    #: time each chosen site's sparse kernel (estimation included) against the dense one (CPU)
    measure: bool = False


def parse_attention(value: Any, measure: bool = False) -> AttentionOptions | None:
    """``options["sparsity"]["attention"]``: ``True``, a list of methods, or a dict of
    :class:`AttentionOptions` fields; ``None``/``False``: no attention calibration. ValueError says what is wrong."""
    if value is None or value is False:
        return None
    if value is True:
        return AttentionOptions(measure=measure)
    if isinstance(value, (list, tuple)):
        value = {"methods": list(value)}
    if not isinstance(value, dict):
        raise ValueError(f"options['sparsity']['attention'] must be True, a list of methods {METHODS} or a dict "
                         f"with keys {sorted(_KEYS)}, got {type(value).__name__}")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise ValueError(f"unknown options['sparsity']['attention'] keys {unknown}; known: {sorted(_KEYS)}")
    methods = tuple(value.get("methods", DEFAULT_METHODS))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ValueError(f"attention methods {list(methods)}: choose one or more of {METHODS}")
    candidates = {str(m): [dict(c) for c in cs] for m, cs in dict(value.get("candidates") or {}).items()}
    for method, cands in candidates.items():
        for cand in cands:
            method_params(method, dict(cand, **({"block": value["block"]} if value.get("block") else {})))
    return AttentionOptions(methods, int(value["block"]) if value.get("block") else None, candidates,
                            float(value.get("min_speedup", 1.1)), bool(value.get("measure", measure)))


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
                args, kwargs = self.fetch_args_kwargs_from_env(n)
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
                        return _dense_cpu(call)
                return super().run_node(n)

        with torch.no_grad():
            return Swap(self.gm).run(*self.inputs)

    def run(self, choice: Choice) -> list[Any]:
        """The graph's outputs with ``choice``'s sites block-sparse."""
        return [self._run(choice, None)]


def _dense_cpu(call: AttentionCall) -> tuple[Tensor, Tensor]:
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


def expected_attention_speedup(method: str, params: Mapping[str, Any], density: float, queries: int) -> float:
    """Dense over sparse attention time, modelled: the sparse kernel runs at the dense kernel's
    per-block speed (measured, docs/sparsity_attention.md), plus the estimation's share of dense work:
    XAttention's scoring does 1/stride of the dense products over all blocks, MInference's
    ``last_q`` queries against every key ~ ``2 * last_q / queries`` of a causal pass; static patterns none."""
    if method == "xattention":
        extra = 2.0 / float(params.get("stride", 8))
    elif method == "minference":
        extra = 2.0 * float(params.get("last_q", 64)) / max(queries, 1)
    else:
        extra = 0.0
    return 1.0 / max(density + extra, 1e-6)


@dataclass
class _Cand:
    method: str
    params: dict[str, Any]
    density: float
    local_error: float
    expected: float
    error: float = float("nan")

    def label(self) -> str:
        shown = {k: v for k, v in self.params.items() if k != "block"}
        return f"{self.method} {shown} d={self.density:.3g}"


def _candidates(call: AttentionCall, options: AttentionOptions) -> list[_Cand]:
    """Every setting of every method on the site's q, k, v: density, attention-output error, expected speedup."""
    out = []
    for method in options.methods:
        grid = options.candidates.get(method) or GRIDS[method]
        for params, density, err in calibrate_attention(call.q, call.k, call.v, method, grid, call.scale,
                                                        call.causal, call.causal_offset, options.block):
            out.append(_Cand(method, params, density, err,
                             expected_attention_speedup(method, params, density, int(call.q.shape[2]))))
    return sorted(out, key=lambda c: -c.expected)


def measure_attention_speedup(call: AttentionCall, method: str, params: Mapping[str, Any], repeat: int = 3
                              ) -> float | None:
    """Dense fused CPU attention time over the sparse kernel's (index estimation included), median of ``repeat``."""
    if call.q.device.type != "cpu":
        return None
    from ..speed import median_time

    dense = median_time(lambda: _dense_cpu(call), repeat)
    sparse = median_time(lambda: sparse_forward(call, method, params), repeat)
    return dense / sparse if sparse > 0 else None


def run_attention_gate(evaluator: AttentionEvaluator, options: AttentionOptions, budget: float,
                       metric: str | Metric = "rel_l2") -> tuple[list[PlanEntry], float, dict[str, Any]]:
    """Gate every site of ``evaluator`` (module docstring): the plan entries (one per site, exact
    ones with their reason), the model error with every chosen site applied, and meta."""
    _, fn = metric_fn(metric)
    started = time.perf_counter()

    def error(choice: Choice) -> float:
        return float(fn(evaluator.reference, evaluator.run(choice)))

    entries: list[PlanEntry] = []
    chains: dict[int, list[_Cand]] = {}
    for i, call in enumerate(evaluator.sites):
        entry = PlanEntry(attention_site(i), "attention", "exact", {}, 0.0, 1.0, None)
        entries.append(entry)
        if call.reason is not None:
            entry.note = f"stays exact: {call.reason}"
            continue
        cands = [c for c in _candidates(call, options) if c.expected >= options.min_speedup]
        if not cands:
            entry.note = f"no setting expected to reach {options.min_speedup:g}x"
            continue
        chain, rejected = [], None
        for cand in cands:  # fastest first
            cand.error = error({i: (cand.method, cand.params)})
            if cand.error > budget:
                rejected = cand if rejected is None or cand.error < rejected.error else rejected
            elif not chain or cand.error < chain[-1].error:
                chain.append(cand)
        log.info("attention gate site %d: %s", i, ", ".join(f"{c.label()} err={c.error:.3g}" for c in cands))
        chains[i] = chain
        if not chain and rejected is not None:
            entry.error = rejected.error
            entry.note = f"gate: best setting {rejected.label()} has error {rejected.error:.3g} > budget {budget:g}"
    pick = {i: 0 for i, chain in chains.items() if chain}
    model_error, backoffs = _back_off(pick, chains, entries, budget, error)
    for i, j in pick.items():
        cand, entry = chains[i][j], entries[i]
        entry.method, entry.error, entry.expected_speedup = cand.method, cand.error, round(cand.expected, 3)
        entry.params = dict(cand.params, density=round(cand.density, 4))
        entry.note = f"attention output error {cand.local_error:.3g} on calibration"
        if options.measure:
            entry.measured_speedup = measure_attention_speedup(evaluator.sites[i], cand.method, cand.params)
    meta = {"attention_calibration_s": round(time.perf_counter() - started, 3), "attention_backoffs": backoffs,
            "attention_methods": list(options.methods)}
    return entries, model_error, meta


def _back_off(pick: dict[int, int], chains: dict[int, list[_Cand]], entries: list[PlanEntry], budget: float,
              error: Callable[[Choice], float]) -> tuple[float, int]:
    """Global step: while every picked site together exceeds the budget, the worst site backs off."""

    def choice() -> dict[int, tuple[str, dict[str, Any]]]:
        return {i: (chains[i][j].method, chains[i][j].params) for i, j in pick.items()}

    model_error = error(choice()) if pick else 0.0
    backoffs = 0
    while model_error > budget and pick:
        worst = max(pick, key=lambda i: chains[i][pick[i]].error)
        backoffs += 1
        if pick[worst] + 1 < len(chains[worst]):
            pick[worst] += 1
        else:
            del pick[worst]
            entries[worst].note = "gate: reverted to exact (the whole model exceeded the budget)"
        model_error = error(choice()) if pick else 0.0
    return model_error, backoffs
