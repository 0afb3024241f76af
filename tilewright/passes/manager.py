"""The pass manager: named passes run in order, the verifier after each, timings recorded."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from ..ir.graph import Graph
from ..ir.verify import verify

log = logging.getLogger(__name__)

Pass = Callable[[Graph], int]


@dataclass
class PassManager:
    """Runs ``passes`` (name, fn returning the number of changes) with verification."""

    passes: list[tuple[str, Pass]]
    verify_each: bool = True
    stats: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def run(self, graph: Graph) -> Graph:
        """Apply every pass to ``graph`` in place and return it."""
        for name, fn in self.passes:
            start = time.perf_counter()
            changed = fn(graph)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.stats[name] = self.stats.get(name, 0) + int(changed or 0)
            if self.verify_each:
                verify(graph, after=name)
            log.debug("pass %s: %s changes", name, changed)
        return graph
