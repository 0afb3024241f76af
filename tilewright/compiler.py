"""The compile pipeline for one graph specialisation: FX -> IR -> passes -> fusion -> kernels.

::

    graph  = import_fx(gm, inputs)                  # typed IR, concrete shapes
    graph  = default_passes().run(graph)            # dce, cse, constant folding, canonicalize, split
    target = target_for(device)                     # the code generator (targets/base.py)
    groups = fuse(graph, target.can_build, target.kind_of)  # kernel groups, cycle-free
    steps  = one kernel / template / extern step per group, schedules from the tuner
    return CompiledGraph(graph, make_plan(graph, steps))    # ordered steps with buffer reuse

With ``static_inputs`` (the positions of parameters and buffers, inference graphs only), the
part of the graph that reads nothing else is split off first (``passes/hoist.py``), compiled
the same way, and run once and again only when a parameter changes (``runtime/hoisted.py``).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
import torch.fx as fx

from .autotune.compile_pool import compile_session, precompile_graph
from .config import config
from .errors import BuildError, StrictModeError
from .frontend.fx_import import import_fx
from .ir.graph import Graph, Node
from .ir.registry import lookup
from .passes.canonicalize import canonicalize
from .passes.cleanup import common_subexpression_elimination, constant_folding, dead_code_elimination
from .passes.fusion import FUSABLE, FusionResult, fuse
from .passes.hoist import HoistSplit, split_static
from .passes.hoist import settings as hoist_settings
from .passes.manager import PassManager
from .passes.split_reductions import split_reductions
from .report import GraphReport
from .runtime.graph import CompiledGraph
from .runtime.hoisted import HoistedGraph, reference_runner
from .runtime.plan import ExternStep, KernelStep, make_plan
from .schedule.group import Group
from .schedule.kernel import Kernel
from .targets import Target, target_for

log = logging.getLogger(__name__)

#: group kinds lowered to generated kernels (the target's builders)
_KERNEL_KINDS = ("pointwise", "reduction", "matmul", "conv", "scatter")


def default_passes() -> PassManager:
    """The standard pass pipeline run before fusion."""
    return PassManager([
        ("dce", dead_code_elimination),        # drop unused pure nodes
        ("cse", common_subexpression_elimination),  # merge identical pure nodes
        ("constant_folding", constant_folding),  # evaluate small all-constant subgraphs
        ("canonicalize", canonicalize),        # addmm -> mm + add, identity views bypassed
        ("split_reductions", split_reductions),  # few long rows -> many short rows + a small reduce
        ("dce_final", dead_code_elimination),
    ])


def _kernel_name(group: Group, index: int, prefix: str = "tw_") -> str:
    ops = [n.op.split(".")[1] for n in group.nodes]
    tag = {"matmul": "mm", "reduction": "red", "pointwise": "pw", "conv": "conv"}.get(group.kind, group.kind)
    interesting = [o for o in dict.fromkeys(ops) if o not in ("view", "_unsafe_view", "clone")]
    return f"{prefix}{tag}{index}_" + "_".join(interesting[:3])[:40]


def choose_schedule(kernel: Kernel, tune: bool | None = None, cost_model: Any = "auto") -> None:
    """Pick the kernel's config: tuning database, cost model, or the heuristic default."""
    from .autotune.tuner import choose_config

    try:
        config, source = choose_config(kernel, tune=tune, cost_model=cost_model)
    except Exception as exc:  # the tuner must never break a compile
        log.warning("schedule selection failed for %s (%s); using the default config", kernel.name, exc)
        return
    if kernel.space.is_feasible(config):
        kernel.config, kernel.config_source = dict(config), source


def _template_schedule(kernel: Any, node: Node, tune: bool | None) -> tuple[dict[str, Any], str]:
    """A template's stored or tuned config, else its own defaults.

    Templates keep their heuristic defaults on a database miss (the cost model is not trusted
    over them); a database hit or compile-time tuning overrides the default.
    """
    if kernel is None:
        return {}, "template"
    from .autotune.tuner import choose_config

    try:
        config, source = choose_config(kernel, tune=tune, cost_model=None)
    except Exception as exc:  # the tuner must never break a compile
        log.warning("schedule selection failed for %s (%s); using its defaults", node.op, exc)
        return kernel.space.default_config(), "default"
    if source in ("database", "tuned"):
        return dict(config), source
    return kernel.space.default_config(), "default"


def compile_graph_for_inputs(gm: fx.GraphModule, inputs: Sequence[Any], report: GraphReport,
                             tune: bool | None = None, eager: Any = None,
                             extra_passes: Sequence[tuple[str, Any]] | None = None,
                             static_inputs: Sequence[int] | None = None) -> CompiledGraph | HoistedGraph:
    """Compile ``gm`` specialised to ``inputs`` into a :class:`CompiledGraph`.

    ``eager`` (a callable over the input list) runs the whole graph if a step fails at run time.
    ``extra_passes`` (``(name, fn)`` pairs, e.g. the opt-in sparse attention rewrite) run after the
    default passes, before fusion. ``static_inputs``: positions of ``inputs`` that are parameters
    or buffers of an inference graph; the part computed from them alone is hoisted (a
    :class:`HoistedGraph` is returned) unless ``TILEWRIGHT_HOIST=0``.
    """
    t0 = time.perf_counter()
    graph = import_fx(gm, inputs)
    t1 = time.perf_counter()
    default_passes().run(graph)
    if extra_passes:
        PassManager(list(extra_passes)).run(graph)
    split = split_static(graph, static_inputs, len(inputs)) \
        if static_inputs is not None and hoist_settings.enabled else None
    target = target_for(_device_of(inputs))
    try:
        report.target = target.summary(_device_of(inputs))
    except Exception as exc:  # informative only: a missing compiler fails the build below, with its message
        report.target = f"{target.label} ({type(exc).__name__}: {exc})"
    fusion = fuse(graph, target.can_build, target.kind_of)
    hoist_fusion = fuse(split.graph, target.can_build, target.kind_of) if split is not None else None
    t2 = time.perf_counter()
    with compile_session(config.compile_workers, config.compile_timeout_s):  # one pool for the whole graph
        steps = _build_steps(graph, fusion, target, report, tune)
        hoist_steps = _build_steps(split.graph, hoist_fusion, target, report, tune, "twh_") \
            if split is not None and hoist_fusion is not None else []
        kernels = [s.kernel for s in steps + hoist_steps if isinstance(s, KernelStep)]
        target.prepare(kernels)
        if target.compiles_in_workers(kernels):  # generated kernels and template (attention) steps
            templates = [s for s in steps + hoist_steps if isinstance(s, ExternStep) and s.call is not None]
            precompile_graph(kernels, templates=templates, report=report)
        _race(steps, target)  # the hoisted part runs once per parameter change: its defaults do
    plan = make_plan(graph, steps)
    t3 = time.perf_counter()
    report.timings["import"] = report.timings.get("import", 0.0) + t1 - t0
    report.timings["passes"] = report.timings.get("passes", 0.0) + t2 - t1
    report.timings["codegen"] = report.timings.get("codegen", 0.0) + t3 - t2
    if split is None:
        return CompiledGraph(graph, plan, report, eager)
    return _hoisted_graph(graph, plan, split, hoist_steps, report, eager, len(inputs))


def _hoisted_graph(graph: Graph, plan: Any, split: HoistSplit, hoist_steps: list[Any], report: GraphReport,
                   eager: Any, n_args: int) -> HoistedGraph:
    """The main graph and its hoisted part as one callable; the report says what was hoisted."""
    main_eager = (lambda xs: eager(xs[:n_args])) if eager is not None else None  # the cached values dropped
    main = CompiledGraph(graph, plan, report, main_eager)
    hoisted = CompiledGraph(split.graph, make_plan(split.graph, hoist_steps), report,
                            reference_runner(split.graph))
    entries = [s.entry for s in hoist_steps if s.entry is not None]
    for entry in entries:
        entry["hoisted"] = True
    report.hoisted = {"kernels": len(entries), "steps": len(hoist_steps),
                      "compute_ops": split.compute_ops, "cached_bytes": split.cached_bytes,
                      "cached_values": len(split.cached), "parameters": len(split.positions), "recomputed": 0}
    return HoistedGraph(main, hoisted, split.positions, report.hoisted)


#: problem key -> the config that measured fastest among a target's race candidates (this process)
_RACED: dict[str, dict[str, Any]] = {}


def _race(steps: list[Any], target: Target) -> None:
    """Time each kernel's race candidates (once per problem and process) and keep the fastest."""
    from .autotune import race_records
    from .autotune.measure import CpuMeasurer
    from .autotune.tuner import default_measurer

    for step in steps:
        if not isinstance(step, KernelStep) or step.kernel.broken is not None:
            continue
        kernel = step.kernel
        candidates = target.race_candidates(kernel)
        if len(candidates) < 2:
            continue
        key = kernel.problem.key()
        if key not in _RACED:
            measurer = default_measurer(None, kernel)
            if isinstance(measurer, CpuMeasurer):  # a quick race, not a tuning run
                measurer = CpuMeasurer(repeats=5, warmup=1, sample_s=2e-3, retries=1)
            device = measurer.device_info()
            stored = race_records.load_winner(key, kernel.space.version, device, candidates)
            if stored is not None:  # another process (or an earlier run) timed this race already
                _RACED[key] = stored
            else:
                try:
                    results = [r for r in measurer.measure(kernel, candidates) if r.ok]
                except Exception as exc:  # measuring must never break a compile
                    log.warning("could not time the candidates of %s (%s); keeping its default", kernel.name, exc)
                    results = []
                _RACED[key] = dict(min(results, key=lambda r: r.time_s).config) if results else dict(kernel.config)
                if results:
                    race_records.store_winner(key, kernel.space.version, device, _RACED[key],
                                              {r.config_hash: r.time_s for r in results})
        kernel.config, kernel.config_source = dict(_RACED[key]), "measured"
        if step.entry is not None:
            step.entry.update(schedule=dict(kernel.config), schedule_source="measured")


def _device_of(inputs: Sequence[Any]) -> Any:
    """The device of the graph's tensors (CUDA when any is on CUDA)."""
    devices = [a.device for a in inputs if isinstance(a, torch.Tensor)]
    return next((d for d in devices if d.type == "cuda"), devices[0] if devices else None)


def _build_steps(graph: Graph, fusion: FusionResult, target: Target, report: GraphReport,
                 tune: bool | None = None, prefix: str = "tw_") -> list[Any]:
    steps: list[Any] = []
    compute_ops = 0
    for index, group in enumerate(fusion.groups):
        if all(o.type.numel == 0 for n in group.nodes for o in n.outputs) and group.kind == "extern":
            steps.extend(ExternStep(n) for n in group.nodes)  # empty tensors: nothing to compute
            continue
        compute_ops += len(group.nodes)
        if group.kind in _KERNEL_KINDS or group.kind in target.builders:  # a target's own kinds too
            steps.extend(_kernel_steps(group, index, fusion, target, report, tune, prefix))
        elif group.kind == "template":
            steps.append(_template_step(group.nodes[0], target, report, tune))
        else:
            node = group.nodes[0]
            steps.append(ExternStep(node))
            reason = group.reason or (f"no {target.label} lowering for this op; runs as an ATen call"
                                      if lookup(node.target).kind == "extern" else "not lowered")
            report.add_fallback(node.op, reason)
    report.compute_ops += compute_ops
    return steps


def _kernel_steps(group: Group, index: int, fusion: FusionResult, target: Target, report: GraphReport,
                  tune: bool | None, prefix: str = "tw_") -> list[Any]:
    """A generated kernel's step, or one extern step per node when its kernel cannot be built."""
    name = _kernel_name(group, index, prefix)
    try:
        kernel = target.build(group, fusion.materialize, name)
    except Exception as exc:
        if group.kind not in FUSABLE and isinstance(exc, BuildError):
            # never probed by fusion (scatters, a target's own kinds): a group it cannot express is an extern call
            report.add_fallback(group.nodes[0].op, str(exc))
            return [ExternStep(group.nodes[0])]
        # should not happen after fusion's probe; fall back per node
        if config.strict:
            raise StrictModeError(f"kernel {name} could not be generated (strict mode is on): {exc}; fused ops: "
                                  f"{', '.join(n.op for n in group.nodes)}") from exc
        log.warning("kernel %s could not be generated (%s); its ops run as ATen calls", name, exc)
        report.add_fallback(f"kernel {name}", f"codegen failed: {exc}")
        return [ExternStep(n) for n in group.nodes]
    # NOTE: the cost model knows GPUs only; other targets keep their defaults until they are measured
    choose_schedule(kernel, tune, "auto" if target.name == "triton" else None)
    inplace = {n.outputs[0].id: n.args[0] for n in group.nodes if lookup(n.target).extra.get("inplace")}
    entry = report.add_kernel(kernel.describe(), len(group.nodes))
    report.tunable_kernels.append(kernel)
    return [KernelStep(kernel, kernel.inputs, kernel.outputs, [], inplace, entry)]


def _template_step(node: Node, target: Target, report: GraphReport, tune: bool | None) -> ExternStep:
    """A template node's step: its kernels with their reference, or an extern call when unsupported."""
    lowering = target.template(node)
    if lowering is None:
        report.add_fallback(node.op, f"target {target.name} has no kernels for this template")
        return ExternStep(node)
    if lowering.unsupported is not None:  # the ATen op itself runs: an extern call, not a kernel
        report.add_fallback(node.op, f"template kernels do not handle this problem: {lowering.unsupported}")
        return ExternStep(node)
    schedule, source = _template_schedule(lowering.kernel, node, tune)
    call = lowering.call.with_config(schedule if source in ("database", "tuned") else None)
    step = ExternStep(node, kernel=lowering.kernel, call=call)
    entry = {"name": node.op, "kind": "template", "ops": [node.op], "schedule": schedule,
             "schedule_source": source}
    if call.attention is not None:
        entry["attention"] = call.attention
    step.entry = report.add_kernel(entry, 1)
    if lowering.kernel is not None:
        report.tunable_kernels.append(lowering.kernel)
    return step
