"""The compile pipeline for one graph specialisation: FX -> IR -> passes -> fusion -> kernels.

::

    graph  = import_fx(gm, inputs)            # typed IR, concrete shapes
    graph  = PassManager(...).run(graph)      # dce, cse, constant folding, canonicalize
    groups = fuse(graph, can_build)           # kernel groups, cycle-free, traffic-saving
    kernels = build + choose schedule         # Triton source per group, config from tuning db
    return CompiledGraph(graph, plan)         # ordered steps with buffer reuse
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch.fx as fx

from .targets.triton.emit.emitter import CodegenError
from .targets.triton.pointwise_reduction import FusedKernelBuilder
from .targets.triton.kernel import GeneratedKernel
from .targets.triton.matmul import MatmulKernelBuilder
from .runtime.graph import CompiledGraph, ExternStep, KernelStep, make_plan
from .config import config
from .errors import StrictModeError
from .ir.graph import Graph, Node
from .ir.registry import lookup
from .passes.canonicalize import canonicalize
from .passes.cleanup import common_subexpression_elimination, constant_folding, dead_code_elimination
from .passes.fusion import FusionResult, Group, fuse
from .passes.manager import PassManager
from .passes.split_reductions import split_reductions
from .report import GraphReport
from .frontend.fx_import import import_fx

log = logging.getLogger(__name__)


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


def build_source(group: Group, materialize: set[int], name: str) -> Any:
    """Generate the kernel source of ``group`` (raises CodegenError when not expressible)."""
    if group.kind == "conv":
        from .targets.triton.conv.group import ConvGroupKernel

        assert group.anchor is not None
        return ConvGroupKernel(name, group.anchor, group.nodes, materialize)
    if group.kind == "matmul":
        assert group.anchor is not None
        return MatmulKernelBuilder(name, group.anchor, group.nodes, materialize).build()
    return FusedKernelBuilder(name, group.nodes, materialize).build()


def _can_build(group: Group, materialize: set[int]) -> str | None:
    try:
        build_source(group, materialize, "probe")
    except CodegenError as exc:
        return str(exc)
    except (NotImplementedError, ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _kernel_name(group: Group, index: int) -> str:
    ops = [n.op.split(".")[1] for n in group.nodes]
    tag = {"matmul": "mm", "reduction": "red", "pointwise": "pw", "conv": "conv"}.get(group.kind, group.kind)
    interesting = [o for o in dict.fromkeys(ops) if o not in ("view", "_unsafe_view", "clone")]
    return f"tw_{tag}{index}_" + "_".join(interesting[:3])[:40]


def choose_schedule(kernel: Any, tune: bool | None = None) -> None:
    """Pick the kernel's config: tuning database, cost model, or the heuristic default."""
    try:
        from .autotune.tuner import choose_config
    except ImportError:
        return
    try:
        config, source = choose_config(kernel, tune=tune)
    except Exception as exc:  # the tuner must never break a compile
        log.warning("schedule selection failed for %s (%s); using the default config", kernel.name, exc)
        return
    if kernel.space.is_feasible(config):
        kernel.config, kernel.config_source = dict(config), source


def _template_schedule(step: ExternStep, tune: bool | None) -> tuple[dict[str, Any], str]:
    """Attach the template's tunable kernel to ``step`` and install a stored or tuned config.

    Templates keep their own heuristic defaults on a database miss (the cost model is not
    trusted over them); a database hit or compile-time tuning overrides the default.
    """
    from .targets.triton.attention.tuning import install_config, template_kernel

    kernel = template_kernel(step.node)
    step.kernel = kernel
    if kernel is None:
        return {}, "template"
    try:
        from .autotune.tuner import choose_config

        config, source = choose_config(kernel, tune=tune, cost_model=None)
    except Exception as exc:  # the tuner must never break a compile
        log.warning("schedule selection failed for %s (%s); using its defaults", step.node.op, exc)
        return kernel.space.default_config(), "default"
    if source in ("database", "tuned"):
        install_config(step.node, kernel, config)
        return dict(config), source
    return kernel.space.default_config(), "default"


def compile_graph_for_inputs(gm: fx.GraphModule, inputs: Sequence[Any], report: GraphReport,
                             tune: bool | None = None, eager: Any = None) -> CompiledGraph:
    """Compile ``gm`` specialised to ``inputs`` into a :class:`CompiledGraph`.

    ``eager`` (a callable over the input list) runs the whole graph if a step fails at run time.
    """
    t0 = time.perf_counter()
    graph = import_fx(gm, inputs)
    t1 = time.perf_counter()
    default_passes().run(graph)
    fusion = fuse(graph, _can_build)
    t2 = time.perf_counter()
    steps = _build_steps(graph, fusion, report, tune)
    plan = make_plan(graph, steps)
    t3 = time.perf_counter()
    report.timings["import"] = report.timings.get("import", 0.0) + t1 - t0
    report.timings["passes"] = report.timings.get("passes", 0.0) + t2 - t1
    report.timings["codegen"] = report.timings.get("codegen", 0.0) + t3 - t2
    return CompiledGraph(graph, plan, report, eager)


def _build_steps(graph: Graph, fusion: FusionResult, report: GraphReport, tune: bool | None = None) -> list[Any]:
    steps: list[Any] = []
    compute_ops = 0
    for index, group in enumerate(fusion.groups):
        n_ops = len(group.nodes)
        if all(o.type.numel == 0 for n in group.nodes for o in n.outputs) and group.kind == "extern":
            steps.extend(ExternStep(n) for n in group.nodes)  # empty tensors: nothing to compute
            continue
        compute_ops += n_ops
        if group.kind in ("pointwise", "reduction", "matmul", "conv"):
            steps.extend(_kernel_steps(group, index, fusion, report, tune))
        elif group.kind == "scatter":
            steps.append(_scatter_step(group, index, report, tune))
        elif group.kind == "template":
            steps.append(_template_step(group.nodes[0], report, tune))
        else:
            node = group.nodes[0]
            steps.append(ExternStep(node))
            reason = group.reason or ("no Triton lowering for this op; runs as an ATen call"
                                      if lookup(node.target).kind == "extern" else "not lowered")
            report.add_fallback(node.op, reason)
    report.compute_ops += compute_ops
    return steps


def _kernel_steps(group: Group, index: int, fusion: FusionResult, report: GraphReport,
                  tune: bool | None) -> list[Any]:
    """A generated kernel's step, or one extern step per node when its source cannot be built."""
    name = _kernel_name(group, index)
    try:
        spec = build_source(group, fusion.materialize, name)
    except Exception as exc:  # should not happen after fusion's probe; fall back per node
        if config.strict:
            raise StrictModeError(f"kernel {name} could not be generated (strict mode is on): {exc}; fused ops: "
                                  f"{', '.join(n.op for n in group.nodes)}") from exc
        log.warning("kernel %s could not be generated (%s); its ops run as ATen calls", name, exc)
        report.add_fallback(f"kernel {name}", f"codegen failed: {exc}")
        return [ExternStep(n) for n in group.nodes]
    kernel = spec if group.kind == "conv" else GeneratedKernel(spec, group.nodes)
    choose_schedule(kernel, tune)
    inplace = {n.outputs[0].id: n.args[0] for n in group.nodes if lookup(n.target).extra.get("inplace")}
    entry = report.add_kernel(kernel.describe(), len(group.nodes))
    return [KernelStep(kernel, kernel.spec_inputs if group.kind == "conv" else spec.inputs, spec.outputs, [],
                       inplace, entry)]


def _scatter_step(group: Group, index: int, report: GraphReport, tune: bool | None) -> Any:
    from .targets.triton.scatter import ScatterKernel

    node = group.nodes[0]
    try:
        scatter = ScatterKernel(_kernel_name(group, index), node)
    except CodegenError as exc:
        report.add_fallback(node.op, str(exc))
        return ExternStep(node)
    choose_schedule(scatter, tune)
    entry = report.add_kernel(scatter.describe(), len(group.nodes))
    return KernelStep(scatter, scatter.inputs, scatter.outputs, [], {}, entry)


def _template_step(node: Node, report: GraphReport, tune: bool | None) -> ExternStep:
    """A template node's step: its kernels with their reference, or an extern call when unsupported."""
    from .targets.triton.templates import template_call, unsupported_reason

    step = ExternStep(node, call=template_call(node))
    reason = unsupported_reason(node) if step.call is not None else None
    if reason is not None:
        step.call = None  # the ATen op itself runs: an extern call, not a kernel
        report.add_fallback(node.op, f"template kernels do not handle this problem: {reason}")
        return step
    schedule, source = _template_schedule(step, tune)
    entry = {"name": node.op, "kind": "template", "ops": [node.op], "schedule": schedule,
             "schedule_source": source}
    if step.call is not None and step.call.attention is not None:
        entry["attention"] = step.call.attention
    step.entry = report.add_kernel(entry, 1)
    return step
