"""The cost model interface: score candidate configs for a kernel problem (lower is faster)."""
from __future__ import annotations

import abc
from typing import Mapping, Sequence

from ..schedule.problem import KernelProblem
from ..schedule.space import ConfigValue


class CostModel(abc.ABC):
    """Predicts relative run time of configs for one kernel problem on one device.

    ``predict`` returns one score per config, lower meaning faster; only the order of the
    scores within one call is meaningful (a roofline model may return seconds).
    """

    @abc.abstractmethod
    def predict(self, problem: KernelProblem, configs: Sequence[Mapping[str, ConfigValue]],
                device: Mapping[str, object] | None = None) -> list[float]:
        """Score each config for ``problem`` on ``device`` (a device-info dict); lower is better."""

    def rank(self, problem: KernelProblem, configs: Sequence[Mapping[str, ConfigValue]],
             device: Mapping[str, object] | None = None) -> list[int]:
        """Indices of ``configs`` ordered from predicted fastest to slowest."""
        scores = self.predict(problem, configs, device)
        return sorted(range(len(configs)), key=lambda i: scores[i])
