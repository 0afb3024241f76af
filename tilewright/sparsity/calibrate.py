"""Calibration: run a model (or a Dynamo graph) on calibration inputs with some weights replaced,
and measure the error of its outputs against the exact run.

An :class:`Evaluator` knows the model's weight layers (:class:`Layer`: qualified name, kind,
weight, the RMS of each input column seen in calibration, GEMM rows per call) and runs the model
with any of their weights swapped for an approximation, without touching the model:

- :class:`ModuleEvaluator` runs an ``nn.Module`` through ``torch.func.functional_call`` on a list
  of calibration batches (a tensor, a tuple of positional args, or a dict of keyword args);
- :class:`GraphEvaluator` runs a Dynamo graph whose parameters are placeholders (how
  ``torch.compile`` hands graphs to backends) with the parameter inputs swapped.

Metrics (:func:`metric_fn`): ``rel_l2`` = ``||y~ - y|| / ||y||`` of each floating output over
every batch, the largest of them (a causal LM's logits are not diluted by its KV cache); ``kl`` = mean KL(softmax(y) || softmax(y~)) over the last dimension of each batch's
first output (logits); or a user callable ``f(reference, approximate) -> float`` taking the two
lists of per-batch outputs as the model returned them.
"""
from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

log = logging.getLogger(__name__)

__all__ = ["GraphEvaluator", "Layer", "ModuleEvaluator", "flatten_outputs", "metric_fn", "site_of_source"]

Metric = Callable[[list[Any], list[Any]], float]


@dataclass
class Layer:
    """A weight layer the gate may rewrite."""

    site: str
    kind: str  # "linear" | "conv"
    weight: Tensor
    col_scale: Tensor | None = None  # RMS per input column of the weight's matrix form
    tokens: int = 0  # GEMM rows per calibration call (batch x sequence, or pixels)
    conv: dict[str, Any] | None = None  # stride/padding/dilation/groups of a convolution


def flatten_outputs(out: Any) -> list[Tensor]:
    """Floating tensors of a model output (tensors, tuples, lists, dicts, ModelOutput), in order."""
    if isinstance(out, Tensor):
        return [out] if out.is_floating_point() else []
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten_outputs(o)]
    return []


def _rel_l2(ref: list[Any], approx: list[Any]) -> float:
    """The largest relative L2 error among the outputs (each output position over every batch).

    Per output, not pooled: a causal LM returns its logits next to its KV cache, and pooling the
    first layers' unchanged keys and values with the logits would hide the logits' error.
    """
    num: dict[int, float] = {}
    den: dict[int, float] = {}
    for r, a in zip(ref, approx):
        for i, (rt, at) in enumerate(zip(flatten_outputs(r), flatten_outputs(a))):
            num[i] = num.get(i, 0.0) + float((at.double() - rt.double()).pow(2).sum())
            den[i] = den.get(i, 0.0) + float(rt.double().pow(2).sum())
    errors = [(num[i] / den[i]) ** 0.5 if den[i] > 0 else (0.0 if num[i] == 0 else float("inf")) for i in num]
    return max(errors, default=0.0)


def _kl(ref: list[Any], approx: list[Any]) -> float:
    total, rows = 0.0, 0
    for r, a in zip(ref, approx):
        rt, at = flatten_outputs(r)[0].double(), flatten_outputs(a)[0].double()
        lp, lq = F.log_softmax(rt, -1), F.log_softmax(at, -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)
        total += float(kl.sum())
        rows += kl.numel()
    return total / max(rows, 1)


def metric_fn(metric: str | Metric) -> tuple[str, Metric]:
    """``(name, function)`` for a metric name (``rel_l2``, ``kl``) or a user callable."""
    if callable(metric):
        return getattr(metric, "__name__", "custom"), metric
    table: dict[str, Metric] = {"rel_l2": _rel_l2, "kl": _kl}
    if metric not in table:
        raise ValueError(f"unknown sparsity metric {metric!r}: use 'rel_l2', 'kl' or a callable f(reference, approx)")
    return metric, table[metric]


class Evaluator(ABC):
    """Runs calibration with some layers' weights replaced (``site -> dense approximate weight``)."""

    layers: dict[str, Layer]

    @abstractmethod
    def run(self, replacements: dict[str, Tensor]) -> list[Any]:
        """The model's outputs on every calibration batch with ``replacements`` applied."""


def _conv_ok(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros" and isinstance(
        mod.padding, tuple)


def _call(model: Any, batch: Any, params: dict[str, Tensor] | None = None) -> Any:
    args, kwargs = _split(batch)
    if params:
        return torch.func.functional_call(model, params, args, kwargs, strict=False)
    return model(*args, **kwargs)


def _split(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(batch, dict):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (batch,), {}


class _Stats:
    """Sum of squares per input column (matrix form) and rows seen, from forward pre-hooks."""

    def __init__(self, kind: str, mod: nn.Module) -> None:
        self.kind, self.mod = kind, mod
        self.sumsq: Tensor | None = None
        self.rows = 0
        self.calls = 0

    def __call__(self, mod: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach().double()
        if self.kind == "linear":
            rows = x.reshape(-1, x.shape[-1])
            sq = rows.pow(2).sum(0)
        else:  # per input channel, repeated over the kernel window (im2col column order)
            c = x.shape[1]
            rows = x.transpose(0, 1).reshape(c, -1).t()
            kh, kw = self.mod.kernel_size
            sq = rows.pow(2).sum(0).repeat_interleave(kh * kw)
            rows = rows[: rows.shape[0] // max(1, self.mod.stride[0] * self.mod.stride[1])]
        self.sumsq = sq if self.sumsq is None else self.sumsq + sq
        self.rows += rows.shape[0]
        self.calls += 1

    def scale(self) -> Tensor | None:
        if self.sumsq is None or self.rows == 0:
            return None
        return (self.sumsq / self.rows).sqrt().float()


class ModuleEvaluator(Evaluator):
    """Calibrates an ``nn.Module`` on ``batches`` (see module docstring); the model is never modified."""

    def __init__(self, model: nn.Module, batches: Sequence[Any], include: Callable[[str, nn.Module], bool] | None = None
                 ) -> None:
        if not batches:
            raise ValueError("calibration needs at least one input batch")
        self.model = model
        self.batches = list(batches)
        self.layers = {}
        stats: dict[str, _Stats] = {}
        hooks = []
        for name, mod in model.named_modules():
            kind = "linear" if isinstance(mod, nn.Linear) else "conv" if _conv_ok(mod) else None
            if kind is None or (include is not None and not include(name, mod)):
                continue
            stats[name] = _Stats(kind, mod)
            hooks.append(mod.register_forward_pre_hook(stats[name]))
            conv = None
            if kind == "conv":
                conv = {"stride": list(mod.stride), "padding": list(mod.padding), "dilation": list(mod.dilation)}
            self.layers[name] = Layer(name, kind, mod.weight.detach(), conv=conv)
        try:
            with torch.no_grad():
                self.reference = [_call(model, b) for b in self.batches]
        finally:
            for h in hooks:
                h.remove()
        for name, st in stats.items():
            if st.calls == 0:  # never called on calibration data: nothing to measure it by
                del self.layers[name]
                continue
            self.layers[name].col_scale = st.scale()
            self.layers[name].tokens = st.rows // st.calls

    def run(self, replacements: dict[str, Tensor]) -> list[Any]:
        """Outputs with ``{site: weight}`` swapped in through ``functional_call``."""
        params = {f"{site}.weight": w for site, w in replacements.items()}
        with torch.no_grad():
            return [_call(self.model, b, params) for b in self.batches]


_MODULES = re.compile(r"_modules\['([^']*)'\]")
_PARAM = re.compile(r"_parameters\['weight'\]$")


def site_of_source(source_name: str) -> str | None:
    """The module path of a Dynamo parameter source (``L['self']._modules['fc1']._parameters['weight']``
    gives ``fc1``); None when it is not a module's ``weight``."""
    if not _PARAM.search(source_name):
        return None
    return ".".join(_MODULES.findall(source_name))


_LINEAR_TARGETS = {F.linear, torch._C._nn.linear}
_CONV2D_TARGETS = {F.conv2d, torch.conv2d}


def graph_sites(gm: fx.GraphModule) -> dict[str, tuple[fx.Node, int, str]]:
    """``site -> (call node, placeholder index of its weight, kind)`` for every linear / groups-1 conv2d
    of a Dynamo graph whose weight is a parameter placeholder used by that call only."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    index = {n: i for i, n in enumerate(placeholders)}
    sites: dict[str, tuple[fx.Node, int, str]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _LINEAR_TARGETS:
            kind = "linear"
        elif node.target in _CONV2D_TARGETS and _conv_args(node) is not None:
            kind = "conv"
        else:
            continue
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        if not isinstance(weight, fx.Node) or weight not in index:
            continue
        grapharg = weight.meta.get("grapharg")
        source = getattr(getattr(grapharg, "source", None), "name", None)
        name = source() if callable(source) else source
        site = site_of_source(str(name)) if name else None
        if site is None or site in sites:
            continue
        sites[site] = (node, index[weight], kind)
    return sites


def _conv_args(node: fx.Node) -> dict[str, Any] | None:
    """stride/padding/dilation of a conv2d call with groups 1 and list padding; None otherwise."""
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}
    vals = dict(defaults)
    vals.update(dict(zip(names, node.args)))
    vals.update(node.kwargs)
    if vals["groups"] != 1 or isinstance(vals["padding"], str):

        return None

    def pair(v: Any) -> list[int] | None:
        v = [v, v] if isinstance(v, int) else list(v)
        return [int(x) for x in v] if len(v) == 2 and all(isinstance(x, int) for x in v) else None

    out = {k: pair(vals[k]) for k in ("stride", "padding", "dilation")}
    return None if any(v is None for v in out.values()) else out


class GraphEvaluator(Evaluator):
    """Calibrates a Dynamo graph on its example inputs, swapping parameter placeholders."""

    def __init__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> None:
        self.gm = gm
        self.inputs = list(example_inputs)
        self.sites = graph_sites(gm)
        self.layers = {}
        recorded: dict[fx.Node, Tensor] = {}
        targets = {node: site for site, (node, _, _) in self.sites.items()}

        class Recorder(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                if n in targets:
                    args, _ = self.fetch_args_kwargs_from_env(n)
                    recorded[n] = args[0].detach()
                return super().run_node(n)

        with torch.no_grad():
            self.reference = [Recorder(gm).run(*self.inputs)]
        for site, (node, idx, kind) in self.sites.items():
            weight = self.inputs[idx].detach()
            x = recorded.get(node)
            conv = _conv_args(node) if kind == "conv" else None
            scale, tokens = None, 0
            if x is not None and kind == "linear":
                rows = x.double().reshape(-1, x.shape[-1])
                scale, tokens = rows.pow(2).mean(0).sqrt().float(), rows.shape[0]
            elif x is not None and conv is not None:
                c = x.shape[1]
                rows = x.double().transpose(0, 1).reshape(c, -1).t()
                kh, kw = weight.shape[2], weight.shape[3]
                scale = rows.pow(2).mean(0).sqrt().repeat_interleave(kh * kw).float()
                tokens = rows.shape[0]
            self.layers[site] = Layer(site, kind, weight, scale, tokens, conv)

    def run(self, replacements: dict[str, Tensor]) -> list[Any]:
        """The graph's outputs with the weight placeholders of ``replacements`` swapped."""
        inputs = list(self.inputs)
        for site, w in replacements.items():
            inputs[self.sites[site][1]] = w
        with torch.no_grad():
            return [self.gm(*inputs)]
