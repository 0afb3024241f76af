"""How a plan reaches the compiled graph: the backend's ``options={"sparsity": {...}}``.

``torch.compile(m, backend="tilewright", options={"sparsity": {...}})`` with either

- ``{"plan": path | SparsityPlan | dict}``: apply a saved plan (no calibration), or
- ``{"budget": 0.01, "metric": "rel_l2", "methods": [...], "save_plan": path}``: calibrate on the
  first call's inputs (the Dynamo graph's example inputs) and apply the result; ``save_plan``
  writes it so later runs can pass ``plan`` instead.

The rewrite runs on the Dynamo graph, before AOTAutograd, where parameters are placeholders
whose sources name their module (``L['self']._modules['fc1']._parameters['weight']`` is site
``fc1``, the same qualified name ``model.named_modules()`` gives). For every applied entry the
call on that parameter is replaced at compile time:

- ``linear(x, W, b)`` -> ``tilewright::bsr_linear`` / ``tilewright::nm_linear`` over the compressed
  weight, or ``linear(linear(x, V), U, b)`` for low rank (two GEMMs; the second carries the bias and
  whatever epilogue fusion attaches);
- ``conv2d(x, W, b, ...)`` (groups 1) -> ``tilewright::bsr_conv2d``.

The compressed tensors are computed from the parameter's value at compile time and kept in a
store of :mod:`.ops`; the graph reaches them through ``tilewright::packed_weight(weight, handle)``
(so it holds no real-tensor constants: the attention rewrite's fake-tensor re-trace and
AOTAutograd take it as is), and they are released when the graph module is. The user's model
and its parameters are never modified; the graph still takes the dense parameter as an input,
so Dynamo's guards are those of the exact graph. Rewrites apply to graphs compiled with grad mode off (inference): a graph
compiled for training is left exact, with a note in explain.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import fx

from .calibrate import GraphEvaluator, graph_sites
from .candidates import DEFAULT_BLOCK, DEFAULT_DENSITIES, compress
from .gate import GateOptions, run_gate
from .plan import PlanEntry, PlanError, PlanMismatchError, SparsityPlan

log = logging.getLogger(__name__)

__all__ = ["SparsityRequest", "SparsityResult", "apply_plan_to_graph", "parse_request", "sparsify_graph"]

_KEYS = {"plan", "budget", "metric", "methods", "densities", "block", "min_speedup", "save_plan", "measure",
         "attention"}


@dataclass
class SparsityRequest:
    """The parsed ``options["sparsity"]``."""

    plan: SparsityPlan | None = None
    gate: GateOptions = field(default_factory=GateOptions)
    save_plan: str | None = None
    #: the raw ``"attention"`` value (``False`` drops a plan's attention entries)
    attention: Any = None
    #: budget mode: what the attention gate may try (None: attention is not calibrated)
    attention_options: Any = None
    raw: dict[str, Any] = field(default_factory=dict)


def parse_request(value: Any) -> SparsityRequest:
    """Validate ``options["sparsity"]`` (a dict, a plan, or a plan path); raise ValueError saying what is wrong."""
    if isinstance(value, (str, Path, SparsityPlan)):
        value = {"plan": value}
    if not isinstance(value, dict):
        raise TypeError(f"options['sparsity'] must be a dict such as {{'budget': 0.01}} or {{'plan': 'plan.json'}}, "
                         f"got {type(value).__name__}")
    unknown = sorted(set(value) - _KEYS)
    if unknown:
        raise ValueError(f"unknown options['sparsity'] keys {unknown}; known: {sorted(_KEYS)}")
    req = SparsityRequest(raw=dict(value), save_plan=value.get("save_plan"), attention=value.get("attention"))
    plan = value.get("plan")
    if plan is not None:
        if isinstance(plan, SparsityPlan):
            req.plan = plan
        elif isinstance(plan, dict):
            req.plan = SparsityPlan.from_dict(plan)
        else:
            req.plan = SparsityPlan.load(plan)
    elif "budget" not in value:
        raise ValueError("options['sparsity'] needs 'plan' (a saved plan) or 'budget' (calibrate on the first call)")
    gate = GateOptions(
        budget=float(value.get("budget", req.plan.budget if req.plan else 0.01)),
        metric=value.get("metric", "rel_l2"),
        methods=tuple(value.get("methods", ("block_sparse", "low_rank"))),
        densities=tuple(value.get("densities", DEFAULT_DENSITIES)),
        block=tuple(value.get("block", DEFAULT_BLOCK)),  # type: ignore[arg-type]
        min_speedup=float(value.get("min_speedup", 1.1)),
        measure=bool(value.get("measure", False)),
    )
    gate.validate()
    req.gate = gate
    if req.plan is None:
        from .attention.gate import parse_attention

        req.attention_options = parse_attention(value.get("attention"), gate.measure)
    return req


def _check_shapes(plan: SparsityPlan, sites: dict[str, tuple[fx.Node, int, str]], inputs: list[Any]) -> None:
    """Every layer of the graph that the plan's fingerprint knows must have the same kind and weight shape."""
    layers = plan.fingerprint.get("layers", {})
    problems = []
    for site, (_, idx, kind) in sites.items():
        want = layers.get(site)
        shape = list(inputs[idx].shape)
        if want is not None and (want.get("kind") != kind or list(want.get("shape", [])) != shape):
            problems.append(f"{site}: plan has {want.get('kind')} {want.get('shape')}, model has {kind} {shape}")
    if problems:
        raise PlanMismatchError(f"this sparsity plan was made for a different model ({'; '.join(problems[:8])}); "
                                "recalibrate with `tilewright sparsify` for this model")


def apply_plan_to_graph(gm: fx.GraphModule, example_inputs: list[Any], plan: SparsityPlan
                        ) -> tuple[fx.GraphModule, list[dict[str, Any]]]:
    """Rewrite the plan's applied linear/conv entries in a Dynamo graph; returns the graph and what was done.

    Raises :class:`PlanMismatchError` when a layer the graph has and the plan knows differs in kind or shape.
    """
    from . import ops  # noqa: F401  (registers the custom ops)

    sites = graph_sites(gm)
    _check_shapes(plan, sites, example_inputs)
    done: list[dict[str, Any]] = []
    for i, entry in enumerate(plan.applied("linear", "conv")):
        if entry.site not in sites:
            continue
        node, idx, _ = sites[entry.site]
        weight = example_inputs[idx].detach()
        try:
            _rewrite(gm, node, weight, entry, f"_tw_sparse{i}")
        except (ValueError, RuntimeError, PlanError) as exc:
            log.warning("sparsity: %s kept exact (%s: %s)", entry.site, type(exc).__name__, exc)
            done.append(_describe(entry, applied=False, why=str(exc)))
            continue
        done.append(_describe(entry))
    if done:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return gm, done


def _describe(entry: PlanEntry, applied: bool = True, why: str = "") -> dict[str, Any]:
    params = {k: v for k, v in entry.params.items() if k not in ("mask", "mask_shape")}
    d = {"site": entry.site, "kind": entry.kind, "method": entry.method if applied else "exact", "params": params,
         "error": entry.error, "expected_speedup": entry.expected_speedup,
         "measured_speedup": entry.measured_speedup}
    if why:
        d["note"] = why
    return d


def _buffer(gm: fx.GraphModule, weight_node: fx.Node, tensor: torch.Tensor, before: fx.Node) -> fx.Node:
    """A node yielding ``tensor`` (kept in the op store; :class:`SparsityResult` releases it)."""
    from .ops import store_tensor

    handle = store_tensor(tensor)
    gm.__dict__.setdefault("_tw_sparse_handles", []).append(handle)
    with gm.graph.inserting_before(before):
        return gm.graph.call_function(torch.ops.tilewright.packed_weight.default, (weight_node, handle))


def _rewrite(gm: fx.GraphModule, node: fx.Node, weight: torch.Tensor, entry: PlanEntry, prefix: str) -> None:
    dev = weight.device
    packed = compress(weight, entry.method, entry.params)
    x = node.args[0] if node.args else node.kwargs["input"]
    wnode = node.args[1] if len(node.args) > 1 else node.kwargs["weight"]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    graph = gm.graph
    if entry.kind == "linear":
        if entry.method == "low_rank":
            v = _buffer(gm, wnode, packed["v"].to(dev), node)
            u = _buffer(gm, wnode, packed["u"].to(dev), node)
            with graph.inserting_before(node):
                h = graph.call_function(torch.nn.functional.linear, (x, v))
                new = graph.call_function(torch.nn.functional.linear, (h, u, bias))
        elif entry.method == "block_sparse":
            vals = _buffer(gm, wnode, packed["values"].to(dev), node)
            cols = _buffer(gm, wnode, packed["col_idx"].to(dev), node)
            rows = _buffer(gm, wnode, packed["row_ptr"].to(dev), node)
            bn, bk = packed["block"]
            with graph.inserting_before(node):
                new = graph.call_function(torch.ops.tilewright.bsr_linear.default,
                                          (x, vals, cols, rows, bias, int(weight.shape[0]), int(bn), int(bk)))
        elif entry.method == "2:4":
            vals = _buffer(gm, wnode, packed["values"].to(dev), node)
            meta = _buffer(gm, wnode, packed["meta"].to(dev), node)
            with graph.inserting_before(node):
                new = graph.call_function(torch.ops.tilewright.nm_linear.default,
                                          (x, vals, meta, bias, int(weight.shape[0])))
        else:
            raise ValueError(f"no linear rewrite for method {entry.method!r}")
    else:
        from .calibrate import _conv_args

        if entry.method != "block_sparse":
            raise ValueError(f"convolutions take block_sparse only, not {entry.method!r}")
        conv = _conv_args(node)
        if conv is None:
            raise ValueError("convolution with groups or string padding")
        vals = _buffer(gm, wnode, packed["values"].to(dev), node)
        cols = _buffer(gm, wnode, packed["col_idx"].to(dev), node)
        rows = _buffer(gm, wnode, packed["row_ptr"].to(dev), node)
        bn, bk = packed["block"]
        with graph.inserting_before(node):
            new = graph.call_function(torch.ops.tilewright.bsr_conv2d.default,
                                      (x, vals, cols, rows, bias, int(weight.shape[0]), int(bn), int(bk),
                                       [int(weight.shape[2]), int(weight.shape[3])], conv["stride"], conv["padding"],
                                       conv["dilation"]))
    new.meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace", "source_fn_stack")})
    if "example_value" in node.meta:
        new.meta["example_value"] = node.meta["example_value"]
    node.replace_all_uses_with(new)
    graph.erase_node(node)


@dataclass
class SparsityResult:
    """What :func:`sparsify_graph` did to one Dynamo graph: the plan in force (its attention entries are
    for the attention rewrite of the IR graph), the weight rewrites done and notes (both for explain)."""

    plan: SparsityPlan | None = None
    rewrites: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: store handles of the compressed weights, released when this result is collected (the
    #: compiled graphs hold it: the Dynamo graph module itself is dropped after compilation)
    handles: list[int] = field(default_factory=list)
    #: the request (the attention hook reads its attention options, budget and save_plan)
    request: SparsityRequest | None = None
    #: budget mode: the exact graph's outputs on the first call's inputs (the attention gate's reference)
    reference: list[Any] | None = field(default=None, repr=False)
    #: whether the plan was calibrated here (budget mode) rather than given
    calibrated: bool = False

    def __post_init__(self) -> None:
        from .ops import release_tensors

        weakref.finalize(self, release_tensors, self.handles)

    def attention_entries(self) -> list[PlanEntry]:
        """The plan's applied attention entries (empty without a plan)."""
        return self.plan.applied("attention") if self.plan is not None else []

    def attention_passes(self, report: Any) -> list[tuple[str, Any]] | None:
        """The IR pass rewriting the plan's attention sites, reporting each to ``report`` (None: none)."""
        from .attention.wiring import attention_passes

        return attention_passes(self, report)

    def prepare_attention(self, gm: fx.GraphModule, example_inputs: list[Any]) -> None:
        """On the Dynamo graph after the attention rewrite: check the plan's attention sites, or
        calibrate them (budget mode with ``"attention"``) and save the plan when asked."""
        from .attention.wiring import prepare_attention

        prepare_attention(self, gm, example_inputs)


def sparsify_graph(gm: fx.GraphModule, example_inputs: list[Any], value: Any
                   ) -> tuple[fx.GraphModule, SparsityResult]:
    """The backend's entry point: apply ``options["sparsity"]`` to a Dynamo graph.

    Raises :class:`ValueError` / :class:`PlanError` for bad options or a plan that does not fit the
    model (the user's error, with what to do); any other failure of the optimisation is logged,
    noted, and leaves the graph exact.
    """
    req = parse_request(value)
    result = SparsityResult(plan=req.plan, request=req)
    if torch.is_grad_enabled():
        result.notes.append("sparsity: not applied (grad mode is on; approximate rewrites are for inference: "
                            "call the model under torch.no_grad() or torch.inference_mode())")
        result.plan = None
        return gm, result
    try:
        if result.plan is None:
            evaluator = GraphEvaluator(gm, example_inputs)
            fingerprint = {"layers": {s: {"kind": layer.kind, "shape": list(layer.weight.shape)}
                                      for s, layer in evaluator.layers.items()}, "attention_sites": None}
            plan = run_gate(evaluator, req.gate, fingerprint)
            plan.meta["source"] = "calibrated on the first call's inputs"
            result.plan, result.calibrated = plan, True
            if req.attention_options is not None:
                result.reference = evaluator.reference
            result.notes.append(f"sparsity: calibrated {len(evaluator.layers)} layer(s) on the first call, model "
                                f"error {plan.model_error:.3g} ({plan.metric}, budget {plan.budget:g})")
            if req.save_plan and req.attention_options is None:  # else saved after the attention gate
                plan.save(req.save_plan)
                result.notes.append(f"sparsity: plan saved to {req.save_plan}")
        gm, result.rewrites = apply_plan_to_graph(gm, example_inputs, result.plan)
        result.handles.extend(gm.__dict__.pop("_tw_sparse_handles", []))
    except (PlanError, ValueError, TypeError):
        raise
    except Exception as exc:  # noqa: BLE001  (an optimisation must never break the program)
        log.warning("sparsity rewrite skipped (%s: %s); the graph stays exact", type(exc).__name__, exc)
        result.notes.append(f"sparsity: skipped ({type(exc).__name__}: {exc}); the graph stays exact")
    return gm, result
