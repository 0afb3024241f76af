"""Schedule spaces: named parameters with choices, constraints and a stable config hash.

A *config* is a plain ``dict[str, int | str | bool]``; its hash is stable across processes
and Python versions (sha256 over canonical JSON). A :class:`ScheduleSpace` lists the
parameters, the choices of each, and constraints that reject infeasible configs (shared
memory, register estimate, divisibility) *before* anything is compiled.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

ConfigValue = int | str | bool
Config = dict[str, ConfigValue]
#: A constraint returns None when the config is feasible, else a short reason.
Constraint = Callable[[Mapping[str, ConfigValue]], str | None]


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1): how tile sizes are capped by a problem size."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def config_hash(config: Mapping[str, ConfigValue]) -> str:
    """Stable short hash of a config (independent of key order)."""
    canon = json.dumps(dict(sorted(config.items())), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


class InfeasibleConfig(ValueError):
    """Raised when a config violates its space (unknown key, bad choice or failed constraint)."""


@dataclass
class ScheduleSpace:
    """A named set of schedule parameters with discrete choices and feasibility constraints.

    Attributes:
        kind: kernel kind this space belongs to ("pointwise", "reduction", "matmul", ...).
        params: parameter name -> ordered list of allowed values. Names equal the kernel's
            constexpr names (``BLOCK_M``...) or launch options (``num_warps``, ``num_stages``).
        constraints: callables returning None if feasible, else a reason string.
        default: the heuristic default config (must be feasible).
        version: bumped whenever the meaning of the space changes; part of tuning-db keys.
    """

    kind: str
    params: dict[str, list[ConfigValue]]
    constraints: list[Constraint] = field(default_factory=list)
    default: Config | None = None
    version: str = "1"

    def check(self, config: Mapping[str, ConfigValue]) -> str | None:
        """Return None if ``config`` is a feasible member of this space, else the reason."""
        missing = set(self.params) - set(config)
        if missing:
            return f"missing parameters {sorted(missing)}"
        extra = set(config) - set(self.params)
        if extra:
            return f"unknown parameters {sorted(extra)}"
        for name, choices in self.params.items():
            if config[name] not in choices:
                return f"{name}={config[name]!r} is not one of {choices}"
        for constraint in self.constraints:
            reason = constraint(config)
            if reason:
                return reason
        return None

    def is_feasible(self, config: Mapping[str, ConfigValue]) -> bool:
        """True when ``check`` finds nothing wrong."""
        return self.check(config) is None

    def validate(self, config: Mapping[str, ConfigValue]) -> Config:
        """Return a copy of ``config`` or raise :class:`InfeasibleConfig` with the reason."""
        reason = self.check(config)
        if reason:
            raise InfeasibleConfig(f"{self.kind} config {dict(config)}: {reason}")
        return dict(config)

    def enumerate(self) -> Iterator[Config]:
        """Every feasible config, in a deterministic order."""
        names = list(self.params)
        constraints = self.constraints
        for values in itertools.product(*(self.params[n] for n in names)):
            config = dict(zip(names, values))
            # every name present and every value a choice by construction: only the constraints can fail
            if not any(constraint(config) for constraint in constraints):
                yield config

    def size(self) -> int:
        """Number of feasible configs."""
        return sum(1 for _ in self.enumerate())

    def default_config(self) -> Config:
        """The heuristic default, or the first feasible config when none was given."""
        if self.default is not None:
            return dict(self.default)
        for config in self.enumerate():
            return config
        raise InfeasibleConfig(f"{self.kind} schedule space has no feasible config")

    def fingerprint(self) -> str:
        """Hash of the space's parameters and version (constraints are covered by version)."""
        payload: dict[str, Any] = {"kind": self.kind, "params": self.params, "version": self.version}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
