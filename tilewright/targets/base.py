"""The Target interface: what a code generator must provide for the compiler, runtime and tuner.

A target turns kernel groups (the output of :mod:`tilewright.passes.fusion`) into launchable
:class:`~tilewright.schedule.kernel.Kernel` objects for one kind of device. The compiler asks it

- :meth:`Target.kind_of` — how each IR node would be lowered (or that it stays an ATen call);
- :meth:`Target.can_build` — whether a candidate group (during fusion) can be generated;
- :meth:`Target.build` — the kernel of a group; its ``space`` is the schedule space and its
  ``launch``/``runner`` compile and launch it under a config;
- :meth:`Target.template` — how a hand-written template node (fused attention, convolution
  gradients) runs here, with its tunable kernel when it has one;

and the tuner asks :meth:`Target.device_info` for the description measurements are keyed by.
Each target lists the kernel kinds it builds in one registry (its ``builders``), so adding a
kind or a target touches one folder.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from ..errors import BuildError
from ..ir.graph import Node
from ..schedule.group import Group
from ..runtime.plan import TemplateRunner
from ..schedule.kernel import Kernel

#: what a probe build may raise for a group the builders cannot express (besides BuildError)
_PROBE_ERRORS = (NotImplementedError, ValueError, KeyError, IndexError, TypeError, AttributeError)

#: Builds a group's kernel: ``builder(group, materialize, name)`` (raises when it cannot).
KernelBuilder = Callable[[Group, set[int], str], Kernel]


@dataclass
class TemplateLowering:
    """How a template node runs on a target."""

    #: runs the template's kernels, or its reference; ``with_config`` binds a schedule
    call: Any
    #: the tunable kernel the tuning database keys the template's schedule by (None: not tunable)
    kernel: Any = None
    #: why the template's kernels cannot run this node (then it is a plain extern ATen call)
    unsupported: str | None = None


class Target(ABC):
    """A code generator for one kind of device."""

    #: short name ("triton", "cpu") and how reports name its kernels' language
    name: str = ""
    label: str = ""
    #: kernel kind -> builder, the one place a target's kinds are registered
    builders: Mapping[str, KernelBuilder] = {}

    @abstractmethod
    def runs_on(self, device: torch.device) -> bool:
        """Whether this target's kernels can run tensors on ``device`` in this process."""

    @abstractmethod
    def kind_of(self, node: Node) -> str:
        """The lowering kind of ``node``: a key of ``builders``, ``view``, ``template`` or ``extern``."""

    def build(self, group: Group, materialize: set[int], name: str) -> Kernel:
        """The kernel computing ``group`` (writing the values in ``materialize``); raises when it cannot."""
        builder = self.builders.get(group.kind)
        if builder is None:
            raise BuildError(f"target {self.name} builds no {group.kind} kernels")
        return builder(group, materialize, name)

    def can_build(self, group: Group, materialize: set[int]) -> str | None:
        """None when :meth:`build` would succeed, else the reason it would not (a probe build)."""
        try:
            self.build(group, materialize, "probe")
        except BuildError as exc:
            return str(exc)
        except _PROBE_ERRORS as exc:  # a builder tripping on a group it cannot express
            return f"{type(exc).__name__}: {exc}"
        return None

    @abstractmethod
    def template(self, node: Node) -> TemplateLowering | None:
        """How template ``node`` runs here (None: this target has no kernels for it)."""

    def prepare(self, kernels: list[Kernel]) -> None:
        """Make the graph's kernels launchable together (e.g. one shared library); raises BuildError."""

    def compiles_in_workers(self, kernels: list[Kernel]) -> bool:
        """Whether the compiler should compile ``kernels`` in parallel worker processes (with
        per-compile timeouts) before their first launch; False: they compile on first call."""
        return False

    def race_candidates(self, kernel: Kernel) -> list[dict[str, Any]]:
        """Configs of ``kernel`` worth measuring against each other at compile time when it has no
        tuned schedule (e.g. a generated GEMM against the vendor library's); [] for none. The
        compiler times them once per problem and keeps the fastest: chosen by measurement."""
        return []

    @abstractmethod
    def device_info(self, device: Any = None) -> dict[str, Any]:
        """The device description tuning records are keyed by."""

    def summary(self, device: Any = None) -> str:
        """One line for explain: the target, and the compiler/toolchain and device it builds for."""
        return f"{self.label} ({self.device_info(device).get('name', '?')})"


__all__ = ["BuildError", "KernelBuilder", "Target", "TemplateLowering", "TemplateRunner"]
