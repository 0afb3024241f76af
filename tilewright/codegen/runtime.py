"""The compiled callable: runs kernels, extern ATen calls and view aliases in order.

Planning happens once per specialisation: every step gets the values it reads and writes,
buffers written by kernels are assigned to reusable slots (a value's slot returns to the pool
after its last use, including uses through views), and references to dead values are dropped
as soon as possible so the allocator can reuse memory. Kernel failures fall back to the
group's reference implementation, logged once; ``verify`` compares each kernel with its
reference on its first run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..config import config
from ..ir.graph import Graph, Node, Value, map_values
from ..ir.registry import lookup
from ..report import GraphReport
from .kernel import GeneratedKernel, evaluate_value, run_reference

log = logging.getLogger(__name__)


@dataclass
class KernelStep:
    """Launch a generated kernel (or its reference when it is broken)."""

    kernel: GeneratedKernel
    inputs: list[Value]
    outputs: list[Value]
    slots: list[int]
    #: outputs written in place into a graph input (output value id -> the input)
    inplace: dict[int, Value] = field(default_factory=dict)


@dataclass
class ExternStep:
    """Run one node by its torch op (extern ATen call or a hand-written template op)."""

    node: Node
    #: the template's tunable kernel (fused attention), when it has one
    kernel: Any = None


@dataclass
class FreeStep:
    """Drop references to dead values."""

    value_ids: list[int]


@dataclass
class Plan:
    """Ordered steps plus the slot sizes of reusable buffers."""

    steps: list[Any] = field(default_factory=list)
    slot_bytes: dict[int, int] = field(default_factory=dict)


def _root(v: Value) -> Value:
    node = v.producer
    while node is not None and lookup(node.target).kind == "view":
        v = node.args[0]
        node = v.producer
    return v


def _span_bytes(v: Value) -> int:
    t = v.type
    if t.numel == 0:
        return 0
    return (1 + sum((s - 1) * st for s, st in zip(t.shape, t.strides))) * t.dtype.itemsize


def make_plan(graph: Graph, steps: list[Any]) -> Plan:
    """Add buffer slots and frees to ``steps`` (KernelStep/ExternStep in execution order)."""
    out_roots = {_root(v).id for v in graph.output_values()}
    # last step index at which each root buffer is used (directly or through a view)
    last_use: dict[int, int] = {}
    for i, step in enumerate(steps):
        used = step.inputs if isinstance(step, KernelStep) else step.node.inputs
        for v in used:
            last_use[_root(v).id] = i
    owned: set[int] = set()
    for step in steps:
        if isinstance(step, KernelStep):
            owned |= {v.id for v in step.outputs}
    plan = Plan()
    free_slots: list[tuple[int, str, int]] = []  # (bytes, device, slot)
    slot_device: dict[int, str] = {}
    slot_of: dict[int, int] = {}
    for i, step in enumerate(steps):
        if isinstance(step, KernelStep):
            step.slots = []
            for v in step.outputs:
                if v.id in step.inplace:
                    step.slots.append(-2)  # the input's own memory
                    continue
                if v.id in out_roots:
                    step.slots.append(-1)
                    continue
                need = _span_bytes(v)
                device = str(v.type.device)
                match = next((s for s in free_slots if s[0] == need and s[1] == device), None)
                if match is not None:
                    free_slots.remove(match)
                    slot = match[2]
                else:
                    slot = len(plan.slot_bytes)
                    plan.slot_bytes[slot] = need
                    slot_device[slot] = device
                slot_of[v.id] = slot
                step.slots.append(slot)
        # values whose last use is this step die here
        dead = [rid for rid, last in last_use.items() if last == i and rid not in out_roots]
        plan.steps.append(step)
        if dead:
            plan.steps.append(FreeStep(dead))
        for rid in dead:
            if rid in slot_of and rid in owned and rid not in out_roots:
                slot = slot_of[rid]
                free_slots.append((plan.slot_bytes[slot], slot_device[slot], slot))
    return plan


class CompiledGraph:
    """Callable running one specialised graph."""

    def __init__(self, graph: Graph, plan: Plan, report: GraphReport) -> None:
        self.graph = graph
        self.plan = plan
        self.report = report
        self._views_by_root: dict[int, list[int]] = {}

    def __call__(self, inputs: Sequence[Any]) -> Any:
        env: dict[int, torch.Tensor] = {}
        for v, position in zip(self.graph.inputs, self.graph.input_positions):
            env[v.id] = inputs[position]
        for v in self.graph.constants:
            env[v.id] = v.constant  # type: ignore[assignment]
        slots: dict[int, torch.Tensor] = {}
        for step in self.plan.steps:
            if isinstance(step, KernelStep):
                self._run_kernel(step, env, slots)
            elif isinstance(step, ExternStep):
                self._run_extern(step.node, env)
            else:
                for vid in step.value_ids:
                    env.pop(vid, None)
                self._drop_views(step.value_ids, env)
        return map_values(self.graph.outputs, lambda v: evaluate_value(v, env))

    def _drop_views(self, root_ids: list[int], env: dict[int, torch.Tensor]) -> None:
        if not self._views_by_root:
            for node in self.graph.nodes:
                if lookup(node.target).kind == "view":
                    for o in node.outputs:
                        self._views_by_root.setdefault(_root(o).id, []).append(o.id)
        for rid in root_ids:
            for vid in self._views_by_root.get(rid, []):
                env.pop(vid, None)

    def _alloc(self, v: Value, slot: int, slots: dict[int, torch.Tensor]) -> torch.Tensor:
        t = v.type
        if slot < 0:
            return torch.empty_strided(t.shape, t.strides, dtype=t.dtype, device=t.device)
        storage = slots.get(slot)
        if storage is None:
            storage = torch.empty(max(self.plan.slot_bytes[slot], 1), dtype=torch.uint8, device=t.device)
            slots[slot] = storage
        return storage.view(t.dtype)[: max(1, self.plan.slot_bytes[slot] // t.dtype.itemsize)].as_strided(
            t.shape, t.strides) if t.numel else torch.empty_strided(t.shape, t.strides, dtype=t.dtype, device=t.device)

    def _run_kernel(self, step: KernelStep, env: dict[int, torch.Tensor], slots: dict[int, torch.Tensor]) -> None:
        kernel = step.kernel
        args = [evaluate_value(v, env) for v in step.inputs]
        outs = [evaluate_value(step.inplace[v.id], env) if s == -2 else self._alloc(v, s, slots)
                for v, s in zip(step.outputs, step.slots)]
        if kernel.broken is None:
            try:
                kernel.launch(args + outs)
            except Exception as exc:  # compile or launch failure: reference from now on
                kernel.broken = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                log.warning("kernel %s failed (%s); running its reference ops %s instead",
                            kernel.name, kernel.broken, sorted(set(kernel.spec.ops)))
                self.report.add_fallback(f"kernel {kernel.name}", f"kernel failed: {kernel.broken}")
        if kernel.broken is not None:
            ref = self._reference(step, env)
            for o, v in zip(outs, step.outputs):
                o.copy_(ref[v.id])
        elif config.verify and not kernel.verified:
            kernel.verified = True
            ref = self._reference(step, env)
            for o, v in zip(outs, step.outputs):
                self._check(kernel, v, o, ref[v.id])
            if kernel.broken is not None:  # mismatch: this call uses the reference results too
                for o, v in zip(outs, step.outputs):
                    o.copy_(ref[v.id])
        for o, v in zip(outs, step.outputs):
            env[v.id] = o

    def _reference(self, step: KernelStep, env: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        local = dict(env)
        run_reference(step.kernel.nodes, local)
        return {v.id: local[v.id] for v in step.outputs}

    def _check(self, kernel: GeneratedKernel, v: Value, got: torch.Tensor, want: torch.Tensor) -> None:
        scale = 1.0 if got.dtype in (torch.float32, torch.float64) else 50.0
        ok = torch.allclose(got.float(), want.float(), rtol=config.verify_rtol * scale,
                            atol=config.verify_atol * scale, equal_nan=True) if got.is_floating_point() \
            else torch.equal(got, want)
        if not ok:
            err = (got.float() - want.float()).abs().max().item() if got.is_floating_point() else float("nan")
            msg = (f"kernel {kernel.name} output %{v.name} differs from its reference "
                   f"(max abs error {err:.3g}); fused ops: {', '.join(kernel.spec.ops)}")
            log.error(msg)
            self.report.add_fallback(f"kernel {kernel.name}", f"verify mismatch: {msg}")
            kernel.broken = "verify mismatch"

    def _run_extern(self, node: Node, env: dict[int, torch.Tensor]) -> None:
        args = map_values(node.args, lambda a: evaluate_value(a, env))
        kwargs = map_values(node.kwargs, lambda a: evaluate_value(a, env))
        result = implementation(node)(*args, **kwargs)
        if not node.outputs:
            return
        outs = [r for r in result if isinstance(r, torch.Tensor)] if isinstance(result, (list, tuple)) else [result]
        for v, t in zip(node.outputs, outs):
            if isinstance(t, torch.Tensor) and tuple(t.stride()) != v.type.strides and t.numel() > 1:
                # keep the layout the plan was built for
                fixed = torch.empty_strided(v.type.shape, v.type.strides, dtype=t.dtype, device=t.device)
                fixed.copy_(t)
                t = fixed
            env[v.id] = t


def implementation(node: Node) -> Any:
    """The callable that runs ``node``: a template's own implementation, else its torch op."""
    impl = lookup(node.target).extra.get("impl")
    if impl is None:
        return node.target
    module_name, attr = impl.split(":")
    import importlib

    return getattr(importlib.import_module(module_name), attr)
