"""The execution plan of one compiled graph: ordered steps and reusable buffer slots.

Planning happens once per specialisation: every step gets the values it reads and writes,
buffers written by kernels are assigned to reusable slots (a value's slot returns to the pool
after its last use, including uses through views), and :class:`FreeStep` entries drop
references to dead values as soon as possible so the allocator can reuse memory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..ir.graph import Graph, Node, Value
from ..ir.registry import lookup
from ..schedule.kernel import Kernel


class TemplateRunner(Protocol):
    """How a target runs a template node: its kernels, or a reference with the same results."""

    #: "forward" / "backward" for fused attention, else None
    attention: str | None

    def run_kernel(self, args: Any, kwargs: dict[str, Any]) -> Any:
        """Launch the template's kernels (raises when they fail)."""
        ...

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        """Compute the same results with torch ops."""
        ...

    def on_kernel_failure(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Note a kernel failure that must change how later calls run."""
        ...


@dataclass
class KernelStep:
    """Launch a generated kernel (or its reference when it is broken)."""

    kernel: Kernel
    inputs: list[Value]
    outputs: list[Value]
    slots: list[int]
    #: outputs written in place into a graph input (output value id -> the input)
    inplace: dict[int, Value] = field(default_factory=dict)
    #: the kernel's explain entry (status kept current)
    entry: dict[str, Any] | None = None


@dataclass
class ExternStep:
    """Run one node by its torch op (extern ATen call or a hand-written template op)."""

    node: Node
    #: the template's tunable kernel (fused attention), when it has one
    kernel: Any = None
    #: how to run a template node's kernels and its reference (None: a plain extern call)
    call: TemplateRunner | None = None
    #: the template's explain entry (status kept current)
    entry: dict[str, Any] | None = None
    #: set when the template's kernels failed: the reference runs from then on
    broken: str | None = None


@dataclass
class FreeStep:
    """Drop references to dead values."""

    value_ids: list[int]


@dataclass
class Plan:
    """Ordered steps plus the slot sizes of reusable buffers."""

    steps: list[Any] = field(default_factory=list)
    slot_bytes: dict[int, int] = field(default_factory=dict)


def root_value(v: Value) -> Value:
    node = v.producer
    while node is not None and lookup(node.target).kind == "view":
        v = node.args[0]
        node = v.producer
    return v


def make_plan(graph: Graph, steps: list[Any]) -> Plan:
    """Add buffer slots and frees to ``steps`` (KernelStep/ExternStep in execution order)."""
    out_roots = {root_value(v).id for v in graph.output_values()}
    # last step index at which each root buffer is used (directly or through a view)
    last_use: dict[int, int] = {}
    for i, step in enumerate(steps):
        used = step.inputs if isinstance(step, KernelStep) else step.node.inputs
        for v in used:
            last_use[root_value(v).id] = i
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
                need = v.type.span_bytes
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
